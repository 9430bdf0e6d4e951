"""The envelope format: round trips, exact layouts, and hostile bytes."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import envelope
from chat.envelope import (
    BROADCAST,
    MAX_PAYLOAD,
    Ack,
    Deliver,
    EnvelopeError,
    Join,
    Joined,
    Leave,
    Presence,
    PresenceKind,
    Result,
    Send,
    Status,
    Welcome,
    decode_client,
    decode_relay,
    encode,
    mailbox_address,
)

ROOM = bytes(range(32))
ADDR = bytes(range(32, 64))
TOKEN = bytes(range(64, 96))

CLIENT_MESSAGES = [
    Join(ROOM, TOKEN),
    Leave(ROOM),
    Send(ROOM, ADDR, 7, b"x"),
    Send(ROOM, BROADCAST, 2**32 - 1, b"\x00" * 1000),
    Ack(ROOM, 2**64 - 1),
]

RELAY_MESSAGES = [
    Welcome(b"12345678", MAX_PAYLOAD),
    Joined(ROOM, ADDR, ()),
    Joined(ROOM, ADDR, (TOKEN, BROADCAST)),
    Presence(ROOM, PresenceKind.JOINED, ADDR),
    Presence(ROOM, PresenceKind.LEFT, ADDR),
    Deliver(ROOM, ADDR, 0, b"payload"),
    Deliver(ROOM, ADDR, 99, b"p" * 5000),
    Result(1, Status.STORED),
    Result(2**32 - 1, Status.PAYLOAD_TOO_LARGE),
]


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_client_messages_round_trip(message: envelope.ClientMessage) -> None:
    assert decode_client(encode(message)) == message


@pytest.mark.parametrize("message", RELAY_MESSAGES, ids=repr)
def test_relay_messages_round_trip(message: envelope.RelayMessage) -> None:
    assert decode_relay(encode(message)) == message


def test_send_layout_is_exact() -> None:
    data = encode(Send(ROOM, ADDR, 0x01020304, b"hello"))
    assert data == b"\x01\x03" + ROOM + ADDR + b"\x01\x02\x03\x04" + b"hello"


def test_deliver_layout_is_exact() -> None:
    data = encode(Deliver(ROOM, ADDR, 5, b"hi"))
    assert data == b"\x01\x84" + ROOM + ADDR + (5).to_bytes(8, "big") + b"hi"


def test_joined_layout_is_exact() -> None:
    data = encode(Joined(ROOM, ADDR, (TOKEN,)))
    assert data == b"\x01\x82" + ROOM + ADDR + b"\x00\x01" + TOKEN


def test_welcome_result_presence_layouts_are_exact() -> None:
    assert encode(Welcome(b"abcdefgh", 258)) == b"\x01\x81abcdefgh\x00\x00\x01\x02"
    assert encode(Result(3, Status.MAILBOX_FULL)) == b"\x01\x85\x00\x00\x00\x03\x10"
    assert encode(Presence(ROOM, PresenceKind.LEFT, ADDR)) == (
        b"\x01\x83" + ROOM + b"\x02" + ADDR
    )


def test_max_payload_fits_in_64_kib_as_deliver() -> None:
    data = encode(Deliver(ROOM, ADDR, 1, b"a" * MAX_PAYLOAD))
    assert len(data) <= envelope.MAX_MESSAGE_SIZE
    assert MAX_PAYLOAD == 65536 - 76


def test_mailbox_address_is_personalised_blake2b() -> None:
    expected = hashlib.blake2b(
        TOKEN, digest_size=32, person=b"sc1-mailbox\x00\x00\x00\x00\x00"
    ).digest()
    assert mailbox_address(TOKEN) == expected
    assert mailbox_address(TOKEN) != hashlib.blake2b(TOKEN, digest_size=32).digest()


def test_mailbox_address_rejects_short_token() -> None:
    with pytest.raises(EnvelopeError, match="32 bytes"):
        mailbox_address(b"short")


def test_join_repr_hides_token() -> None:
    text = repr(Join(ROOM, TOKEN))
    assert TOKEN.hex() not in text
    assert TOKEN.hex()[:8] not in text
    assert "secret" in text


def test_send_and_deliver_reprs_hide_payload() -> None:
    payload = b"very secret ciphertext"
    assert "secret ciphertext" not in repr(Send(ROOM, ADDR, 1, payload))
    assert "secret ciphertext" not in repr(Deliver(ROOM, ADDR, 1, payload))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "shorter than its 2-byte header"),
        (b"\x02\x01" + ROOM + TOKEN, "unknown envelope version 0x02"),
        (b"\x01\x09", "unknown client message type 0x09"),
        (b"\x01\x01" + ROOM, "JOIN must be 66 bytes"),
        (b"\x01\x02" + ROOM + b"x", "LEAVE must be 34 bytes"),
        (b"\x01\x03" + ROOM + ADDR + b"\x00\x00\x00\x01", "SEND shorter"),
        (b"\x01\x04" + ROOM, "ACK must be 42 bytes"),
        (b"\x01\x84" + ROOM, "unknown client message type 0x84"),
    ],
)
def test_decode_client_names_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        decode_client(data)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x01\x85\x00\x00\x00\x01\x77", "unknown RESULT status 0x77"),
        (b"\x01\x83" + ROOM + b"\x03" + ADDR, "unknown PRESENCE kind 0x03"),
        (b"\x01\x82" + ROOM + ADDR + b"\x00\x02" + TOKEN, "JOINED must be 132"),
        (b"\x01\x82" + ROOM, "JOINED shorter"),
        (b"\x01\x84" + ROOM + ADDR + bytes(8), "DELIVER shorter"),
        (b"\x01\x81" + b"12345678", "WELCOME must be 14"),
        (b"\x01\x01" + ROOM + TOKEN, "unknown relay message type 0x01"),
    ],
)
def test_decode_relay_names_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(EnvelopeError, match=words):
        decode_relay(data)


def test_decode_rejects_text() -> None:
    with pytest.raises(EnvelopeError, match="must be bytes"):
        decode_client("\x01\x02" + "a" * 32)


@pytest.mark.parametrize(
    "message",
    [
        Join(ROOM[:31], TOKEN),
        Send(ROOM, ADDR, 2**32, b"x"),
        Send(ROOM, ADDR, 1, b""),
        Ack(ROOM, -1),
        Welcome(b"short", 1),
        Result(1, 0x99),  # type: ignore[arg-type]
        Presence(ROOM, 7, ADDR),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_encode_refuses_bad_fields(message: envelope.ClientMessage) -> None:
    with pytest.raises(EnvelopeError):
        encode(message)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_envelope_error(data: bytes) -> None:
    for decode in (decode_client, decode_relay):
        with contextlib.suppress(EnvelopeError):
            decode(data)


@settings(max_examples=300)
@given(st.sampled_from([1, 2, 3, 4, 0x81, 0x82, 0x83, 0x84, 0x85]), st.binary())
def test_valid_header_with_arbitrary_body_only_raises_envelope_error(
    kind: int, body: bytes
) -> None:
    data = bytes([1, kind]) + body
    for decode in (decode_client, decode_relay):
        try:
            message = decode(data)
        except EnvelopeError:
            continue
        assert encode(message) == data


def test_all_names_are_exported() -> None:
    for name in envelope.__all__:
        assert hasattr(envelope, name)
