"""The handshake, from both sides, against a meddling relay (protocol.md s5)."""

from __future__ import annotations

import nacl.bindings
import pytest

from chat.core import (
    Established,
    ForgedFrame,
    HandshakeFailed,
    KeyChanged,
    MalformedFrame,
    PeerRestarted,
    ReflectedFrame,
    ReplayedFrame,
    RoomKeys,
    Session,
    SessionState,
    StaleFrame,
    UnexpectedFrame,
    UnsupportedVersion,
)
from chat.core.frames import encode_hello
from chat.core.limits import (
    HANDSHAKE_JITTER,
    HANDSHAKE_TIMEOUT_SECONDS,
    REKEY_RETRANSMIT_SECONDS,
)
from chat.core.schedule import auth_nonce
from tests.core.core_support import (
    ALICE,
    BOB,
    MALLORY,
    answered,
    established,
    make_session,
    pump,
    snapshot,
)

S = SessionState
LATEST_TIMEOUT = HANDSHAKE_TIMEOUT_SECONDS * (1 + HANDSHAKE_JITTER) + 1


def test_initiator_side_reaches_established() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    events_a, _ = pump(alice, bob, 0)
    assert alice.state is S.ESTABLISHED
    assert events_a == [Established(BOB.public, alice.safety_number or "")]


def test_responder_side_reaches_established() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    _, events_b = pump(alice, bob, 0)
    assert bob.state is S.ESTABLISHED
    assert events_b == [Established(ALICE.public, bob.safety_number or "")]


def test_both_sides_show_the_same_safety_number() -> None:
    alice, bob = established()
    assert alice.safety_number is not None
    assert alice.safety_number == bob.safety_number


def test_simultaneous_start_establishes_once() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    bob.start()
    events_a, events_b = pump(alice, bob, 0)
    assert (alice.state, bob.state) == (S.ESTABLISHED, S.ESTABLISHED)
    assert len(events_a) == len(events_b) == 1


def test_handshake_states_step_by_step() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    states = [alice.state]
    alice.start()
    states.append(alice.state)
    bob.receive(alice.frames_to_send()[0], 0)
    hello_b, auth_b = bob.frames_to_send()
    alice.receive(hello_b, 0)
    states.append(alice.state)
    alice.receive(auth_b, 0)
    states.append(alice.state)
    assert states == [S.IDLE, S.HELLO_SENT, S.AUTH_SENT, S.CONFIRMING]
    assert bob.state is S.AUTH_SENT


def test_hello_lost_once_still_establishes() -> None:
    # Alice's HELLO is lost; Bob starts later; Alice answers Bob's fresh HELLO.
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    alice.frames_to_send()
    bob.start()
    pump(alice, bob, 0)
    assert (alice.state, bob.state) == (S.ESTABLISHED, S.ESTABLISHED)


def test_wrong_room_secret_fails_without_killing_the_session() -> None:
    alice = make_session(ALICE)
    bob = make_session(BOB, room=RoomKeys.from_secret(bytes(32)))
    hello_b, auth_b = answered(alice, bob)
    alice.receive(hello_b, 0)
    with pytest.raises(ForgedFrame, match="wrong room secret") as caught:
        alice.receive(auth_b, 0)
    assert not caught.value.fatal
    assert alice.state is S.AUTH_SENT


def test_substituted_ephemeral_aborts_the_handshake() -> None:
    # The relay swaps Bob's ephemeral for its own in Bob's HELLO.
    alice, bob = make_session(ALICE), make_session(BOB)
    relay = make_session(MALLORY, room=RoomKeys.from_secret(bytes(32)))
    hello_b, auth_b = answered(alice, bob)
    relay.start()
    relay_e = relay.frames_to_send()[0][2:34]
    alice.receive(hello_b[:2] + relay_e + hello_b[34:], 0)
    with pytest.raises(ForgedFrame):
        alice.receive(auth_b, 0)
    assert alice.state is not S.ESTABLISHED


def test_substituted_identity_without_room_key_aborts() -> None:
    # Mallory (no room key) answers Alice in Bob's place.
    alice = make_session(ALICE)
    mallory = make_session(MALLORY, room=RoomKeys.from_secret(bytes(32)))
    hello_m, auth_m = answered(alice, mallory)
    alice.receive(hello_m, 0)
    with pytest.raises(ForgedFrame):
        alice.receive(auth_m, 0)
    assert alice.peer is None


def test_substituted_identity_with_room_key_raises_key_changed() -> None:
    alice = make_session(ALICE, expected_peer=BOB.public)
    mallory = make_session(MALLORY)
    hello_m, auth_m = answered(alice, mallory)
    alice.receive(hello_m, 0)
    with pytest.raises(KeyChanged) as caught:
        alice.receive(auth_m, 0)
    assert caught.value.peer == MALLORY.public
    assert caught.value.fatal and caught.value.kind == "identity-changed"
    assert alice.state is S.FAILED


def test_key_changed_sends_no_confirm() -> None:
    alice = make_session(ALICE, expected_peer=BOB.public)
    mallory = make_session(MALLORY)
    hello_m, auth_m = answered(alice, mallory)
    alice.receive(hello_m, 0)
    alice.frames_to_send()
    with pytest.raises(KeyChanged):
        alice.receive(auth_m, 0)
    assert alice.frames_to_send() == []


def test_expected_peer_that_matches_establishes() -> None:
    alice = make_session(ALICE, expected_peer=BOB.public)
    bob = make_session(BOB, expected_peer=ALICE.public)
    alice.start()
    pump(alice, bob, 0)
    assert alice.state is S.ESTABLISHED


def test_unexpected_fingerprint_sends_no_confirm() -> None:
    alice = make_session(ALICE, expected_fingerprint=BOB.public.fingerprint())
    mallory = make_session(MALLORY)
    hello_m, auth_m = answered(alice, mallory)
    alice.receive(hello_m, 0)
    alice.frames_to_send()

    with pytest.raises(KeyChanged) as caught:
        alice.receive(auth_m, 0)

    assert caught.value.peer == MALLORY.public
    assert alice.state is S.FAILED
    assert alice.frames_to_send() == []


def test_expected_fingerprint_that_matches_establishes() -> None:
    typed = BOB.public.fingerprint().replace(" ", "-")
    alice = make_session(ALICE, expected_fingerprint=typed)
    bob = make_session(BOB)
    alice.start()
    pump(alice, bob, 0)
    assert alice.state is S.ESTABLISHED


def test_auth_with_a_bad_signature_is_fatal() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, _ = answered(alice, bob)
    alice.receive(hello_b, 0)

    # Re-seal Bob's AUTH with a corrupted signature under the right key.
    handshake = bob._live
    assert handshake is not None and handshake.pairing is not None
    pairing = handshake.pairing
    assert pairing.secrets is not None
    bad = BOB.public.key + bytes(64)
    box = nacl.bindings.crypto_secretbox_easy(
        bad, auth_nonce(pairing.role), pairing.secrets.k_auth_own.reveal()
    )
    with pytest.raises(HandshakeFailed, match="signature"):
        alice.receive(b"\x01\x02" + box, 0)
    assert alice.state is S.FAILED


def test_peer_claiming_our_own_identity_is_fatal() -> None:
    alice, twin = make_session(ALICE), make_session(ALICE, seed=b"twin")
    hello_t, auth_t = answered(alice, twin)
    alice.receive(hello_t, 0)
    with pytest.raises(HandshakeFailed, match="own identity"):
        alice.receive(auth_t, 0)


def test_reflected_hello_is_rejected() -> None:
    alice = make_session(ALICE)
    alice.start()
    hello = alice.frames_to_send()[0]
    with pytest.raises(ReflectedFrame):
        alice.receive(hello, 0)
    assert alice.state is S.HELLO_SENT


def test_reflected_hello_with_bit_255_set_is_rejected() -> None:
    alice = make_session(ALICE)
    alice.start()
    hello = bytearray(alice.frames_to_send()[0])
    hello[33] |= 0x80
    with pytest.raises(MalformedFrame, match="canonical"):
        alice.receive(bytes(hello), 0)


def test_reflected_auth_is_rejected() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, _ = answered(alice, bob)
    alice.receive(hello_b, 0)
    (own_auth,) = alice.frames_to_send()
    with pytest.raises(ReflectedFrame):
        alice.receive(own_auth, 0)
    assert alice.state is S.AUTH_SENT


@pytest.mark.parametrize("version", [0x00, 0x02, 0xFF])
def test_other_version_hello_is_refused(version: int) -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    hello = alice.frames_to_send()[0]
    before = snapshot(bob)
    with pytest.raises(UnsupportedVersion) as caught:
        bob.receive(bytes([version]) + hello[1:], 0)
    assert not caught.value.fatal
    assert snapshot(bob) == before


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")])
def test_small_order_hello_is_dropped(point: bytes) -> None:
    bob = make_session(BOB)
    before = snapshot(bob)
    with pytest.raises(MalformedFrame, match="small-order"):
        bob.receive(encode_hello(point), 0)
    assert snapshot(bob) == before


def test_non_canonical_point_is_refused() -> None:
    bob = make_session(BOB)
    point = (2**255 - 19).to_bytes(32, "little")
    with pytest.raises(MalformedFrame, match="canonical"):
        bob.receive(encode_hello(point), 0)


def test_auth_before_pairing_is_dropped() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    _, auth_b = answered(alice, bob)
    carol = make_session(ALICE, seed=b"carol")
    carol.start()
    with pytest.raises(UnexpectedFrame, match="HELLO_SENT"):
        carol.receive(auth_b, 0)
    assert carol.state is S.HELLO_SENT


def test_idle_side_answering_a_stranger_starts_afresh() -> None:
    bob = make_session(BOB)
    stranger = make_session(MALLORY)
    stranger.start()
    e = stranger.frames_to_send()[0][2:34]
    bob.receive(encode_hello(e, echo=bytes(range(32))), 0)
    assert bob.state is S.HELLO_SENT
    (hello,) = bob.frames_to_send()
    assert hello[34:] == bytes(32)


def test_stale_hello_is_ignored() -> None:
    alice = make_session(ALICE)
    alice.start()
    alice.frames_to_send()
    stranger = make_session(MALLORY)
    stranger.start()
    e = stranger.frames_to_send()[0][2:34]
    with pytest.raises(StaleFrame):
        alice.receive(encode_hello(e, echo=bytes(range(32))), 0)
    assert alice.state is S.HELLO_SENT


def test_replayed_hello_does_not_disturb_an_established_session() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    hello_a = alice.frames_to_send()[0]
    bob.receive(hello_a, 0)
    pump(alice, bob, 0)
    with pytest.raises(ReplayedFrame):
        bob.receive(hello_a, 5)
    assert bob.state is S.ESTABLISHED


def test_timeout_restarts_the_handshake() -> None:
    alice = make_session(ALICE)
    alice.start()
    first = alice.frames_to_send()[0]
    alice.tick(LATEST_TIMEOUT)
    (second,) = alice.frames_to_send()
    assert second[2:34] != first[2:34]
    assert second[34:] == bytes(32)


def test_no_restart_before_the_earliest_timeout() -> None:
    alice = make_session(ALICE)
    alice.start()
    alice.frames_to_send()
    alice.tick(HANDSHAKE_TIMEOUT_SECONDS * (1 - HANDSHAKE_JITTER) - 0.01)
    assert alice.frames_to_send() == []


def test_peer_restart_keeps_the_live_session_until_confirmed() -> None:
    alice, bob = established()
    bob_again = make_session(BOB, seed=b"bob restarted", now=10)
    bob_again.start()
    alice.receive(bob_again.frames_to_send()[0], 10)
    assert alice.state is S.ESTABLISHED
    alice.send_text("still the old session", 10)
    assert bob.receive(alice.frames_to_send()[-1], 10)


def test_peer_restart_completes_with_peer_restarted() -> None:
    alice, _ = established()
    bob_again = make_session(BOB, seed=b"bob restarted", now=10)
    bob_again.start()
    events_a, _ = pump(alice, bob_again, 10)
    assert events_a[0] == PeerRestarted()
    assert isinstance(events_a[1], Established)
    assert bob_again.state is S.ESTABLISHED


def test_restart_by_another_identity_raises_key_changed() -> None:
    alice, _ = established()
    mallory = make_session(MALLORY, now=10)
    mallory.start()
    with pytest.raises(KeyChanged):
        pump(alice, mallory, 10)


def test_restarts_are_rate_limited() -> None:
    alice, _ = established()
    first, second = make_session(BOB, seed=b"1"), make_session(BOB, seed=b"2")
    first.start()
    second.start()
    alice.receive(first.frames_to_send()[0], 10)
    with pytest.raises(UnexpectedFrame, match="once per second"):
        alice.receive(second.frames_to_send()[0], 10.5)


def test_state_transition_missing_names_state_and_event() -> None:
    alice = make_session(ALICE)
    _, bob = established()
    bob.send_text("hi", 0)
    with pytest.raises(UnexpectedFrame, match="record frame in state IDLE"):
        alice.receive(bob.frames_to_send()[0], 0)


@pytest.mark.parametrize("cut", [0, 1, 2, 33, 65])
def test_truncated_hello_is_refused(cut: int) -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    hello = alice.frames_to_send()[0]
    with pytest.raises(MalformedFrame):
        bob.receive(hello[:cut], 0)
    assert bob.state is S.IDLE


@pytest.mark.parametrize("change", [-1, 1])
def test_auth_of_the_wrong_size_is_refused(change: int) -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, auth_b = answered(alice, bob)
    alice.receive(hello_b, 0)
    wrong = auth_b[:-1] if change < 0 else auth_b + b"\x00"
    with pytest.raises(MalformedFrame, match="AUTH is 114 bytes"):
        alice.receive(wrong, 0)
    assert alice.state is S.AUTH_SENT


def test_key_canonical_only_when_read_little_endian_is_accepted() -> None:
    # Top bit of byte 0 set: read big-endian this would be >= 2^255 (section
    # 5.1 reads little-endian, as RFC 7748 does, so it is u = 255).
    bob = make_session(BOB)
    bob.receive(encode_hello(b"\xff" + bytes(31)), 0)
    assert bob.state is S.AUTH_SENT


def test_key_canonical_only_when_read_big_endian_is_refused() -> None:
    # Bit 255 is the top bit of the last byte: u = 2^255, not canonical.
    bob = make_session(BOB)
    with pytest.raises(MalformedFrame, match="canonical"):
        bob.receive(encode_hello(bytes(31) + b"\x80"), 0)
    assert bob.state is S.IDLE


def alice_confirming() -> tuple[Session, Session, bytes, bytes, bytes]:
    """Alice verified Bob's AUTH; return both, Bob's AUTH, Alice's AUTH, CONFIRM."""
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, auth_b = answered(alice, bob)
    alice.receive(hello_b, 0)
    alice.receive(auth_b, 0)
    auth_a, confirm_a = alice.frames_to_send()
    return alice, bob, auth_b, auth_a, confirm_a


def test_fresh_hello_in_hello_sent_is_answered_with_the_same_ephemeral() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    bob.start()
    (hello_a,) = alice.frames_to_send()
    (hello_b,) = bob.frames_to_send()
    alice.receive(hello_b, 0)
    answer, _auth = alice.frames_to_send()
    assert answer == hello_a[:34] + hello_b[2:34]


def test_unconfirmed_side_resends_confirm_under_a_fresh_counter() -> None:
    alice, _bob, _auth_b, _auth_a, confirm = alice_confirming()
    alice.tick(REKEY_RETRANSMIT_SECONDS - 0.5)
    assert alice.frames_to_send() == []
    alice.tick(REKEY_RETRANSMIT_SECONDS)
    (resent,) = alice.frames_to_send()
    assert confirm[2:14] == bytes(4) + (0).to_bytes(8, "big")
    assert resent[2:14] == bytes(4) + (1).to_bytes(8, "big")


def test_confirm_that_overtook_the_auth_is_answered_and_both_establish() -> None:
    # Bob sees Alice's CONFIRM before her AUTH and drops it; Alice establishes
    # on Bob's CONFIRM. Bob's resent CONFIRM makes Alice send hers again.
    alice, bob, _auth_b, auth_a, confirm_a = alice_confirming()
    with pytest.raises(UnexpectedFrame):
        bob.receive(confirm_a, 0)
    bob.receive(auth_a, 0)
    (confirm_b,) = bob.frames_to_send()
    assert alice.receive(confirm_b, 0)
    assert [bob.state] == [S.CONFIRMING]

    bob.tick(REKEY_RETRANSMIT_SECONDS)
    (resent_b,) = bob.frames_to_send()
    alice.receive(resent_b, REKEY_RETRANSMIT_SECONDS)
    assert alice.frames_to_send() == [confirm_a]
    events = bob.receive(confirm_a, REKEY_RETRANSMIT_SECONDS)
    assert isinstance(events[0], Established)
    assert bob.state is S.ESTABLISHED

    # A CONFIRM at counter 0 asks for nothing, so answers cannot loop.
    assert bob.frames_to_send() == []


@pytest.mark.parametrize("kind", ["auth", "record"])
def test_auth_or_record_in_idle_is_unexpected(kind: str) -> None:
    _alice, _bob, auth_b, _auth_a, confirm_a = alice_confirming()
    idle = make_session(MALLORY)
    with pytest.raises(UnexpectedFrame, match="IDLE"):
        idle.receive(auth_b if kind == "auth" else confirm_a, 0)
    assert idle.state is S.IDLE


def test_hello_answering_us_with_another_key_after_pairing_is_stale() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, _ = answered(alice, bob)
    alice.receive(hello_b, 0)
    own_e = hello_b[34:66]
    other = make_session(MALLORY)
    other.start()
    other_e = other.frames_to_send()[0][2:34]
    before = snapshot(alice)
    with pytest.raises(StaleFrame):
        alice.receive(encode_hello(other_e, own_e), 0)
    assert snapshot(alice) == before
