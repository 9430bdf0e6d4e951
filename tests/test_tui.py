"""The terminal interface, headless, driven by Textual's test pilot."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

from textual.widgets import Static

from chat.client import ChatClient, ClientEvent
from chat.core.identity import Identity
from chat.core.rooms import RoomKeys
from chat.trust import TrustStore
from chat.ui.tui import SaltchatApp, TuiBridge
from tests.client_helpers import MemoryHub, stop_client_task

ROOM = RoomKeys.from_name("tui-room")


def _no_wait() -> Iterator[float]:
    return itertools.repeat(0.0)


def _client(hub: MemoryHub, nick: str, address: bytes, emit: object) -> ChatClient:
    return ChatClient(
        identity=Identity.generate(),
        room=ROOM,
        nick=nick,
        trust=TrustStore(None),
        connect=hub.connector(address),
        emit=emit,  # type: ignore[arg-type]
        backoff=_no_wait,
    )


def _text(app: SaltchatApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


async def test_tui_chats_and_shows_peers_and_security_panel() -> None:
    hub = MemoryHub()
    bridge = TuiBridge()
    alice = _client(hub, "alice", b"A" * 32, bridge)
    bob_events: list[ClientEvent] = []
    bob = _client(hub, "bob", b"B" * 32, bob_events.append)
    bob_task = asyncio.create_task(bob.run())
    app = SaltchatApp(alice)
    bridge.attach(app)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await hub.settle()
            await pilot.pause()
            assert "bob" in _text(app, "#peer-list")
            assert "unverified" in _text(app, "#peer-list")
            assert "connected" in _text(app, "#status")

            await pilot.press(*"hello", "enter")
            await hub.settle()
            await pilot.pause()
            assert any(
                e.event == "message" and e.fields["text"] == "hello" for e in bob_events
            )
            assert any("you" in line and "hello" in line for line in app.lines)

            await pilot.press(*"/keys", "enter")
            await pilot.pause()
            panel = _text(app, "#keys")
            assert "epoch 0" in panel
            assert alice.keys()["fingerprint"] in panel
            assert "safety number" in panel

            await pilot.press("ctrl+c")
            await pilot.pause()
        assert app.return_value == 0
    finally:
        await bob.close()
        await stop_client_task(bob_task)
