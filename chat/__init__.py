"""saltchat client side: the sans-I/O protocol core and the chat client."""
