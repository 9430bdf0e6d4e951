"""`--plain`: messages on stdout as `NICK: text`, notices on stderr.

Meant for a terminal without the full-screen interface, for pipes, and for
people who grep their chat. stdin lines are messages, or commands when they
start with `/`. Text from the network is made safe to show first
(chat.ui.display): a message's further lines are continuation lines, so no
line a peer sends can pass for a line from someone else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from chat.client import ClientEvent
from chat.core.teaching import TeachingEvent
from chat.demo.narration import describe_teaching
from chat.ui.display import CONTINUATION, clean_fields, clean_line, text_lines

__all__ = ["PlainRenderer", "describe", "handshake_lines", "message_lines"]


def _peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "nobody else has been in the room yet"
    rows = []
    for peer in peers:
        where = "here" if peer["present"] else "away"
        secure = "secure" if peer["secure"] else "not secure yet"
        rows.append(f"  {peer['peer']}: {where}, {secure}, {peer['trust']}")
    return "\n".join(rows)


def _keys(panel: dict[str, Any]) -> str:
    rows = [
        f"your fingerprint: {panel['fingerprint']}",
        f"relay: {panel['connection']}",
    ]
    for session in panel["sessions"]:
        rejected = ", ".join(f"{k} {v}" for k, v in session["rejected"].items())
        rows += [
            f"  {session['peer']}: {session['state']}, {session['trust']}",
            f"    epoch {session['epoch']}, sent {session['sent_in_epoch']} and "
            f"received {session['received_in_epoch']} in this epoch, "
            f"{session['rekeys']} rekeys",
            f"    rejected frames: {rejected or 'none'}",
            f"    safety number: {session['safety_number']}",
        ]
        steps = handshake_lines(session.get("handshake", []))
        rows += ["    " + line for line in steps]
    return "\n".join(rows)


def handshake_lines(steps: list[dict[str, Any]], width: int = 72) -> list[str]:
    """The steps that established a session (from /keys), as text lines.

    The same wording as --show-handshake and the demonstration; every value
    is public or a short hash (chat.steps keeps nothing else).
    """
    if not steps:
        return []
    lines = ["how this session was established (secrets only as short hashes):"]
    for step in clean_fields(steps):
        event = TeachingEvent(step["step"], "you", step["fields"])
        lines += describe_teaching(event, width=width)
    return lines


def _undelivered(items: list[dict[str, Any]]) -> str:
    if not items:
        return "every message was delivered"
    rows = [f"{len(items)} message(s) NOT delivered (they are lost now):"]
    rows += [
        f"  {item['text'][:60]!r} for {', '.join(item['to']) or 'anyone'}"
        for item in items
    ]
    return "\n".join(rows)


def _ready(f: dict[str, Any]) -> str:
    where = f.get("listening") or f.get("relay") or f.get("connect") or ""
    return f"ready as {f['nick']} ({where}); your fingerprint: {f['fingerprint']}"


def _secure(f: dict[str, Any]) -> str:
    state = "VERIFIED" if f["verified"] else f["trust"]
    return (
        f"secure session with {f['peer']} ({state}); safety number {f['safety_number']}"
    )


def _verify(f: dict[str, Any]) -> str:
    if f["verified"]:
        return f"{f['peer']} is verified; safety number:\n  {f['safety_number']}"
    return (
        f"safety number with {f['peer']} (not verified yet):\n"
        f"  {f['safety_number']}\n"
        f"compare it with {f['peer']} out of band, then: /verify {f['peer']} yes"
    )


def _handshake(f: dict[str, Any]) -> str:
    # The demonstration's wording; 78 columns leave room for the "* " prefix.
    event = TeachingEvent(f["step"], f["side"], f["fields"])
    return "\n".join(describe_teaching(event, width=78))


_FORMATS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ready": _ready,
    "invite": lambda f: f"invite code (give it to the person you invite):\n{f['code']}",
    "peer-joined": lambda f: f"{f['peer']} joined",
    "peer-left": lambda f: f"{f['peer']} left",
    "secure": _secure,
    "sent": lambda f: f"sending [{f['id'][:8]}]",
    "delivered": lambda f: f"delivered [{f['id'][:8]}] to {f['to']}",
    "alert": lambda f: (
        f"!! SECURITY ALERT ({f['kind']}) {f.get('peer', '')}: {f['detail']}"
    ),
    "disconnected": lambda f: (
        f"disconnected ({f['reason']}); retrying in {f['retry_in']} s"
    ),
    "reconnected": lambda f: "reconnected",
    "error": lambda f: f"error: {f['detail']}",
    "help": lambda f: "\n".join(f"  {k:<22} {v}" for k, v in f["commands"].items()),
    "who": lambda f: _peers(f["peers"]),
    "keys": _keys,
    "rekey": lambda f: f"asked {f['sessions']} session(s) for a new epoch",
    "verify": _verify,
    "handshake": _handshake,
    "closed": lambda f: _undelivered(f["undelivered"]),
}


def describe(event: ClientEvent) -> str:
    """A one-or-more-line human description of any event.

    Every string in the event is made one safe line first: the only line
    breaks in the description are the ones its format puts there.
    """
    fields = clean_fields(event.fields)
    format_event = _FORMATS.get(event.event)
    if format_event is None:
        return f"{clean_line(event.event)}: {fields}"
    return format_event(fields)


def message_lines(sender: str, text: str) -> list[str]:
    """A message as `SENDER: text`, its further lines marked as continuations."""
    first, *rest = text_lines(text)
    return [f"{clean_line(sender)}: {first}"] + [CONTINUATION + line for line in rest]


class PlainRenderer:
    """Messages to stdout as `NICK: text`; everything else to stderr."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        """Write to `out` and `err` (default: stdout and stderr)."""
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def __call__(self, event: ClientEvent) -> None:
        """Print one event."""
        if event.event == "message":
            for line in message_lines(event.fields["from"], event.fields["text"]):
                self._out.write(line + "\n")
            self._out.flush()
            return
        if event.event == "sent":
            return
        for line in describe(event).splitlines():
            self._err.write(f"* {line}\n")
        self._err.flush()
