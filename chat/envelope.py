"""The envelope: the one definition of what a client and the relay exchange.

Every WebSocket message between a client and the relay is one binary
envelope (see protocol.md, "Envelope (relay protocol)"). Byte 0 is the
envelope version, byte 1 the message type; all integers are big-endian. The
relay reads only these routing headers: a `payload` is opaque bytes that the
relay forwards byte for byte and never parses or logs.

This module is shared by the relay and the client. It imports nothing of the
cryptography: an address is a plain BLAKE2b hash of the mailbox token, which
`hashlib` computes exactly as libsodium does.

Errors::

    ValueError
    └── EnvelopeError   any malformed envelope, with a message naming what

`decode_client` and `decode_relay` raise `EnvelopeError` for any input that is
not a well-formed envelope, and never anything else.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "ADDRESS_SIZE",
    "BROADCAST",
    "DELIVER_HEADER_SIZE",
    "JOINED_MAX_MEMBERS",
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD",
    "PEER_ID_SIZE",
    "ROOM_ID_SIZE",
    "SEND_HEADER_SIZE",
    "TOKEN_SIZE",
    "VERSION",
    "Ack",
    "ClientMessage",
    "Deliver",
    "EnvelopeError",
    "Join",
    "Joined",
    "Leave",
    "MessageType",
    "Presence",
    "PresenceKind",
    "RelayMessage",
    "Result",
    "Send",
    "Status",
    "Welcome",
    "decode_client",
    "decode_relay",
    "encode",
    "encode_deliver",
    "encode_result",
    "mailbox_address",
    "split_send",
]

VERSION: Final = 0x01
"""Envelope version, byte 0 of every envelope."""

ROOM_ID_SIZE: Final = 32
ADDRESS_SIZE: Final = 32
TOKEN_SIZE: Final = 32
PEER_ID_SIZE: Final = 8

BROADCAST: Final = bytes(ADDRESS_SIZE)
"""SEND recipient meaning "every other member present in the room"."""

MAX_MESSAGE_SIZE: Final = 65536
"""Largest WebSocket message either side sends or accepts (64 KiB)."""

SEND_HEADER_SIZE: Final = 2 + ROOM_ID_SIZE + ADDRESS_SIZE + 4
DELIVER_HEADER_SIZE: Final = 2 + ROOM_ID_SIZE + ADDRESS_SIZE + 8

MAX_PAYLOAD: Final = MAX_MESSAGE_SIZE - 76
"""Default largest payload: a DELIVER carrying it still fits in 64 KiB."""

JOINED_MAX_MEMBERS: Final = (MAX_MESSAGE_SIZE - 2 - 32 - 32 - 2) // ADDRESS_SIZE
"""Most addresses a JOINED can list and still fit in one message."""

_MAILBOX_PERSON: Final = b"sc1-mailbox".ljust(16, b"\x00")


class EnvelopeError(ValueError):
    """An envelope is malformed; the message names the field that is wrong."""


class MessageType(IntEnum):
    """Byte 1 of an envelope."""

    JOIN = 0x01
    LEAVE = 0x02
    SEND = 0x03
    ACK = 0x04
    WELCOME = 0x81
    JOINED = 0x82
    PRESENCE = 0x83
    DELIVER = 0x84
    RESULT = 0x85


class PresenceKind(IntEnum):
    """What happened to a member, in a PRESENCE message."""

    JOINED = 0x01
    LEFT = 0x02


class Status(IntEnum):
    """Outcome of a SEND, in a RESULT message."""

    DELIVERED = 0x00
    STORED = 0x01
    MAILBOX_FULL = 0x10
    UNKNOWN_RECIPIENT = 0x11
    STORAGE_UNAVAILABLE = 0x12
    NOT_A_MEMBER = 0x13
    PAYLOAD_TOO_LARGE = 0x14


def mailbox_address(mailbox_token: bytes) -> bytes:
    """Derive the 32-byte routing address that a mailbox token proves.

    Args:
        mailbox_token: the member's 32-byte secret token.

    Returns:
        BLAKE2b-256 of the token, personalised with ``sc1-mailbox``.

    Raises:
        EnvelopeError: the token is not 32 bytes.
    """
    if len(mailbox_token) != TOKEN_SIZE:
        raise EnvelopeError(f"mailbox token must be {TOKEN_SIZE} bytes")
    return hashlib.blake2b(
        mailbox_token, digest_size=ADDRESS_SIZE, person=_MAILBOX_PERSON
    ).digest()


def _short(data: bytes) -> str:
    """Describe opaque bytes by length only, so reprs never leak contents."""
    return f"<{len(data)} bytes>"


# Client -> relay messages.


@dataclass(frozen=True, slots=True)
class Join:
    """Join a room, proving ownership of a mailbox with its token."""

    room_id: bytes
    mailbox_token: bytes

    def __repr__(self) -> str:
        return f"Join(room_id={self.room_id[:4].hex()}..., mailbox_token=[secret])"


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave a room."""

    room_id: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send an opaque payload to one member (`recipient`) or to `BROADCAST`."""

    room_id: bytes
    recipient: bytes
    send_id: int
    payload: bytes

    def __repr__(self) -> str:
        return (
            f"Send(room_id={self.room_id[:4].hex()}..., "
            f"recipient={self.recipient[:4].hex()}..., send_id={self.send_id}, "
            f"payload={_short(self.payload)})"
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """Delete a frame from the acknowledging member's own mailbox."""

    room_id: bytes
    frame_id: int


# Relay -> client messages.


@dataclass(frozen=True, slots=True)
class Welcome:
    """First message on every connection."""

    peer_id: bytes
    max_payload: int


@dataclass(frozen=True, slots=True)
class Joined:
    """A JOIN succeeded; `members` are the others present now."""

    room_id: bytes
    address: bytes
    members: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Presence:
    """Another member joined or left a room."""

    room_id: bytes
    kind: PresenceKind
    address: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """A payload from `sender`; a non-zero `frame_id` came from the mailbox."""

    room_id: bytes
    sender: bytes
    frame_id: int
    payload: bytes

    def __repr__(self) -> str:
        return (
            f"Deliver(room_id={self.room_id[:4].hex()}..., "
            f"sender={self.sender[:4].hex()}..., frame_id={self.frame_id}, "
            f"payload={_short(self.payload)})"
        )


@dataclass(frozen=True, slots=True)
class Result:
    """Outcome of the SEND that carried `send_id`."""

    send_id: int
    status: Status


ClientMessage = Join | Leave | Send | Ack
RelayMessage = Welcome | Joined | Presence | Deliver | Result

_HEAD = struct.Struct(">BB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U8 = struct.Struct(">B")
_DELIVER_HEAD = _HEAD.pack(VERSION, MessageType.DELIVER)


# Encoding. Every field is checked so that a caller cannot emit an envelope
# that the other side would reject.


def _check_len(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise EnvelopeError(f"{name} must be {size} bytes")


def _check_int(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise EnvelopeError(f"{name} must be an unsigned {bits}-bit integer")


def _check_payload(value: bytes) -> None:
    if not isinstance(value, bytes | bytearray) or not value:
        raise EnvelopeError("payload must be at least one byte")


def encode_deliver(
    room_id: bytes, sender: bytes, frame_id: int, payload: bytes | memoryview
) -> bytes:
    """Encode a DELIVER without building a dataclass (the relay's hot path).

    The caller (the relay) passes fields it has already checked.
    """
    return b"".join((_DELIVER_HEAD, room_id, sender, _U64.pack(frame_id), payload))


_RESULT = struct.Struct(">BBIB")


def encode_result(send_id: int, status: Status) -> bytes:
    """Encode a RESULT without building a dataclass (the relay's hot path)."""
    return _RESULT.pack(VERSION, MessageType.RESULT, send_id, status)


def encode(message: ClientMessage | RelayMessage) -> bytes:
    """Encode one message as an envelope.

    Args:
        message: any client or relay message.

    Returns:
        The envelope bytes, to send as one binary WebSocket message.

    Raises:
        EnvelopeError: a field has the wrong size or range.
    """
    match message:
        case Join(room_id, token):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            _check_len("mailbox_token", token, TOKEN_SIZE)
            return _HEAD.pack(VERSION, MessageType.JOIN) + room_id + token
        case Leave(room_id):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            return _HEAD.pack(VERSION, MessageType.LEAVE) + room_id
        case Send(room_id, recipient, send_id, payload):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            _check_len("recipient", recipient, ADDRESS_SIZE)
            _check_int("send_id", send_id, 32)
            _check_payload(payload)
            head = _HEAD.pack(VERSION, MessageType.SEND)
            return b"".join((head, room_id, recipient, _U32.pack(send_id), payload))
        case Ack(room_id, frame_id):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            _check_int("frame_id", frame_id, 64)
            return _HEAD.pack(VERSION, MessageType.ACK) + room_id + _U64.pack(frame_id)
        case _:
            return _encode_relay(message)


def _encode_relay(message: RelayMessage) -> bytes:
    match message:
        case Welcome(peer_id, max_payload):
            _check_len("peer_id", peer_id, PEER_ID_SIZE)
            _check_int("max_payload", max_payload, 32)
            head = _HEAD.pack(VERSION, MessageType.WELCOME)
            return head + peer_id + _U32.pack(max_payload)
        case Joined(room_id, address, members):
            return _encode_joined(room_id, address, members)
        case Presence(room_id, kind, address):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            _check_len("address", address, ADDRESS_SIZE)
            kind = _presence_kind(kind)
            head = _HEAD.pack(VERSION, MessageType.PRESENCE)
            return head + room_id + _U8.pack(kind) + address
        case Deliver(room_id, sender, frame_id, payload):
            _check_len("room_id", room_id, ROOM_ID_SIZE)
            _check_len("sender", sender, ADDRESS_SIZE)
            _check_int("frame_id", frame_id, 64)
            _check_payload(payload)
            return encode_deliver(room_id, sender, frame_id, payload)
        case Result(send_id, status):
            _check_int("send_id", send_id, 32)
            return encode_result(send_id, _status(status))
        case _:
            raise EnvelopeError(f"cannot encode {type(message).__name__}")


def _encode_joined(room_id: bytes, address: bytes, members: tuple[bytes, ...]) -> bytes:
    _check_len("room_id", room_id, ROOM_ID_SIZE)
    _check_len("address", address, ADDRESS_SIZE)
    if len(members) > JOINED_MAX_MEMBERS:
        raise EnvelopeError(f"JOINED lists at most {JOINED_MAX_MEMBERS} members")
    for member in members:
        _check_len("member address", member, ADDRESS_SIZE)
    head = _HEAD.pack(VERSION, MessageType.JOINED)
    return b"".join((head, room_id, address, _U16.pack(len(members)), *members))


# Decoding. Lengths are checked before any field is read; the payload is
# sliced out and never looked at.


def _header(data: object) -> tuple[bytes, int]:
    """Check the 2-byte header and return the data as bytes and its type."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise EnvelopeError("envelope must be bytes")
    if len(data) < 2:
        raise EnvelopeError("envelope shorter than its 2-byte header")
    if data[0] != VERSION:
        raise EnvelopeError(f"unknown envelope version {data[0]:#04x}")
    return data, data[1]


def _exact(name: str, data: bytes, size: int) -> None:
    if len(data) != size:
        raise EnvelopeError(f"{name} must be {size} bytes long, got {len(data)}")


def decode_client(data: object) -> ClientMessage:
    """Decode an envelope sent by a client.

    The payload of a SEND is not bounded here beyond "at least one byte": the
    transport bounds the whole message, and the relay answers a payload over
    its own limit with a RESULT rather than a protocol error.

    Args:
        data: one binary WebSocket message.

    Returns:
        The decoded message.

    Raises:
        EnvelopeError: the envelope is malformed (the message names what).
    """
    data, kind = _header(data)
    if kind == MessageType.SEND:
        if len(data) <= SEND_HEADER_SIZE:
            raise EnvelopeError("SEND shorter than its header plus one payload byte")
        (send_id,) = _U32.unpack_from(data, 66)
        return Send(data[2:34], data[34:66], send_id, data[SEND_HEADER_SIZE:])
    if kind == MessageType.JOIN:
        _exact("JOIN", data, 2 + ROOM_ID_SIZE + TOKEN_SIZE)
        return Join(data[2:34], data[34:66])
    if kind == MessageType.LEAVE:
        _exact("LEAVE", data, 2 + ROOM_ID_SIZE)
        return Leave(data[2:34])
    if kind == MessageType.ACK:
        _exact("ACK", data, 2 + ROOM_ID_SIZE + 8)
        return Ack(data[2:34], _U64.unpack_from(data, 34)[0])
    raise EnvelopeError(f"unknown client message type {kind:#04x}")


def split_send(data: bytes) -> tuple[bytes, bytes, int, memoryview] | None:
    """Read a SEND's fields without copying its payload (the relay's hot path).

    Args:
        data: one binary WebSocket message.

    Returns:
        ``(room_id, recipient, send_id, payload)`` with the payload as a view
        into `data`, or None if `data` is not a well-formed SEND (the caller
        then decodes it with `decode_client`, which names what is wrong).
    """
    if len(data) <= SEND_HEADER_SIZE or data[0] != VERSION or data[1] != 0x03:
        return None
    (send_id,) = _U32.unpack_from(data, 66)
    return data[2:34], data[34:66], send_id, memoryview(data)[SEND_HEADER_SIZE:]


def decode_relay(data: object) -> RelayMessage:
    """Decode an envelope sent by the relay.

    Args:
        data: one binary WebSocket message.

    Returns:
        The decoded message.

    Raises:
        EnvelopeError: the envelope is malformed (the message names what).
    """
    data, kind = _header(data)
    if kind == MessageType.DELIVER:
        if len(data) <= DELIVER_HEADER_SIZE:
            raise EnvelopeError("DELIVER shorter than its header plus one payload byte")
        (frame_id,) = _U64.unpack_from(data, 66)
        return Deliver(data[2:34], data[34:66], frame_id, data[DELIVER_HEADER_SIZE:])
    if kind == MessageType.RESULT:
        _exact("RESULT", data, 2 + 4 + 1)
        return Result(_U32.unpack_from(data, 2)[0], _status(data[6]))
    if kind == MessageType.WELCOME:
        _exact("WELCOME", data, 2 + PEER_ID_SIZE + 4)
        return Welcome(data[2:10], _U32.unpack_from(data, 10)[0])
    if kind == MessageType.JOINED:
        return _decode_joined(data)
    if kind == MessageType.PRESENCE:
        _exact("PRESENCE", data, 2 + ROOM_ID_SIZE + 1 + ADDRESS_SIZE)
        return Presence(data[2:34], _presence_kind(data[34]), data[35:67])
    raise EnvelopeError(f"unknown relay message type {kind:#04x}")


def _decode_joined(data: bytes) -> Joined:
    if len(data) < 68:
        raise EnvelopeError("JOINED shorter than its 68-byte header")
    (count,) = _U16.unpack_from(data, 66)
    _exact("JOINED", data, 68 + count * ADDRESS_SIZE)
    members = tuple(data[68 + i * 32 : 100 + i * 32] for i in range(count))
    return Joined(data[2:34], data[34:66], members)


def _status(value: int) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise EnvelopeError(f"unknown RESULT status {value:#04x}") from None


def _presence_kind(value: int) -> PresenceKind:
    try:
        return PresenceKind(value)
    except ValueError:
        raise EnvelopeError(f"unknown PRESENCE kind {value:#04x}") from None
