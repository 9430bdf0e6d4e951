"""The client's logic over an in-memory relay: real sessions, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.utils
import pytest

from chat.client import ChatClient, ClientEvent, CommandError
from chat.commands import handle_line
from chat.core.channel import record_nonce
from chat.core.frames import unpad
from chat.core.identity import Identity, PublicIdentity
from chat.core.rooms import RoomKeys
from chat.limits import MAX_PEERS, MAX_STRANGERS
from chat.trust import TrustStore, TrustStoreError
from tests.client_helpers import MemoryHub, stop_client_task

ROOM = RoomKeys.from_name("memory-room")


def _no_wait() -> Iterator[float]:
    return itertools.repeat(0.0)


@dataclass
class Member:
    client: ChatClient
    address: bytes
    identity: Identity
    events: list[ClientEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def find(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e.fields
            for e in self.events
            if e.event == name and all(e.fields.get(k) == v for k, v in fields.items())
        ]


class Room:
    def __init__(self) -> None:
        self.hub = MemoryHub()
        self.members: list[Member] = []
        self.trust: dict[bytes, TrustStore] = {}

    def join(
        self,
        nick: str,
        address: bytes,
        identity: Identity | None = None,
        expected: str | None = None,
        inviter_at: bytes | None = None,
    ) -> Member:
        identity = identity or Identity.generate()
        events: list[ClientEvent] = []
        trust = self.trust.setdefault(address, TrustStore(None))
        client = ChatClient(
            identity=identity,
            room=ROOM,
            nick=nick,
            trust=trust,
            connect=self.hub.connector(address),
            emit=events.append,
            expected_fingerprint=expected,
            expected_address=inviter_at,
            backoff=_no_wait,
        )
        member = Member(client, address, identity, events)
        member.task = asyncio.create_task(client.run())
        self.members.append(member)
        return member

    async def leave(self, member: Member) -> None:
        await member.client.close()
        assert member.task is not None
        await member.task

    async def close(self) -> None:
        for member in self.members:
            with contextlib.suppress(Exception):
                await member.client.close()
            if member.task is not None:
                await stop_client_task(member.task)


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    running = Room()
    try:
        yield running
    finally:
        await running.close()


A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


async def _pair(room: Room) -> tuple[Member, Member]:
    alice = room.join("alice", A)
    bob = room.join("bob", B)
    await room.hub.settle()
    assert alice.find("secure", peer="bob")
    assert bob.find("secure", peer="alice")
    return alice, bob


async def test_two_members_chat_and_get_receipts(room: Room) -> None:
    alice, bob = await _pair(room)
    message_id = alice.client.send_message("hello")
    await room.hub.settle()

    assert bob.find("message", text="hello", id=message_id)
    assert alice.find("delivered", id=message_id, to="bob", complete=True)
    assert alice.client.undelivered() == []


async def test_a_resent_message_is_shown_once(room: Room) -> None:
    alice, bob = await _pair(room)

    # Bob's receipt is lost, so alice resends after her next reconnect.
    room.hub.tap = lambda sender, _to, payload: None if sender == B else payload
    message_id = alice.client.send_message("once")
    await room.hub.settle()
    room.hub.tap = None
    assert bob.find("message", text="once")
    assert not alice.find("delivered", id=message_id)

    room.hub.links[A].queue.put_nowait(None)
    await room.hub.settle()

    assert len(bob.find("message", text="once")) == 1
    assert alice.find("delivered", id=message_id)
    assert alice.find("reconnected")


def _kinds_sent(room: Room, sender: bytes, recipient: bytes) -> list[int]:
    """Record the type byte of every frame from `sender` to `recipient`."""
    kinds: list[int] = []

    def tap(source: bytes, to: bytes, payload: bytes) -> bytes:
        if (source, to) == (sender, recipient):
            kinds.append(payload[1])
        return payload

    room.hub.tap = tap
    return kinds


async def test_a_new_key_at_a_pinned_address_gets_no_confirm(room: Room) -> None:
    alice, bob = await _pair(room)
    await room.leave(bob)
    await room.hub.settle()
    waiting = alice.client.send_message("for bob only")
    kinds = _kinds_sent(room, A, B)

    impostor = room.join("bob", B, Identity.generate())
    await room.hub.settle()
    message_id = impostor.client.send_message("let me in")
    await room.hub.settle()

    # The pin is checked before CONFIRM (protocol.md section 5.2, step 4):
    # the impostor got handshake frames (HELLO, AUTH) and no record at all.
    (alert,) = alice.find("alert", kind="identity-changed", peer="bob")
    assert impostor.identity.public.fingerprint() in alert["detail"]
    assert kinds and set(kinds) <= {1, 2}
    assert not impostor.find("secure")
    assert not impostor.find("message")
    assert not alice.find("message", text="let me in")

    alice.client.accept_key("bob")
    await room.hub.settle()
    assert len(alice.find("message", text="let me in")) == 1
    assert impostor.find("delivered", id=message_id)
    assert impostor.find("message", id=waiting)
    assert len(alice.find("alert")) == 1


async def test_a_new_key_claiming_a_pinned_name_is_held(room: Room) -> None:
    alice, bob = await _pair(room)
    await room.leave(bob)
    await room.hub.settle()
    kinds = _kinds_sent(room, A, C)

    # A new address and a new key: only the nickname, which arrives inside
    # the channel, shows the change; then everything is held.
    impostor = room.join("bob", C, Identity.generate())
    await room.hub.settle()
    (alert,) = alice.find("alert", kind="identity-changed")
    records = kinds.count(3)
    message_id = impostor.client.send_message("let me in")
    alice.client.send_message("for bob only")
    await room.hub.settle()

    assert not alice.find("message", text="let me in")
    assert not impostor.find("delivered", id=message_id)
    assert not impostor.find("message")
    assert kinds.count(3) == records
    alice.client.accept_key(alert["peer"])
    await room.hub.settle()
    assert len(alice.find("message", text="let me in")) == 1
    assert impostor.find("delivered", id=message_id)


def _invited(room: Room, nick: str, address: bytes, inviter: Identity) -> Member:
    # Joined with a code that names the inviter at address B.
    return room.join(nick, address, expected=inviter.public.fingerprint(), inviter_at=B)


async def test_an_invite_refuses_a_peer_that_is_not_the_inviter(room: Room) -> None:
    inviter = Identity.generate()
    kinds = _kinds_sent(room, A, B)
    joiner = _invited(room, "joiner", A, inviter)
    joiner.client.send_message("secret plan")
    mallory = room.join("alice", B)
    await room.hub.settle()

    (alert,) = joiner.find("alert")
    assert alert["kind"] == "identity-changed"
    assert "invited you" in alert["detail"]
    assert not joiner.find("secure")
    assert not mallory.find("secure")
    assert not mallory.find("message")
    assert set(kinds) <= {1, 2}


async def test_an_invite_marks_the_inviter_verified(room: Room) -> None:
    inviter = Identity.generate()
    joiner = _invited(room, "joiner", A, inviter)
    room.join("alice", B, inviter)
    await room.hub.settle()

    (secure,) = joiner.find("secure")
    assert secure["verified"] is True
    assert not joiner.find("alert")


async def test_one_invite_makes_a_group_of_three_secure_without_trust(
    room: Room,
) -> None:
    inviter = Identity.generate()
    room.join("alice", B, inviter)
    bob = _invited(room, "bob", A, inviter)
    carol = _invited(room, "carol", C, inviter)
    await room.hub.settle()

    for joiner, other in ((bob, "carol"), (carol, "bob")):
        assert not joiner.find("alert")
        (by_inviter,) = joiner.find("secure", peer="alice")
        assert by_inviter["verified"] is True
        (by_other,) = joiner.find("secure", peer=other)
        assert by_other["verified"] is False
        assert by_other["trust"] == "unverified"


async def test_another_holder_of_the_code_is_never_the_inviter(room: Room) -> None:
    inviter = Identity.generate()
    room.join("alice", B, inviter)
    joiner = _invited(room, "joiner", A, inviter)
    await room.hub.settle()

    # Mallory holds the same code and claims the inviter's nickname, from
    # her own address: she cannot take the inviter's.
    mallory = room.join("alice", C)
    await room.hub.settle()

    # The name pinned to the inviter's key makes her a loud change, shown
    # with her own fingerprint digits; nothing of hers is shown or verified.
    digits = mallory.identity.public.fingerprint().replace(" ", "")[:5]
    (alert,) = joiner.find("alert", kind="identity-changed")
    assert alert["peer"] == f"alice#{digits}"
    mallory.client.send_message("I am alice")
    await room.hub.settle()
    assert not joiner.find("message", text="I am alice")
    assert not joiner.find("secure", fingerprint=alert["fingerprint"])
    (secure,) = joiner.find("secure")
    assert secure["peer"] == "alice" and secure["verified"] is True


async def test_another_holder_before_the_inviter_is_only_unverified(
    room: Room,
) -> None:
    inviter = Identity.generate()
    joiner = _invited(room, "joiner", A, inviter)
    mallory = room.join("alice", C)
    await room.hub.settle()

    # Met first, at her own address, she is trust on first use: unverified.
    (secure,) = joiner.find("secure")
    assert secure["fingerprint"] == mallory.identity.public.fingerprint()
    assert secure["verified"] is False
    assert not joiner.find("secure", verified=True)


async def test_outbox_keeps_messages_until_a_peer_arrives(room: Room) -> None:
    alice = room.join("alice", A)
    await room.hub.settle()
    message_id = alice.client.send_message("anyone there?")
    await room.hub.settle()
    assert alice.client.undelivered()[0]["id"] == message_id

    bob = room.join("bob", B)
    await room.hub.settle()

    assert bob.find("message", text="anyone there?")
    assert alice.client.undelivered() == []


async def test_stored_frames_reach_a_member_that_reconnects(room: Room) -> None:
    alice, bob = await _pair(room)
    room.hub.refused.add(B)
    room.hub.leave(B)  # bob's connection drops; his session stays
    await room.hub.settle()
    message_id = alice.client.send_message("stored for you")
    await room.hub.settle()
    stored = [frame_id for frame_id, _, _ in room.hub.mailbox[B]]
    assert stored

    room.hub.refused.discard(B)
    await room.hub.settle()

    assert bob.find("message", text="stored for you")
    assert alice.find("delivered", id=message_id)
    assert {(B, frame_id) for frame_id in stored} <= set(room.hub.acked)


async def test_group_message_is_sealed_once_per_recipient(room: Room) -> None:
    alice, bob = await _pair(room)
    carol = room.join("carol", C)
    await room.hub.settle()
    seen: list[bytes] = []

    def tap(sender: bytes, to: bytes, payload: bytes) -> bytes:
        if sender == A:
            seen.append(to)
        return payload

    room.hub.tap = tap

    message_id = alice.client.send_message("to both")
    await room.hub.settle()

    assert bob.find("message", id=message_id)
    assert carol.find("message", id=message_id)
    assert {B, C} <= set(seen)
    assert alice.find("delivered", id=message_id, complete=True)


async def test_verify_compares_the_safety_number(room: Room) -> None:
    alice, _bob = await _pair(room)
    shown = alice.client.verify("bob")

    with pytest.raises(CommandError, match="does NOT match"):
        alice.client.verify("bob", "0" * 60)
    confirmed = alice.client.verify("bob", shown["safety_number"])

    assert shown["verified"] is False
    assert confirmed["verified"] is True
    assert alice.client.who()[0]["trust"] == "verified"


async def test_keys_panel_shows_statistics_and_no_key(room: Room) -> None:
    alice, bob = await _pair(room)
    panel = alice.client.keys()

    text = repr(panel)
    assert panel["sessions"][0]["epoch"] == 0
    assert bob.identity.public.key.hex() not in text
    assert "safety_number" in panel["sessions"][0]


async def test_a_peer_cannot_rename_itself_mid_session(room: Room) -> None:
    alice, bob = await _pair(room)
    session = bob.client._peers[A].session
    assert session is not None
    session.send_profile("mallory", 0.0)
    bob.client._dirty.set()
    await room.hub.settle()

    assert [peer["peer"] for peer in alice.client.who()] == ["bob"]


async def test_the_nickname_travels_as_a_profile_not_as_text(room: Room) -> None:
    sent: list[tuple[str, bytes]] = []

    def tap(sender: bytes, _to: bytes, payload: bytes) -> bytes:
        sent.append((sender.hex(), payload))
        return payload

    room.hub.tap = tap
    alice, _ = await _pair(room)

    # One of Bob's first records in epoch 0 is PROFILE "bob" (type 6),
    # opened here by hand with Alice's receive key (protocol.md section 7.2).
    session = alice.client._peers[B].session
    assert session is not None and session.channel is not None
    channel = session.channel
    key = channel.epochs[0].recv_key.reveal()
    plaintexts = [
        unpad(
            nacl.bindings.crypto_secretbox_open_easy(
                p[14:],
                record_nonce(0, int.from_bytes(p[6:14], "big"), channel.peer_role),
                key,
            )
        )
        for s, p in sent
        if s == B.hex() and p[1] == 3 and p[2:6] == bytes(4)
    ]
    assert b"\x01\x06bob" in plaintexts
    assert not alice.find("message")
    assert alice.find("secure", peer="bob")


async def test_the_relay_sees_no_name_key_or_text(room: Room) -> None:
    payloads: list[bytes] = []

    def tap(_sender: bytes, _to: bytes, payload: bytes) -> bytes:
        payloads.append(payload)
        return payload

    room.hub.tap = tap
    alice, bob = await _pair(room)
    alice.client.send_message("a secret plan")
    await room.hub.settle()

    assert bob.find("message", text="a secret plan")
    for payload in payloads:
        for needle in (b"alice", b"bob", b"secret plan", bob.identity.public.key):
            assert needle not in payload


async def _alice_waiting_for_bobs_auth(room: Room) -> Member:
    # Bob's own AUTH never reaches Alice, so she waits for one (AUTH_SENT).
    def drop_bobs_auth(sender: bytes, _to: bytes, payload: bytes) -> bytes | None:
        return None if sender == B and payload[:2] == b"\x01\x02" else payload

    room.hub.tap = drop_bobs_auth
    alice = room.join("alice", A)
    room.join("bob", B)
    await room.hub.settle()
    return alice


async def test_a_forged_auth_is_one_handshake_failed_alert(room: Room) -> None:
    alice = await _alice_waiting_for_bobs_auth(room)
    forged = b"\x01\x02" + bytes(112)

    alice.client._on_inbound(B, 0, forged)
    alice.client._on_inbound(B, 0, forged)

    (alert,) = alice.find("alert")
    assert alert["kind"] == "handshake-failed"
    assert alert["cause"] == "forgery"
    assert "relay" in alert["detail"]


async def test_a_stale_auth_from_the_mailbox_raises_no_alert(room: Room) -> None:
    alice = await _alice_waiting_for_bobs_auth(room)

    alice.client._on_inbound(B, 7, b"\x01\x02" + bytes(112))

    assert not alice.find("alert")
    assert 7 in alice.client._acks


async def test_a_key_swapping_relay_is_one_alert_on_each_side(room: Room) -> None:
    def swap_ephemerals(_sender: bytes, _to: bytes, payload: bytes) -> bytes:
        if payload[:2] == b"\x01\x01":
            swapped = nacl.bindings.crypto_scalarmult_base(nacl.utils.random(32))
            return payload[:2] + swapped + payload[34:]
        return payload

    room.hub.tap = swap_ephemerals
    alice = room.join("alice", A)
    bob = room.join("bob", B)
    await room.hub.settle()

    for member in (alice, bob):
        (alert,) = member.find("alert")
        assert alert["kind"] == "handshake-failed"
        assert not member.find("secure")


async def test_verify_waits_for_the_trust_decision(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bob completes the handshake but never sends his nickname.
    alice = room.join("alice", A)
    bob = room.join("bob", B)
    monkeypatch.setattr(bob.client, "_on_established", lambda *_args: None)
    await room.hub.settle()
    (peer,) = alice.client.who()

    outcome = handle_line(alice.client, f"/verify {peer['peer']} yes")

    (event,) = outcome.events
    assert event.event == "error"
    assert "not told its nickname" in event.fields["detail"]
    assert alice.client.who()[0]["trust"] == "unknown"


def _failing(*_args: object) -> None:
    raise TrustStoreError("trust store is full")


async def test_verify_with_a_failing_trust_store_is_an_error(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, _bob = await _pair(room)
    monkeypatch.setattr(room.trust[A], "mark_verified", _failing)

    (event,) = handle_line(alice.client, "/verify bob yes").events

    assert event.event == "error"
    assert "trust store is full" in event.fields["detail"]
    assert alice.client.who()[0]["trust"] == "unverified"


async def test_trust_with_a_failing_trust_store_is_an_error(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await _pair(room)
    await room.leave(bob)
    room.join("bob", C, Identity.generate())
    await room.hub.settle()
    (alert,) = alice.find("alert", kind="identity-changed")
    monkeypatch.setattr(room.trust[A], "accept", _failing)

    (event,) = handle_line(alice.client, f"/trust {alert['peer']}").events

    assert event.event == "error"
    assert "trust store is full" in event.fields["detail"]


async def test_clashing_names_show_fingerprint_digits_and_never_collide(
    room: Room,
) -> None:
    alice, bob = await _pair(room)
    room.join("bob", C, Identity.generate())  # held as changed, but present
    await room.hub.settle()
    digits = bob.identity.public.fingerprint()[:5]
    spoof = room.join(f"bob#{digits}", b"D" * 32)
    await room.hub.settle()

    names = {peer["fingerprint"]: peer["peer"] for peer in alice.client.who()}
    assert len(names) == 3
    shown = {name.replace("#", "_").casefold() for name in names.values()}
    assert len(shown) == len(names)
    assert names[bob.identity.public.fingerprint()].startswith(f"bob#{digits}")
    assert names[spoof.identity.public.fingerprint()].startswith(f"bob_{digits}#")


async def test_a_verified_peer_keeps_its_name_against_rivals(room: Room) -> None:
    alice, bob = await _pair(room)
    alice.client.verify("bob", "yes")
    impostor = room.join("bob", C, Identity.generate())
    await room.hub.settle()

    names = {peer["fingerprint"]: peer["peer"] for peer in alice.client.who()}
    assert names[bob.identity.public.fingerprint()] == "bob"
    fingerprint = impostor.identity.public.fingerprint()
    assert names[fingerprint] == "bob#" + fingerprint[:5]


async def test_verified_does_not_follow_the_key_to_a_new_name(room: Room) -> None:
    alice, bob = await _pair(room)
    alice.client.verify("bob", "yes")
    await room.leave(bob)
    await room.hub.settle()

    room.join("robert", B, bob.identity)
    await room.hub.settle()

    (secure,) = alice.find("secure", peer="robert")
    assert secure["verified"] is False
    assert secure["trust"] == "unverified"


async def test_equal_five_digit_suffixes_show_the_whole_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two keys whose fingerprints share their first five digits (an attacker
    # can search for one), both claiming "bob".
    fingerprints = {b"1" * 32: "11111 22222", b"2" * 32: "11111 33333"}
    monkeypatch.setattr(
        PublicIdentity, "fingerprint", lambda self: fingerprints[self.key]
    )
    client = ChatClient(
        identity=Identity.generate(),
        room=ROOM,
        nick="alice",
        trust=TrustStore(None),
        connect=MemoryHub().connector(A),
        emit=lambda _event: None,
    )
    for address, key in ((B, b"1" * 32), (C, b"2" * 32)):
        peer = client._peer(address)
        assert peer is not None
        peer.nick, peer.identity = "bob", PublicIdentity(key)

    assert sorted(client._display_names().values()) == [
        "bob#1111122222",
        "bob#1111133333",
    ]


async def test_a_peer_cannot_rename_itself_after_our_reconnects(room: Room) -> None:
    alice, bob = await _pair(room)
    for n in range(3):
        room.hub.leave(A)  # the relay drops alice; she reconnects and rekeys
        await room.hub.settle()
        session = bob.client._peers[A].session
        assert session is not None
        session.send_profile(f"name{n}", 0.0)
        bob.client._dirty.set()
        await room.hub.settle()

    assert len(alice.find("reconnected")) == 3
    assert [peer["peer"] for peer in alice.client.who()] == ["bob"]
    assert sorted(room.trust[A]._names) == ["bob"]


async def _drain(queue: asyncio.Queue[Any]) -> None:
    """Read a queue for ever: a member with no client behind it."""
    while True:
        await queue.get()


async def test_strangers_cannot_fill_the_peer_table_or_the_recipients(
    room: Room,
) -> None:
    alice = room.join("alice", A)
    await room.hub.settle()

    # Anyone who knows the room id can make the relay announce members that
    # never complete a handshake: some leave again, some stay.
    drains = []
    for n in range(MAX_PEERS + 8):
        fake = b"%03d" % n + bytes(29)
        drains.append(asyncio.create_task(_drain(room.hub.join(fake).queue)))
        if n % 2:
            room.hub.leave(fake)
    await room.hub.settle()
    bob = room.join("bob", B)
    await room.hub.settle()
    message_id = alice.client.send_message("hello bob")
    await room.hub.settle()

    assert alice.find("secure", peer="bob")
    assert len(alice.client._peers) <= MAX_STRANGERS + 1
    (sent,) = alice.find("sent")
    assert sent["to"] == ["bob"]
    assert bob.find("message", id=message_id)
    assert alice.find("delivered", id=message_id, complete=True)
    for drain in drains:
        drain.cancel()


async def test_a_stored_frame_delivered_again_is_processed_once(room: Room) -> None:
    alice, bob = await _pair(room)
    await room.leave(bob)
    impostor = room.join("bob", C, Identity.generate())
    await room.hub.settle()
    (alert,) = alice.find("alert", kind="identity-changed")

    # Alice is away while the impostor writes: the frames wait in her
    # mailbox, then are held (unacknowledged) when she comes back.
    room.hub.refused.add(A)
    room.hub.leave(A)
    await room.hub.settle()
    impostor.client.send_message("stored twice")
    await room.hub.settle()
    room.hub.refused.discard(A)
    await room.hub.settle()

    # Her link drops again: the relay delivers the same stored frames again.
    room.hub.leave(A)
    await room.hub.settle()
    alice.client.accept_key(alert["peer"])
    await room.hub.settle()

    assert len(alice.find("reconnected")) == 2
    assert len(alice.find("message", text="stored twice")) == 1
    assert not alice.find("alert", kind="replay")


async def test_a_processed_stored_frame_is_acknowledged_again_not_reprocessed(
    room: Room,
) -> None:
    alice, _bob = await _pair(room)
    garbage = b"\x01\x09" + bytes(30)  # processed: one "malformed" alert

    alice.client._on_inbound(B, 9, garbage)
    alice.client._on_inbound(B, 9, garbage)

    assert len(alice.find("alert")) == 1
    assert alice.client._acks.count(9) == 2


async def test_no_handshake_is_retried_toward_a_refused_key(room: Room) -> None:
    alice, bob = await _pair(room)
    await room.leave(bob)
    room.join("bob", B, Identity.generate())
    await room.hub.settle()
    peer = alice.client._peers[B]
    assert peer.refused is not None and peer.failed_at is not None

    alice.client._maybe_restart_handshake(peer, peer.failed_at + 3600)

    assert peer.session is None


async def test_a_stranger_past_the_peer_bound_gets_no_session(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chat.client.MAX_PEERS", 1)
    alice, _bob = await _pair(room)
    carol = room.join("carol", C)
    await room.hub.settle()

    assert not alice.find("secure", peer="carol")
    assert not carol.find("secure", peer="alice")
    assert [peer["peer"] for peer in alice.client.who() if peer["secure"]] == ["bob"]


async def _refused_then_back(room: Room, bob: Member, nick: str) -> tuple[Member, str]:
    """Another key at bob's address is refused and leaves; then bob's own key
    comes back there as `nick` and sends a message. Returns him and its id."""
    await room.leave(bob)
    impostor = room.join("bob", B, Identity.generate())
    await room.hub.settle()
    await room.leave(impostor)
    again = room.join(nick, B, bob.identity)
    await room.hub.settle()
    message_id = again.client.send_message("it was not me")
    await room.hub.settle()
    return again, message_id


async def test_the_pinned_key_returning_after_a_refusal_is_welcome(
    room: Room,
) -> None:
    alice, bob = await _pair(room)

    _again, message_id = await _refused_then_back(room, bob, "bob")

    assert len(alice.find("alert", kind="identity-changed")) == 1
    assert len(alice.find("secure", peer="bob")) == 2
    assert alice.find("message", id=message_id)
    assert alice.client.who()[0]["trust"] == "unverified"


async def test_a_refusal_does_not_unhold_a_later_name_change(room: Room) -> None:
    alice, bob = await _pair(room)
    room.join("carol", C)
    await room.hub.settle()

    # Bob's own key comes back to his address, but claims carol's name.
    again, message_id = await _refused_then_back(room, bob, "carol")

    assert len(alice.find("alert", kind="identity-changed")) == 2
    assert not alice.find("message", id=message_id)
    assert not again.find("delivered", id=message_id, to="alice")


async def test_the_inviter_takes_back_its_name_from_an_earlier_claimant(
    room: Room,
) -> None:
    inviter = Identity.generate()
    joiner = _invited(room, "joiner", A, inviter)
    mallory = room.join("alice", C)
    await room.hub.settle()
    assert joiner.find("secure", peer="alice", verified=False)

    # The inviter arrives under the nickname mallory took first.
    room.join("alice", B, inviter)
    await room.hub.settle()

    assert not joiner.find("alert")
    (secure,) = joiner.find("secure", verified=True)
    assert secure["fingerprint"] == inviter.public.fingerprint()
    digits = mallory.identity.public.fingerprint().replace(" ", "")[:5]
    names = {peer["peer"]: peer["trust"] for peer in joiner.client.who()}
    assert names == {"alice": "verified", f"alice#{digits}": "unverified"}


async def test_the_inviter_leaves_a_verified_name_alone(room: Room) -> None:
    inviter = Identity.generate()
    joiner = _invited(room, "joiner", A, inviter)
    room.join("alice", C)
    await room.hub.settle()
    joiner.client.verify("alice", "yes")

    room.join("alice", B, inviter)
    await room.hub.settle()

    (alert,) = joiner.find("alert", kind="identity-changed")
    assert alert["fingerprint"] == inviter.public.fingerprint()
    assert not joiner.find("secure", fingerprint=inviter.public.fingerprint())


async def test_trust_accepts_someone_else_at_the_inviters_address(
    room: Room,
) -> None:
    inviter = Identity.generate()
    joiner = _invited(room, "joiner", A, inviter)
    carol = room.join("carol", B)
    await room.hub.settle()
    (alert,) = joiner.find("alert", kind="identity-changed")

    joiner.client.accept_key(alert["peer"])
    await room.hub.settle()

    (secure,) = joiner.find("secure", peer="carol")
    assert secure["verified"] is False
    assert secure["fingerprint"] == carol.identity.public.fingerprint()
