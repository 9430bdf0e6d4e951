"""Rekeying: epochs, in-flight frames, grace time, forgetting (protocol.md s9)."""

from __future__ import annotations

import copy

import pytest

from chat.core import (
    Established,
    FutureEpoch,
    MalformedFrame,
    MessageReceived,
    NotEstablished,
    PeerError,
    Rekeyed,
    Session,
    SessionState,
    StaleFrame,
)
from chat.core.frames import Rekey, encode_payload
from chat.core.limits import (
    PREVIOUS_EPOCH_GRACE_SECONDS,
    REJECT_AFTER_SECONDS,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_SECONDS,
    REKEY_RETRANSMIT_SECONDS,
)
from tests.core.core_support import established, pump


def test_rekey_moves_both_sides_to_epoch_one() -> None:
    alice, bob = established()
    alice.rekey(1)
    events_a, events_b = pump(alice, bob, 1)
    assert events_a == [Rekeyed(1)] and events_b == [Rekeyed(1)]
    assert alice.stats.epoch == bob.stats.epoch == 1


def test_messages_flow_after_a_rekey() -> None:
    alice, bob = established()
    alice.rekey(1)
    pump(alice, bob, 1)
    bob.send_text("after", 2)
    events_a, _ = pump(alice, bob, 2)
    assert events_a == [MessageReceived(events_a[0].message_id, "after")]  # type: ignore[union-attr]
    assert alice.channel is not None and alice.channel.send_epoch == 1


def test_simultaneous_rekeys_agree() -> None:
    alice, bob = established()
    alice.rekey(1)
    bob.rekey(1)
    pump(alice, bob, 1)
    assert alice.channel is not None and bob.channel is not None
    assert alice.channel.root == bob.channel.root
    assert alice.stats.epoch == bob.stats.epoch == 1


def test_in_flight_frames_of_the_old_epoch_are_delivered() -> None:
    alice, bob = established()
    alice.send_text("in flight", 1)
    in_flight = alice.frames_to_send()
    alice.rekey(1)
    bob.rekey(1)
    pump(alice, bob, 1)
    (event,) = bob.receive(in_flight[0], 2)
    assert isinstance(event, MessageReceived) and event.text == "in flight"


def test_sender_keeps_the_old_epoch_until_the_peer_switches() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    # Bob has both REKEYs and the new keys, but Alice has not answered yet.
    bob.send_text("still epoch zero", 1)
    assert bob.frames_to_send()[-1][2:6] == bytes(4)


def rekeyed_with_a_late_record() -> tuple[Session, bytes]:
    """Bob, switched to epoch 1 at time 1, and an epoch-0 record still in flight."""
    alice, bob = established()
    alice.send_text("late", 1)
    (late,) = alice.frames_to_send()
    alice.rekey(1)
    pump(alice, bob, 1)
    return bob, late


def test_previous_epoch_is_forgotten_after_grace() -> None:
    bob, late = rekeyed_with_a_late_record()
    bob.tick(1 + PREVIOUS_EPOCH_GRACE_SECONDS + 0.1)
    assert bob.channel is not None and 0 not in bob.channel.epochs
    with pytest.raises(StaleFrame, match="epoch 0 is forgotten"):
        bob.receive(late, 1 + PREVIOUS_EPOCH_GRACE_SECONDS + 0.2)


def test_previous_epoch_is_refused_after_grace_without_a_tick() -> None:
    # Expiry is checked when a record arrives, not only when tick() runs: a
    # late old-epoch record past the grace time is stale (protocol.md s9).
    bob, late = rekeyed_with_a_late_record()
    assert bob.channel is not None and 0 in bob.channel.epochs
    with pytest.raises(StaleFrame, match="epoch 0 is forgotten"):
        bob.receive(late, 1 + PREVIOUS_EPOCH_GRACE_SECONDS + 0.2)


def test_previous_epoch_still_open_within_grace() -> None:
    bob, late = rekeyed_with_a_late_record()
    bob.tick(1 + PREVIOUS_EPOCH_GRACE_SECONDS - 1)
    assert bob.receive(late, 1 + PREVIOUS_EPOCH_GRACE_SECONDS - 1)


def test_copied_state_cannot_read_the_next_epoch() -> None:
    alice, bob = established()
    stolen = copy.deepcopy(bob)
    alice.rekey(1)
    pump(alice, bob, 1)
    alice.send_text("secret after rekey", 2)
    (frame,) = alice.frames_to_send()
    with pytest.raises(PeerError):
        stolen.receive(frame, 2)


def test_state_after_rekey_cannot_read_the_old_epoch() -> None:
    alice, bob = established()
    alice.send_text("before", 1)
    before = alice.frames_to_send()
    alice.rekey(1)
    pump(alice, bob, 1)
    bob.tick(100)
    taken = copy.deepcopy(bob)
    assert taken.channel is not None and set(taken.channel.epochs) == {1}
    with pytest.raises(StaleFrame):
        taken.receive(before[0], 100)


def test_rekey_after_message_count() -> None:
    alice, bob = established()
    assert alice.channel is not None
    alice.channel.sending.send_counter = REKEY_AFTER_MESSAGES - 1
    alice.send_text("the one that triggers it", 1)
    pump(alice, bob, 1)
    assert alice.stats.epoch == 1


def test_rekey_after_time() -> None:
    alice, bob = established()
    alice.tick(REKEY_AFTER_SECONDS)
    pump(alice, bob, REKEY_AFTER_SECONDS)
    assert alice.stats.epoch == bob.stats.epoch == 1


def test_dropped_rekey_is_retransmitted() -> None:
    alice, bob = established()
    alice.rekey(1)
    alice.frames_to_send()
    alice.tick(1 + REKEY_RETRANSMIT_SECONDS)
    pump(alice, bob, 1 + REKEY_RETRANSMIT_SECONDS)
    assert alice.stats.epoch == bob.stats.epoch == 1


def test_dropped_answer_is_retransmitted() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    bob.frames_to_send()
    bob.tick(1 + REKEY_RETRANSMIT_SECONDS)
    pump(alice, bob, 1 + REKEY_RETRANSMIT_SECONDS)
    assert alice.stats.epoch == bob.stats.epoch == 1


def test_duplicate_rekey_is_harmless() -> None:
    alice, bob = established()
    alice.rekey(1)
    alice.tick(1 + REKEY_RETRANSMIT_SECONDS)
    pump(alice, bob, 1 + REKEY_RETRANSMIT_SECONDS)
    assert bob.state is SessionState.ESTABLISHED
    assert bob.stats.epoch == 1


def test_rekey_skipping_an_epoch_is_fatal() -> None:
    alice, bob = established()
    assert alice.channel is not None
    frame = alice.channel.seal(encode_payload(Rekey(5, bytes(range(32)))))
    with pytest.raises(MalformedFrame) as caught:
        bob.receive(frame, 1)
    assert caught.value.fatal
    assert bob.state is SessionState.FAILED


def test_contradictory_rekey_is_fatal() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    assert alice.channel is not None
    # Bob agreed on epoch 1 with Alice's key; a second, different one follows.
    frame = alice.channel.seal(encode_payload(Rekey(1, bytes(range(1, 33)))))
    with pytest.raises(MalformedFrame, match="second, different REKEY") as caught:
        bob.receive(frame, 1)
    assert caught.value.fatal
    assert bob.state is SessionState.FAILED


def test_small_order_rekey_key_is_fatal() -> None:
    alice, bob = established()
    assert alice.channel is not None
    frame = alice.channel.seal(encode_payload(Rekey(1, bytes(32))))
    with pytest.raises(MalformedFrame, match="small-order") as caught:
        bob.receive(frame, 1)
    assert caught.value.fatal


def test_record_from_a_future_epoch_is_dropped() -> None:
    alice, bob = established()
    bob.send_text("x", 1)
    (frame,) = bob.frames_to_send()
    with pytest.raises(FutureEpoch) as caught:
        alice.receive(frame[:2] + (9).to_bytes(4, "big") + frame[6:], 1)
    assert not caught.value.fatal


def test_old_epoch_refuses_to_send_and_a_handshake_starts() -> None:
    alice, bob = established()
    alice.tick(REJECT_AFTER_SECONDS)
    frames = alice.frames_to_send()
    assert [frame[1] for frame in frames] == [0x01]
    bob.receive(frames[0], REJECT_AFTER_SECONDS)
    with pytest.raises(NotEstablished, match="too old"):
        alice.send_text("refused", REJECT_AFTER_SECONDS)
    events_a, _ = pump(alice, bob, REJECT_AFTER_SECONDS)
    assert isinstance(events_a[-1], Established)
    alice.send_text("fresh keys", REJECT_AFTER_SECONDS)


def test_late_copy_of_an_earlier_rekey_is_harmless() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    alice.tick(1 + REKEY_RETRANSMIT_SECONDS)
    late = alice.frames_to_send()[0]
    pump(alice, bob, 7)
    alice.rekey(8)
    for frame in alice.frames_to_send():
        bob.receive(frame, 8)

    # Bob holds epoch 2; the retransmitted REKEY(1) from epoch 0 arrives late.
    assert bob.receive(late, 9) == []
    assert bob.state is SessionState.ESTABLISHED


def test_rekey_started_by_the_responder() -> None:
    alice, bob = established()
    bob.rekey(1)
    events_a, events_b = pump(alice, bob, 1)
    assert events_a == [Rekeyed(1)] and events_b == [Rekeyed(1)]


def _header(frame: bytes) -> tuple[int, int]:
    return int.from_bytes(frame[2:6], "big"), int.from_bytes(frame[6:14], "big")


def test_answer_to_a_rekey_goes_out_before_the_new_epoch_confirm() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    answer, confirm = bob.frames_to_send()
    assert [_header(answer)[0], _header(confirm)] == [0, (1, 0)]


def test_records_after_the_switch_continue_the_confirm_counter() -> None:
    alice, bob = established()
    alice.rekey(1)
    pump(alice, bob, 1)
    alice.send_text("first of epoch 1", 2)
    (frame,) = alice.frames_to_send()
    assert _header(frame) == (1, 1)


def test_rekey_resent_in_the_old_epoch_after_the_switch_is_a_no_op() -> None:
    alice, bob = established()
    alice.rekey(1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
    alice.tick(1 + REKEY_RETRANSMIT_SECONDS)
    late_rekey = alice.frames_to_send()[0]
    assert _header(late_rekey)[0] == 0
    pump(alice, bob, 7)
    assert bob.stats.epoch == 1

    # Within the grace time, the epoch 0 record opens; its REKEY(1) is known.
    assert bob.receive(late_rekey, 8) == []
    assert bob.state is SessionState.ESTABLISHED
    assert bob.frames_to_send() == []


def test_new_epoch_confirm_that_overtook_the_rekey_is_answered() -> None:
    # Alice's CONFIRM of epoch 1 reaches Bob before her REKEY: Bob cannot open
    # it yet. Alice switches on Bob's CONFIRM; Bob's resent one brings hers.
    alice, bob = established()
    bob.rekey(1)
    for frame in bob.frames_to_send():
        alice.receive(frame, 1)
    rekey_a, confirm_a = alice.frames_to_send()
    with pytest.raises(FutureEpoch):
        bob.receive(confirm_a, 1)
    bob.receive(rekey_a, 1)
    (confirm_b,) = bob.frames_to_send()
    assert alice.receive(confirm_b, 1) == [Rekeyed(1)]

    bob.tick(1 + REKEY_RETRANSMIT_SECONDS)
    for frame in bob.frames_to_send():
        alice.receive(frame, 1 + REKEY_RETRANSMIT_SECONDS)
    assert alice.frames_to_send() == [confirm_a]
    assert bob.receive(confirm_a, 1 + REKEY_RETRANSMIT_SECONDS) == [Rekeyed(1)]
    assert bob.frames_to_send() == []
