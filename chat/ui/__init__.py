"""User interfaces over `chat.client.ChatClient`: plain, JSON and terminal.

Each one renders the client's events (`ClientEvent`) its own way and feeds
lines of input to `chat.commands.handle_line`; none of them touches the
network or the protocol core directly.
"""
