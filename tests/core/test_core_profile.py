"""PROFILE: the nickname a peer claims, as a typed payload (protocol.md s7.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.core import (
    LocalError,
    MalformedFrame,
    NotEstablished,
    ProfileReceived,
    Session,
)
from chat.core.frames import Profile, encode_payload, parse_payload
from chat.core.limits import MAX_NICKNAME_BYTES
from tests.core.core_support import ALICE, FAST, established, make_session, snapshot


def _sender_and_receiver(side: str) -> tuple[Session, Session]:
    alice, bob = established()
    return (alice, bob) if side == "alice" else (bob, alice)


@pytest.mark.parametrize("side", ["alice", "bob"])
def test_profile_reaches_the_peer_as_its_own_event(side: str) -> None:
    sender, receiver = _sender_and_receiver(side)
    sender.send_profile("Zoë the 2nd", 1)
    (frame,) = sender.frames_to_send()

    events = receiver.receive(frame, 1)

    assert events == [ProfileReceived("Zoë the 2nd")]


def test_profile_gets_no_receipt() -> None:
    alice, bob = established()
    alice.send_profile("alice", 1)
    (frame,) = alice.frames_to_send()
    bob.receive(frame, 1)

    assert bob.frames_to_send() == []


def test_longest_nickname_arrives_intact() -> None:
    alice, bob = established()
    nickname = "é" * (MAX_NICKNAME_BYTES // 2)
    alice.send_profile(nickname, 1)
    (frame,) = alice.frames_to_send()

    assert bob.receive(frame, 1) == [ProfileReceived(nickname)]


@pytest.mark.parametrize(
    ("nickname", "says"),
    [
        ("", "1 to 128 bytes"),
        ("x" * (MAX_NICKNAME_BYTES + 1), "1 to 128 bytes"),
        ("é" * (MAX_NICKNAME_BYTES // 2) + "x", "1 to 128 bytes"),
        ("\x00nick mallory", "control"),
        ("bell\x07", "control"),
        ("del\x7f", "control"),
        ("next\x85line", "control"),
        ("lone \ud800", "UTF-8"),
    ],
)
def test_sender_refuses_an_invalid_nickname(nickname: str, says: str) -> None:
    alice, _ = established()
    before = snapshot(alice)

    with pytest.raises(LocalError, match=says):
        alice.send_profile(nickname, 1)

    assert alice.frames_to_send() == []
    assert snapshot(alice) == before


def test_profile_before_established_is_refused() -> None:
    alice = make_session(ALICE)
    alice.start()
    with pytest.raises(NotEstablished):
        alice.send_profile("early", 0)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "payload type 6"),
        (b"x" * (MAX_NICKNAME_BYTES + 1), "payload type 6"),
        (b"\xff\xfe", "UTF-8"),
        (b"esc\x1b[2J", "control"),
        ("c1\u009b".encode(), "control"),
    ],
)
def test_receiver_refuses_an_invalid_profile_without_change(
    body: bytes, says: str
) -> None:
    alice, bob = established()
    assert alice.channel is not None
    frame = alice.channel.seal(b"\x01\x06" + body)
    before = snapshot(bob)

    with pytest.raises(MalformedFrame, match=says) as caught:
        bob.receive(frame, 1)

    assert not caught.value.fatal
    assert snapshot(bob) == before


@FAST
@given(st.text(min_size=1, max_size=40))
def test_any_valid_nickname_round_trips_and_any_other_is_refused(
    nickname: str,
) -> None:
    encoded = b"\x01\x06" + nickname.encode("utf-8", "surrogatepass")
    valid = (
        len(encoded) - 2 <= MAX_NICKNAME_BYTES
        and not any(ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F for c in nickname)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in nickname)
    )
    if valid:
        assert encode_payload(Profile(nickname)) == encoded
        assert parse_payload(encoded) == Profile(nickname)
    else:
        with pytest.raises(MalformedFrame):
            parse_payload(encoded)
