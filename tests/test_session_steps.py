"""The steps that established each session, kept per peer and shown by /keys."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

from textual.widgets import Static

from chat.client import ChatClient, ClientEvent
from chat.core.identity import Identity
from chat.core.rooms import RoomKeys
from chat.core.teaching import TeachingEvent
from chat.limits import HANDSHAKE_STEPS_KEPT, REKEY_STEPS_KEPT
from chat.steps import SessionSteps
from chat.trust import TrustStore
from chat.ui.plain import describe
from chat.ui.tui import SaltchatApp, TuiBridge
from tests.client_helpers import MemoryHub, stop_client_task

ROOM = RoomKeys.from_name("steps-room")
SECRET_TEXT = "the secret plan"

# Fields of the core's teaching events that hold short hashes of secrets.
HASHED = {"dh", "k_auth_own", "k_auth_peer", "root", "send_key", "receive_key"}


def _event(step: str, **fields: str) -> TeachingEvent:
    return TeachingEvent(step, "me", fields)


def _names(steps: SessionSteps) -> list[str]:
    return [step["step"] for step in steps.steps()]


def test_message_and_rejection_steps_are_never_kept() -> None:
    steps = SessionSteps()
    for step in ("ephemeral", "seal", "open", "rejected", "established"):
        steps.record(_event(step, plaintext="68656c6c6f"))
    assert _names(steps) == ["ephemeral", "established"]


def test_repeated_frames_after_the_handshake_do_not_push_it_out() -> None:
    steps = SessionSteps()
    for step in ("ephemeral", "hello-sent", "established"):
        steps.record(_event(step))
    for _ in range(HANDSHAKE_STEPS_KEPT * 2):
        steps.record(_event("hello-received"))
    assert _names(steps) == ["ephemeral", "hello-sent", "established"]


def test_a_new_handshake_in_the_session_replaces_the_old_one() -> None:
    # A peer that restarts sends a fresh HELLO: the session is re-established.
    steps = SessionSteps()
    for step in ("ephemeral", "established", "rekey", "hello-received"):
        steps.record(_event(step))
    steps.record(_event("established", safety_number="2"))
    assert _names(steps) == ["hello-received", "established"]


def test_steps_are_bounded() -> None:
    steps = SessionSteps()
    for _ in range(HANDSHAKE_STEPS_KEPT * 2):
        steps.record(_event("hello-sent"))
    assert len(steps.steps()) == HANDSHAKE_STEPS_KEPT
    steps.record(_event("established"))
    for _ in range(REKEY_STEPS_KEPT * 2):
        steps.record(_event("rekey"))
    assert len(steps.steps()) == HANDSHAKE_STEPS_KEPT + REKEY_STEPS_KEPT


def _no_wait() -> Iterator[float]:
    return itertools.repeat(0.0)


def _client(
    hub: MemoryHub, nick: str, address: bytes, emit: Any, **extra: Any
) -> ChatClient:
    return ChatClient(
        identity=Identity.generate(),
        room=ROOM,
        nick=nick,
        trust=TrustStore(None),
        connect=hub.connector(address),
        emit=emit,
        backoff=_no_wait,
        **extra,
    )


async def _stop(*runs: tuple[ChatClient, asyncio.Task[None]]) -> None:
    for client, task in runs:
        await client.close()
        await stop_client_task(task)


async def test_keys_holds_the_handshake_in_public_values_and_short_hashes() -> None:
    hub = MemoryHub()
    shown: list[TeachingEvent] = []
    alice = _client(hub, "alice", b"A" * 32, lambda _e: None, observer=shown.append)
    bob_events: list[ClientEvent] = []
    bob = _client(hub, "bob", b"B" * 32, bob_events.append)
    runs = [(c, asyncio.create_task(c.run())) for c in (alice, bob)]
    try:
        await hub.settle()
        alice.send_message(SECRET_TEXT)
        await hub.settle()
        assert any(e.event == "message" for e in bob_events)

        (session,) = alice.keys()["sessions"]
        names = [step["step"] for step in session["handshake"]]
        assert names[0] == "identity"
        assert {"ephemeral", "shared-secret", "auth"} <= set(names)
        assert names[-1] == "established"
        for step in session["handshake"]:
            for name in HASHED & set(step["fields"]):
                assert len(step["fields"][name]) == 8

        # The user's own observer (--show-handshake) sees the handshake but
        # no record step (they carry plaintext); the panel keeps nothing of
        # the message.
        steps = {event.step for event in shown}
        assert "established" in steps
        assert not steps & {"seal", "open"}
        assert SECRET_TEXT.encode().hex() not in json.dumps(alice.keys())
    finally:
        await _stop(*runs)


async def test_tui_security_panel_shows_the_handshake_and_no_secret() -> None:
    hub = MemoryHub()
    bridge = TuiBridge()
    alice = _client(hub, "alice", b"A" * 32, bridge)
    bob = _client(hub, "bob", b"B" * 32, lambda _e: None)
    bob_run = (bob, asyncio.create_task(bob.run()))
    app = SaltchatApp(alice)
    bridge.attach(app)
    try:
        async with app.run_test(size=(120, 60)) as pilot:
            await hub.settle()
            bob.send_message(SECRET_TEXT)
            await pilot.press(*"hello bob", "enter")
            await hub.settle()
            await pilot.pause()

            await pilot.press(*"/keys", "enter")
            await pilot.pause()
            panel = str(app.query_one("#keys", Static).render())
            (session,) = alice.keys()["sessions"]
            (ephemeral,) = {
                step["fields"]["ephemeral"]
                for step in session["handshake"]
                if step["step"] == "ephemeral"
            }
            for title in ("HELLO sent", "Diffie-Hellman done", "AUTH sent"):
                assert title in panel
            assert "peer confirmed the same keys" in panel
            assert ephemeral in panel
            for secret in (SECRET_TEXT, "hello bob"):
                assert secret not in panel
                assert secret.encode().hex() not in panel
            assert "record sealed" not in panel
            assert "nonce" not in panel

            await pilot.press("ctrl+c")
            await pilot.pause()
    finally:
        await _stop(bob_run)


def test_plain_keys_lists_the_steps() -> None:
    steps = SessionSteps()
    steps.record(_event("shared-secret", dh="0a1b2c3d", role="0"))
    session = {
        "peer": "bob",
        "state": "established",
        "trust": "unverified",
        "epoch": 0,
        "sent_in_epoch": 0,
        "received_in_epoch": 0,
        "rekeys": 0,
        "rejected": {},
        "safety_number": "1",
        "handshake": steps.steps(),
    }
    panel = {"fingerprint": "f", "connection": "connected", "sessions": [session]}
    text = describe(ClientEvent("keys", panel))
    assert "Diffie-Hellman done" in text
    assert "dh: 0a1b2c3d" in text
