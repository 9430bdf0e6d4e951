"""Records: tampering, replay, reordering, nonce reuse, limits (protocol.md s7-8)."""

from __future__ import annotations

import copy
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.core import (
    CounterExhausted,
    MalformedFrame,
    MessageReceived,
    MessageTooLarge,
    NonceReuse,
    NotEstablished,
    PeerClosed,
    PeerError,
    ReceiptReceived,
    ReflectedFrame,
    ReplayedFrame,
    Session,
    SessionClosed,
    SessionState,
    StaleFrame,
    UnsupportedVersion,
)
from chat.core.frames import RECORD_SIZES, encode_record_header, parse_record
from chat.core.limits import (
    MAX_FRAME,
    MAX_TEXT_BYTES,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
)
from tests.core.core_support import (
    ALICE,
    BOB,
    FAST,
    answered,
    established,
    make_session,
    pump,
    snapshot,
)

#: Byte ranges of a RECORD's fields (protocol.md section 7.1).
RECORD_FIELDS = {
    "version": (0, 1),
    "type": (1, 2),
    "epoch": (2, 6),
    "counter": (6, 14),
    "tag": (14, 30),
    "ciphertext": (30, 286),
}

#: Byte ranges of an AUTH's fields (protocol.md section 5.2).
AUTH_FIELDS = {"version": (0, 1), "type": (1, 2), "tag": (2, 18), "sealed": (18, 114)}


def one_message() -> tuple[Session, Session, bytes]:
    alice, bob = established()
    alice.send_text("hello", 1)
    (frame,) = alice.frames_to_send()
    return alice, bob, frame


@cache
def window_of_frames() -> tuple[Session, tuple[bytes, ...]]:
    """Bob, established, and a window's worth of records from Alice."""
    alice, bob = established()
    frames = []
    for i in range(REPLAY_WINDOW):
        alice.send_text(f"m{i}", 1)
        frames += alice.frames_to_send()
    return bob, tuple(frames)


@cache
def records_by_counter() -> tuple[Session, dict[int, tuple[bytes, str | None]]]:
    """Bob, established, and Alice's epoch-0 records over three windows.

    Each counter maps to its record and its text. Counter 0 is the handshake's
    confirm, which Bob has already accepted, so the records start at counter 1.
    Alice's automatic REKEY (after REKEY_AFTER_MESSAGES) is among them, with
    no text; she stays in epoch 0 since Bob never answers.
    """
    alice, bob = established()
    records: dict[int, tuple[bytes, str | None]] = {}
    for i in range(3 * REPLAY_WINDOW):
        alice.send_text(f"m{i}", 1)
        frame, *others = alice.frames_to_send()
        records[parse_record(frame).counter] = (frame, f"m{i}")
        for other in others:
            records[parse_record(other).counter] = (other, None)
    assert {parse_record(frame).epoch for frame, _ in records.values()} == {0}
    return bob, records


def accept(bob: Session, frame: bytes, text: str | None) -> None:
    """Bob receives ``frame``; a text record must deliver exactly ``text``."""
    events = bob.receive(frame, 1)
    if text is not None:
        (event,) = events
        assert isinstance(event, MessageReceived) and event.text == text


@FAST
@given(
    field=st.sampled_from(sorted(RECORD_FIELDS)),
    data=st.data(),
)
def test_any_flipped_record_byte_is_rejected_without_change(
    field: str, data: st.DataObject
) -> None:
    _, bob, frame = one_message()
    start, end = RECORD_FIELDS[field]
    index = data.draw(st.integers(start, end - 1), label=f"byte of {field}")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(frame)
    tampered[index] ^= flip
    before = snapshot(bob)

    with pytest.raises(PeerError) as caught:
        bob.receive(bytes(tampered), 1)
    assert not caught.value.fatal, field
    assert snapshot(bob) == before, field
    (event,) = bob.receive(frame, 1)
    assert isinstance(event, MessageReceived) and event.text == "hello"


@FAST
@given(field=st.sampled_from(sorted(AUTH_FIELDS)), data=st.data())
def test_any_flipped_auth_byte_is_rejected_without_change(
    field: str, data: st.DataObject
) -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, auth_b = answered(alice, bob)
    alice.receive(hello_b, 0)
    start, end = AUTH_FIELDS[field]
    index = data.draw(st.integers(start, end - 1), label=f"byte of {field}")
    tampered = bytearray(auth_b)
    tampered[index] ^= data.draw(st.integers(1, 255), label="xor")
    before = snapshot(alice)

    with pytest.raises(PeerError) as caught:
        alice.receive(bytes(tampered), 0)
    assert not caught.value.fatal, field
    assert snapshot(alice) == before, field


#: Byte ranges of a HELLO's fields (protocol.md section 5.1).
HELLO_FIELDS = {
    "version": (0, 1),
    "type": (1, 2),
    "ephemeral": (2, 34),
    "echo": (34, 66),
}


@FAST
@given(field=st.sampled_from(sorted(HELLO_FIELDS)), data=st.data())
def test_any_flipped_hello_byte_prevents_establishment(
    field: str, data: st.DataObject
) -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    hello_b, auth_b = answered(alice, bob)
    start, end = HELLO_FIELDS[field]
    index = data.draw(st.integers(start, end - 1), label=f"byte of {field}")
    tampered = bytearray(hello_b)
    tampered[index] ^= data.draw(st.integers(1, 255), label="xor")

    with pytest.raises(PeerError):
        alice.receive(bytes(tampered), 0)
        alice.receive(auth_b, 0)
    assert alice.state is not SessionState.ESTABLISHED


def test_every_accepted_frame_replayed_is_rejected() -> None:
    alice, bob = make_session(ALICE), make_session(BOB)
    alice.start()
    delivered: list[bytes] = []
    for _ in range(3):
        for frame in alice.frames_to_send():
            bob.receive(frame, 0)
            delivered.append(frame)
        for frame in bob.frames_to_send():
            alice.receive(frame, 0)
    alice.send_text("one", 1)
    alice.rekey(1)
    alice.send_text("two", 1)
    for frame in alice.frames_to_send():
        bob.receive(frame, 1)
        delivered.append(frame)
    pump(alice, bob, 1)

    assert len(delivered) >= 6
    for frame in delivered:
        before = snapshot(bob)
        with pytest.raises(ReplayedFrame):
            bob.receive(frame, 2)
        assert snapshot(bob) == before


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.large_base_example, HealthCheck.data_too_large],
)
@given(order=st.permutations(range(REPLAY_WINDOW)))
def test_any_permutation_of_a_window_is_delivered_exactly_once(
    order: list[int],
) -> None:
    bob, frames = window_of_frames()
    bob = copy.deepcopy(bob)
    texts = []
    for i in order:
        (event,) = bob.receive(frames[i], 1)
        assert isinstance(event, MessageReceived)
        texts.append(event.text)
    assert sorted(texts) == sorted(f"m{i}" for i in range(REPLAY_WINDOW))
    for i in order[:50]:
        with pytest.raises(ReplayedFrame):
            bob.receive(frames[i], 1)


def test_late_counter_after_the_window_slid_is_accepted_once() -> None:
    # Jumping from W-1 to 2W slides the window past W..2W-1, whose slots still
    # mark 0..W-1; a late W+5 is new and must be accepted (protocol.md s8).
    bob, records = records_by_counter()
    bob = copy.deepcopy(bob)
    for counter in range(1, REPLAY_WINDOW):
        bob.receive(records[counter][0], 1)
    bob.receive(records[2 * REPLAY_WINDOW][0], 1)

    frame, text = records[REPLAY_WINDOW + 5]
    accept(bob, frame, text)
    with pytest.raises(ReplayedFrame):
        bob.receive(frame, 1)


def _counters_over_three_windows() -> st.SearchStrategy[list[int]]:
    # Counters as lap * W + slot with few slots, so that later laps land on
    # slots an earlier lap used; the filter keeps spans of more than 2W.
    slot = st.integers(0, 15) | st.integers(0, REPLAY_WINDOW - 1)
    lap = st.integers(0, 2)
    counter = st.builds(lambda n, s: max(1, n * REPLAY_WINDOW + s), lap, slot)
    return st.lists(counter, min_size=8, max_size=120).filter(
        lambda counters: max(counters) - min(counters) > 2 * REPLAY_WINDOW
    )


@settings(max_examples=40, deadline=None)
@given(counters=_counters_over_three_windows())
def test_out_of_order_counters_over_three_windows_follow_the_window(
    counters: list[int],
) -> None:
    # The model of protocol.md s8: older than the window is stale, a counter
    # already accepted is a replay, anything else is accepted exactly once.
    bob, records = records_by_counter()
    bob = copy.deepcopy(bob)
    highest, accepted = 0, {0}
    for counter in counters:
        frame, text = records[counter]
        if counter <= highest - REPLAY_WINDOW:
            with pytest.raises(StaleFrame, match="older than the window"):
                bob.receive(frame, 1)
        elif counter in accepted:
            with pytest.raises(ReplayedFrame):
                bob.receive(frame, 1)
        else:
            accept(bob, frame, text)
            accepted.add(counter)
            highest = max(highest, counter)


def test_frame_older_than_the_window_is_rejected() -> None:
    alice, bob = established()
    frames = []
    for i in range(REPLAY_WINDOW + 1):
        alice.send_text(f"m{i}", 1)
        frames += alice.frames_to_send()
    bob.receive(frames[-1], 1)
    with pytest.raises(StaleFrame, match="older than the window"):
        bob.receive(frames[0], 1)
    assert bob.receive(frames[1], 1)


def test_nonce_reuse_is_detected_as_such() -> None:
    alice, bob = established()
    fork = copy.deepcopy(alice)
    alice.send_text("one thing", 1)
    fork.send_text("another thing", 1)
    bob.receive(alice.frames_to_send()[0], 1)
    with pytest.raises(NonceReuse) as caught:
        bob.receive(fork.frames_to_send()[0], 1)
    assert caught.value.fatal and caught.value.kind == "nonce-reuse"
    assert bob.state is SessionState.FAILED


def test_replay_is_not_mistaken_for_nonce_reuse() -> None:
    _, bob, frame = one_message()
    bob.receive(frame, 1)
    with pytest.raises(ReplayedFrame) as caught:
        bob.receive(frame, 1)
    assert not caught.value.fatal
    assert bob.state is SessionState.ESTABLISHED


def test_reflected_record_is_rejected() -> None:
    alice, _, frame = one_message()
    before = snapshot(alice)
    with pytest.raises(ReflectedFrame):
        alice.receive(frame, 1)
    assert snapshot(alice) == before


def test_sender_refuses_past_its_limit() -> None:
    alice, _ = established()
    assert alice.channel is not None
    alice.channel.sending.send_counter = REJECT_AFTER_MESSAGES - 1
    alice.send_text("last one", 1)
    with pytest.raises(CounterExhausted):
        alice.send_text("one too many", 1)
    assert alice.channel.sending.send_counter == REJECT_AFTER_MESSAGES


def test_receiver_refuses_a_counter_past_the_limit() -> None:
    _, bob, frame = one_message()
    header = encode_record_header(0, REJECT_AFTER_MESSAGES)
    with pytest.raises(MalformedFrame, match="past the limit"):
        bob.receive(header + frame[14:], 1)


@pytest.mark.parametrize("cut", [0, 1, 2, 13, 14, 29, 30, 285])
def test_truncated_record_is_refused(cut: int) -> None:
    _, bob, frame = one_message()
    with pytest.raises(MalformedFrame):
        bob.receive(frame[:cut], 1)


def test_oversized_frame_is_refused() -> None:
    _, bob, frame = one_message()
    with pytest.raises(MalformedFrame, match="too large"):
        bob.receive(frame + bytes(MAX_FRAME), 1)


def test_unknown_payload_version_is_refused_without_change() -> None:
    alice, bob = established()
    assert alice.channel is not None
    frame = alice.channel.seal(b"\x02\x02" + bytes(16) + b"future")
    before = snapshot(bob)
    with pytest.raises(UnsupportedVersion) as caught:
        bob.receive(frame, 1)
    assert not caught.value.fatal
    assert snapshot(bob) == before


def test_unknown_payload_type_is_refused() -> None:
    alice, bob = established()
    assert alice.channel is not None
    frame = alice.channel.seal(b"\x01\x7f")
    with pytest.raises(MalformedFrame, match="payload type 127"):
        bob.receive(frame, 1)


def test_text_sizes_fall_into_the_padding_buckets() -> None:
    alice, _ = established()
    for size in (1, 200, 253, 254, 1000, 5000, MAX_TEXT_BYTES):
        alice.send_text("x" * size, 1)
        (frame,) = alice.frames_to_send()
        assert len(frame) in RECORD_SIZES


def test_largest_text_arrives_intact() -> None:
    alice, bob = established()
    alice.send_text("y" * MAX_TEXT_BYTES, 1)
    (frame,) = alice.frames_to_send()
    assert len(frame) == MAX_FRAME
    (event,) = bob.receive(frame, 1)
    assert isinstance(event, MessageReceived) and len(event.text) == MAX_TEXT_BYTES


@pytest.mark.parametrize("text", ["", "z" * (MAX_TEXT_BYTES + 1)])
def test_text_out_of_bounds_is_refused(text: str) -> None:
    alice, _ = established()
    with pytest.raises(MessageTooLarge):
        alice.send_text(text, 1)


def test_receipt_comes_back_with_the_message_id() -> None:
    alice, bob = established()
    message_id = alice.send_text("ack me", 1, message_id=b"i" * 16)
    events_a, events_b = pump(alice, bob, 1)
    assert events_b == [MessageReceived(b"i" * 16, "ack me")]
    assert events_a == [ReceiptReceived(message_id)]


def test_send_before_established_is_refused() -> None:
    alice = make_session(ALICE)
    alice.start()
    with pytest.raises(NotEstablished, match="HELLO_SENT"):
        alice.send_text("too early", 0)


def test_close_reaches_the_peer() -> None:
    alice, bob = established()
    alice.close(7)
    assert alice.state is SessionState.CLOSED
    _, events_b = pump(alice, bob, 1)
    assert events_b == [PeerClosed(7)]
    assert bob.state is SessionState.CLOSED


def test_use_after_close_is_refused() -> None:
    alice, _ = established()
    alice.close()
    with pytest.raises(SessionClosed):
        alice.send_text("gone", 1)
    with pytest.raises(SessionClosed):
        alice.receive(b"\x01\x03", 1)


def test_close_by_the_responder_reaches_the_initiator() -> None:
    alice, bob = established()
    bob.close(3)
    events_a, _ = pump(alice, bob, 1)
    assert events_a == [PeerClosed(3)]
    assert alice.state is SessionState.CLOSED
