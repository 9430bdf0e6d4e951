"""saltchat-relay: forwards opaque frames between the members of rooms."""
