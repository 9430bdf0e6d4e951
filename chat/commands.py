"""The commands every user interface understands: one parser, one dispatcher.

A line that starts with `/` is a command; any other line is a message.
Every command answers with `ClientEvent`s, so the plain, JSON and terminal
interfaces show the same things in their own way (docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chat.client import ChatClient, ClientEvent, CommandError
from chat.limits import MAX_COMMAND_BYTES

__all__ = ["COMMANDS", "Outcome", "handle_line"]

COMMANDS: dict[str, str] = {
    "/help": "list the commands",
    "/who": "who is in the room, and whether each is verified",
    "/verify NICK": "show the safety number to compare with NICK out of band",
    "/verify NICK yes": "mark NICK verified after comparing the safety number",
    "/verify NICK DIGITS": "compare the 60 digits NICK read out, and mark verified",
    "/trust NICK": "accept NICK's new identity key after a change alert",
    "/keys": "the security panel: epochs, rekeys, rejected frames, fingerprints",
    "/rekey": "start a new key epoch with every peer now",
    "/quit": "leave, saying what is undelivered",
}


@dataclass(frozen=True)
class Outcome:
    """What a line led to: events to show, and whether to quit."""

    events: tuple[ClientEvent, ...] = ()
    quit: bool = False


def _error(detail: str) -> Outcome:
    return Outcome((ClientEvent("error", {"detail": detail}),))


def handle_line(client: ChatClient, line: str) -> Outcome:
    """Carry out one line of input: a message or a command.

    Never raises for bad input: a clear `error` event says what went wrong.
    """
    if not line.startswith("/"):
        try:
            client.send_message(line)
        except CommandError as exc:
            return _error(str(exc))
        return Outcome()

    if len(line.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        return _error(f"command longer than {MAX_COMMAND_BYTES} bytes")
    name, *args = line.split()
    try:
        return _dispatch(client, name.lower(), args)
    except CommandError as exc:
        return _error(str(exc))


def _verify(client: ChatClient, args: list[str]) -> Outcome:
    if not args:
        raise CommandError("usage: /verify NICK [yes | 60-DIGITS]")
    confirmation = " ".join(args[1:]) or None
    return Outcome((ClientEvent("verify", client.verify(args[0], confirmation)),))


def _trust(client: ChatClient, args: list[str]) -> Outcome:
    if len(args) != 1:
        raise CommandError("usage: /trust NICK")
    client.accept_key(args[0])
    return Outcome()


def _reply(event: str, make: Callable[[ChatClient], dict[str, Any]]) -> _Handler:
    return lambda client, _args: Outcome((ClientEvent(event, make(client)),))


_Handler = Callable[[ChatClient, list[str]], Outcome]

_HANDLERS: dict[str, _Handler] = {
    "/quit": lambda _client, _args: Outcome(quit=True),
    "/help": _reply("help", lambda _client: {"commands": COMMANDS}),
    "/who": _reply("who", lambda client: {"peers": client.who()}),
    "/keys": _reply("keys", lambda client: client.keys()),
    "/rekey": _reply("rekey", lambda client: {"sessions": client.rekey()}),
    "/verify": _verify,
    "/trust": _trust,
}


def _dispatch(client: ChatClient, name: str, args: list[str]) -> Outcome:
    handler = _HANDLERS.get(name)
    if handler is None:
        raise CommandError(f"unknown command {name}; /help lists the commands")
    return handler(client, args)
