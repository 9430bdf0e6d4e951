"""The demonstration's narration: records, and how they are shown.

The demo produces a sequence of records (plain dicts, one per JSON line in
``--json`` mode; docs/demo.md lists the types and fields). A sink shows them:
as JSON lines, as plain text, or with colour and layout through rich. Text
never exceeds :data:`WIDTH` columns: long hex is clipped, long values move to
their own line.

Secrets never reach a record: values marked ``secret`` are short hashes
(:func:`chat.core.teaching.short_hash`). Only the message step shows
plaintext, padded plaintext, nonce and ciphertext, on purpose.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from chat.core.teaching import TeachingEvent

__all__ = [
    "WIDTH",
    "JsonSink",
    "Narration",
    "Pause",
    "Record",
    "Sink",
    "TextSink",
    "clip",
    "describe",
    "describe_teaching",
]

WIDTH = 80
"""Columns the text output fits in."""

Record = dict[str, Any]
Sink = Callable[[Record], None]
Pause = Callable[[int], Awaitable[None]]
"""Awaited before a step (its number) while a presenter reads the last one."""
Line = tuple[str, str]
"""One line of text output: (style name, text)."""

_STYLES = {
    "alice": "cyan",
    "bob": "magenta",
    "relay": "yellow",
    "title": "bold",
    "rule": "dim",
    "ok": "green",
    "bad": "bold red",
    "attack": "red",
    "say": "",
}


def clip(text: str, width: int = WIDTH) -> str:
    """Cut ``text`` to ``width`` columns, marking the cut with "...".

    Plain ASCII on purpose: the output may go to a pipe or a file.
    """
    if len(text) <= width:
        return text
    return text[: width - 3] + "..."


class Narration:
    """Builds records in order and hands each to the sink at once.

    Attributes:
        records: every record made so far.
        step: the step the next record belongs to (0 before step 1).
    """

    def __init__(self, sink: Sink) -> None:
        self.records: list[Record] = []
        self.step = 0
        self._sink = sink

    def emit(self, record_type: str, /, **fields: Any) -> Record:
        """Make a record of type ``record_type`` in the current step; show it."""
        record: Record = {"type": record_type, "step": self.step, **fields}
        self.records.append(record)
        self._sink(record)
        return record

    def begin(self, step: int, title: str) -> None:
        """Start step ``step``."""
        self.step = step
        self.emit("step", title=title)

    def say(self, text: str) -> None:
        """A sentence of explanation."""
        self.emit("say", text=text)

    def value(self, side: str, name: str, value: str, *, secret: bool = False) -> None:
        """A value one side holds; ``secret`` values are short hashes."""
        self.emit("value", side=side, name=name, value=value, secret=secret)

    def check(self, name: str, alice: str | None, bob: str | None) -> bool:
        """Compare what both sides hold; record and return whether they agree."""
        ok = alice is not None and alice == bob
        self.emit("check", name=name, alice=alice, bob=bob, ok=ok)
        return ok

    def teach(self, side: str, event: TeachingEvent) -> None:
        """A raw teaching event from one side's protocol core."""
        self.emit("teach", side=side, event=event.step, fields=dict(event.fields))


class JsonSink:
    """Writes each record as one JSON line."""

    def __init__(self, stream: IO[str]) -> None:
        """Write to ``stream``, flushing after every line."""
        self._stream = stream

    def __call__(self, record: Record) -> None:
        """Write one record."""
        self._stream.write(json.dumps(record, sort_keys=True) + "\n")
        self._stream.flush()


class TextSink:
    """Shows records as text: plain, or through a rich console.

    Args:
        stream: where plain text goes.
        rich: show colour and layout with rich (for a terminal).
    """

    def __init__(self, stream: IO[str], *, rich: bool = False) -> None:
        self._stream = stream
        self._console: Console | None = None
        if rich:
            console = Console(file=stream, highlight=False)
            console.width = min(console.width, WIDTH)
            self._console = console

    def __call__(self, record: Record) -> None:
        """Show one record (``teach`` records are for JSON only)."""
        if self._console is not None and record["type"] == "step":
            # On a terminal a step opens with a rule across the width.
            title = describe(record)[1][1]
            self._console.print()
            self._console.rule(Text(title, style="bold"), align="left", style="dim")
            return
        for style, text in describe(record):
            self.write(style, text)

    def write(self, style: str, text: str) -> None:
        """Write one line in a style (a key of the style table)."""
        if self._console is None:
            self._stream.write(text + "\n")
            self._stream.flush()
            return
        self._console.print(
            Text(text, style=_STYLES.get(style, "")), no_wrap=True, overflow="ellipsis"
        )


# -- describing records as text ----------------------------------------------


def describe(record: Record) -> list[Line]:
    """The text lines for one record, each at most WIDTH columns."""
    kind = record["type"]
    describe_kind = _DESCRIBE.get(kind)
    if describe_kind is None:
        return []
    return [(style, clip(text)) for style, text in describe_kind(record)]


def _step(record: Record) -> list[Line]:
    title = (
        f"Step {record['step']}. {record['title']}"
        if record["step"]
        else (record["title"])
    )
    return [("say", ""), ("title", title), ("rule", "-" * min(len(title), WIDTH))]


def _say(record: Record) -> list[Line]:
    return [("say", line) for line in textwrap.wrap(record["text"], WIDTH - 2)]


def _value(record: Record) -> list[Line]:
    label = f"  {record['side']:<6} {record['name']}:"
    value = record["value"] + (" (short hash)" if record["secret"] else "")
    style = record["side"]
    if len(label) + 1 + len(value) <= WIDTH:
        return [
            (style, f"{label:<26} {value}" if len(label) < 26 else f"{label} {value}")
        ]
    return [(style, label), (style, "      " + value)]


def _check(record: Record) -> list[Line]:
    if record["ok"]:
        return [("ok", f"  [ok] {record['name']}: both sides hold {record['alice']}")]
    return [
        (
            "bad",
            f"  [!!] {record['name']}: alice {record['alice']}, bob {record['bob']}",
        )
    ]


def _relay(record: Record) -> list[Line]:
    # Only what the relay hands to a client is shown as text; what the
    # clients hand to the relay carries the same frames (JSON has both).
    if record["direction"] != "from-relay" or record["envelope"] != "DELIVER":
        return []
    frame = record["frame"] or "?"
    what = f"relay -> {record['person']}: DELIVER from {record['sender']}, "
    what += f"{frame.upper()} frame of {record['frame_size']} bytes"
    if record["frame"] == "record":
        what += f" (epoch {record['epoch']}, #{record['counter']})"
    lines: list[Line] = []
    if record["meddled"]:
        lines.append(("attack", f"  ** the relay meddles: {record['meddled']} **"))
    lines.append(("relay", "  " + what))
    lines.append(("relay", "    envelope " + _spaced(record["hex"])))
    lines.append(("relay", "    frame    " + _spaced(record["frame_hex"])))
    return lines


def _spaced(hex_text: str) -> str:
    # Groups of four bytes read more easily than one long run.
    return " ".join(hex_text[i : i + 8] for i in range(0, len(hex_text), 8))


def _attack(record: Record) -> list[Line]:
    head = f"  {record['receiver']}'s check: "
    if record["rejected"]:
        if record["kind"] == record["expected"]:
            style, verdict = "ok", f"{head}REJECTED ({record['kind']}), as it should be"
        else:
            style = "bad"
            verdict = f"{head}REJECTED ({record['kind']}, not {record['expected']})"
        lines = [(style, verdict)]
        lines += [
            ("say", "    " + line)
            for line in textwrap.wrap(record["reason"], WIDTH - 4)
        ]
        return lines
    return [("bad", f"{head}NOT rejected: the attack was not stopped")]


def _end(record: Record) -> list[Line]:
    if record["ok"]:
        style, text = "ok", "Every check passed. " + record["summary"]
    else:
        style, text = "bad", "The demonstration FAILED: " + record["summary"]
    return [("say", "")] + [(style, line) for line in textwrap.wrap(text, WIDTH - 2)]


def _pause(record: Record) -> list[Line]:
    return [("rule", f"(press Enter for step {record['next']})")]


_DESCRIBE: dict[str, Callable[[Record], list[Line]]] = {
    "step": _step,
    "say": _say,
    "value": _value,
    "check": _check,
    "relay": _relay,
    "attack": _attack,
    "end": _end,
    "pause": _pause,
}


# -- teaching events, for a real session (--show-handshake) -------------------

_TEACHING_TITLES = {
    "identity": "my identity (fingerprint)",
    "ephemeral": "new ephemeral key pair (public key)",
    "hello-sent": "HELLO sent",
    "hello-received": "HELLO received",
    "shared-secret": "Diffie-Hellman done",
    "keys": "keys derived (secrets as short hashes)",
    "auth": "AUTH sent: my identity, signed, sealed",
    "established": "peer confirmed the same keys",
    "seal": "record sealed",
    "open": "record opened",
    "rejected": "frame REJECTED",
    "rekey": "rekey (new epoch)",
}


def describe_teaching(event: TeachingEvent, width: int = WIDTH) -> list[str]:
    """Text lines for one core teaching event, each at most ``width`` columns.

    ``saltchat --show-handshake`` shows a real session's steps with it.
    Values are wrapped, never cut: two people compare them across screens.
    """
    title = _TEACHING_TITLES.get(event.step, event.step)
    lines = [clip(f"[{event.side}] {title}", width)]
    for name, value in event.fields.items():
        line = f"    {name}: {value}"
        if len(line) <= width:
            lines.append(line)
            continue
        lines.append(clip(f"    {name}:", width))
        lines += ["      " + part for part in textwrap.wrap(value, width - 6)]
    return lines
