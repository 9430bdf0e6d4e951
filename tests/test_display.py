"""Text from the network is shown safely: no forged lines, no terminal control."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable

import pytest

from chat.client import ChatClient, ClientEvent
from chat.core.identity import Identity
from chat.core.rooms import RoomKeys
from chat.transport import Link
from chat.trust import TrustStore
from chat.ui.display import CONTINUATION, REPLACEMENT, clean_line, text_lines
from chat.ui.jsonmode import JsonRenderer
from chat.ui.plain import PlainRenderer, describe
from chat.ui.tui import SaltchatApp

# A peer's message forging a line from alice, clearing the screen, and
# reversing what follows.
FORGED = "ok\nalice: send the door code to mallory\x1b[2J\u202egnp.exe"

# Characters that move the cursor, change the terminal, or reorder text.
HOSTILE = [
    "\x1b",  # ESC: starts every escape sequence
    "\x9b",  # C1 CSI: an escape sequence in one character
    "\x07",  # BEL
    "\x08",  # backspace: overwrites what was shown
    "\x7f",  # DEL
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\u200e",  # left-to-right mark
    "\ufeff",  # zero width no-break space
]

# Characters that end a line somewhere: in a terminal, in rich, or in Python.
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", HOSTILE + BREAKS)
def test_control_format_and_break_characters_are_replaced(char: str) -> None:
    assert clean_line(f"a{char}b") == f"a{REPLACEMENT * len(char)}b"


def test_tab_is_one_space_and_joiners_are_kept() -> None:
    # Zero width (non-)joiners build emoji and words in Persian; they move
    # nothing.
    assert clean_line("a\tb") == "a b"
    assert clean_line("\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e") == (
        "\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e"
    )


@pytest.mark.parametrize("brk", BREAKS)
def test_text_is_split_at_every_line_break(brk: str) -> None:
    assert text_lines(f"one{brk}two") == ["one", "two"]


def test_empty_text_is_one_empty_line() -> None:
    assert text_lines("") == [""]


def test_plain_shows_further_lines_as_continuations() -> None:
    out, err = io.StringIO(), io.StringIO()
    PlainRenderer(out, err)(
        ClientEvent("message", {"from": "mallory", "text": FORGED, "id": "00"})
    )
    lines = out.getvalue().splitlines()
    assert lines == [
        "mallory: ok",
        CONTINUATION
        + f"alice: send the door code to mallory{REPLACEMENT}[2J{REPLACEMENT}gnp.exe",
    ]


def test_plain_notices_cannot_be_split_by_a_field() -> None:
    # A relay chooses its close reasons and refusals.
    out, err = io.StringIO(), io.StringIO()
    render = PlainRenderer(out, err)
    render(ClientEvent("error", {"detail": "refused\n* alice joined\x1b[1A"}))
    assert err.getvalue() == (
        f"* error: refused{REPLACEMENT}* alice joined{REPLACEMENT}[1A\n"
    )


def _events(char: str) -> list[ClientEvent]:
    return [
        ClientEvent("peer-joined", {"peer": f"bob{char}"}),
        ClientEvent("disconnected", {"reason": f"bye{char}", "retry_in": 1}),
        ClientEvent(
            "handshake",
            {"step": "rejected", "side": "me", "fields": {"reason": f"x{char}"}},
        ),
        ClientEvent("unknown-event", {"detail": f"x{char}"}),
    ]


@pytest.mark.parametrize("char", HOSTILE + BREAKS)
def test_every_description_is_safe(char: str) -> None:
    # Nicknames, reasons and handshake fields all pass through describe():
    # the text holds no such character, and only the format's own lines.
    for event, harmless in zip(_events(char), _events("_"), strict=True):
        text = describe(event)
        assert char == "\n" or char not in text
        assert len(text.splitlines()) == len(describe(harmless).splitlines())


def test_json_keeps_the_exact_text() -> None:
    out = io.StringIO()
    JsonRenderer(out)(
        ClientEvent("message", {"from": "mallory", "text": FORGED, "id": "00"})
    )
    assert out.getvalue().count("\n") == 1
    assert json.loads(out.getvalue())["text"] == FORGED


async def _no_link() -> Link:
    raise AssertionError("the app under test must not connect")


def _app() -> SaltchatApp:
    def connect() -> Awaitable[Link]:
        return _no_link()

    client = ChatClient(
        identity=Identity.generate(),
        room=RoomKeys.from_name("display"),
        nick="me",
        trust=TrustStore(None),
        connect=connect,
        emit=lambda _event: None,
    )
    return SaltchatApp(client, run_client=False)


def test_tui_shows_further_lines_as_continuations() -> None:
    app = _app()
    app.show(ClientEvent("message", {"from": "mallory", "text": FORGED, "id": "00"}))
    first, second = app.lines[-1].split("\n")
    assert first == "[b]mallory[/]: ok"
    assert second.startswith(CONTINUATION + "alice: ")
    assert not any(char in app.lines[-1] for char in HOSTILE)


def test_tui_notices_are_safe() -> None:
    app = _app()
    app.show(ClientEvent("peer-joined", {"peer": "bob\n\u202e[b]alice"}))
    assert "\n" not in app.lines[-1]
    assert "\u202e" not in app.lines[-1]
