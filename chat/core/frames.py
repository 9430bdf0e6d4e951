"""Wire formats: HELLO, AUTH and RECORD frames, payloads, padding.

Pure parsing and encoding, no keys (see protocol.md sections 5.1, 5.2, 7).
Every parser checks sizes before it looks at anything else and raises only
:class:`~chat.core.errors.PeerError` subclasses on hostile input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from chat.core.errors import MalformedFrame, UnsupportedVersion
from chat.core.limits import MAX_NICKNAME_BYTES, MAX_PADDED, MIN_PADDED

__all__ = [
    "AUTH_SIZE",
    "HELLO_SIZE",
    "PAYLOAD_VERSION",
    "RECORD_HEADER_SIZE",
    "RECORD_SIZES",
    "TAG_SIZE",
    "TYPE_AUTH",
    "TYPE_HELLO",
    "TYPE_RECORD",
    "VERSION",
    "Close",
    "Confirm",
    "Hello",
    "Payload",
    "Profile",
    "Receipt",
    "Record",
    "Rekey",
    "Text",
    "encode_hello",
    "encode_payload",
    "encode_record_header",
    "frame_kind",
    "is_canonical_point",
    "nickname_problem",
    "pad",
    "padded_size",
    "parse_auth",
    "parse_hello",
    "parse_payload",
    "parse_record",
    "unpad",
]

#: Protocol version, the first byte of every frame (section 5).
VERSION = 0x01
TYPE_HELLO = 0x01
TYPE_AUTH = 0x02
TYPE_RECORD = 0x03
_KINDS = {TYPE_HELLO: "hello", TYPE_AUTH: "auth", TYPE_RECORD: "record"}

TAG_SIZE = 16
HELLO_SIZE = 2 + 32 + 32
AUTH_SIZE = 2 + TAG_SIZE + 32 + 64
RECORD_HEADER_SIZE = 2 + 4 + 8

#: The only record sizes on the wire: one per padding bucket (section 7.3).
RECORD_SIZES = frozenset(
    RECORD_HEADER_SIZE + TAG_SIZE + (MIN_PADDED << i)
    for i in range((MAX_PADDED // MIN_PADDED).bit_length())
)

#: Version of the payload inside a record (section 7.4).
PAYLOAD_VERSION = 0x01
PAYLOAD_CONFIRM = 0x01
PAYLOAD_TEXT = 0x02
PAYLOAD_RECEIPT = 0x03
PAYLOAD_REKEY = 0x04
PAYLOAD_CLOSE = 0x05
PAYLOAD_PROFILE = 0x06

_ZERO32 = bytes(32)
_PADDING = b"\x80" + bytes(MAX_PADDED - 1)
_TEXT_HEAD = bytes((PAYLOAD_VERSION, PAYLOAD_TEXT))
_P25519 = 2**255 - 19
_RECORD_HEADER = struct.Struct(">BBIQ")


def _frame_type(frame: bytes) -> int:
    """Check the version byte and return the type byte (section 5)."""
    if len(frame) < 2:
        raise MalformedFrame(f"frame of {len(frame)} bytes is too short")
    if frame[0] != VERSION:
        raise UnsupportedVersion(
            f"frame version {frame[0]} is not supported (this side speaks {VERSION})"
        )
    if frame[1] not in _KINDS:
        raise MalformedFrame(f"unknown frame type {frame[1]}")
    return frame[1]


def frame_kind(frame: bytes) -> str:
    """Name a frame's kind ("hello", "auth" or "record") for logs and the demo.

    Raises:
        MalformedFrame: too short, unknown type, or the wrong size for its type.
        UnsupportedVersion: a version other than 1.
    """
    kind = _frame_type(frame)
    if kind == TYPE_HELLO and len(frame) != HELLO_SIZE:
        raise MalformedFrame(f"HELLO is {HELLO_SIZE} bytes, not {len(frame)}")
    if kind == TYPE_AUTH and len(frame) != AUTH_SIZE:
        raise MalformedFrame(f"AUTH is {AUTH_SIZE} bytes, not {len(frame)}")
    if kind == TYPE_RECORD and len(frame) not in RECORD_SIZES:
        raise MalformedFrame(f"no record is {len(frame)} bytes long")
    return _KINDS[kind]


def is_canonical_point(point: bytes) -> bool:
    """True for a canonical X25519 u-coordinate: bit 255 clear, u < 2^255-19."""
    return int.from_bytes(point, "little") < _P25519


@dataclass(frozen=True, slots=True)
class Hello:
    """A parsed HELLO: the sender's ephemeral and the one it answers."""

    ephemeral: bytes
    echo: bytes
    frame: bytes

    @property
    def fresh(self) -> bool:
        """True when the sender starts on its own (echo is all zero)."""
        return self.echo == _ZERO32


def encode_hello(ephemeral: bytes, echo: bytes = _ZERO32) -> bytes:
    """HELLO = 0x01 || 0x01 || ephemeral[32] || echo[32] (section 5.1)."""
    return bytes((VERSION, TYPE_HELLO)) + ephemeral + echo


def parse_hello(frame: bytes) -> Hello:
    """Parse a HELLO; the ephemeral must be a canonical point (section 5.1)."""
    if frame_kind(frame) != "hello":
        raise MalformedFrame("not a HELLO frame")
    hello = Hello(frame[2:34], frame[34:66], frame)
    if not is_canonical_point(hello.ephemeral):
        raise MalformedFrame("HELLO ephemeral is not a canonical X25519 point")
    return hello


def parse_auth(frame: bytes) -> bytes:
    """Return the sealed box of an AUTH frame (section 5.2)."""
    if frame_kind(frame) != "auth":
        raise MalformedFrame("not an AUTH frame")
    return frame[2:]


class Record(NamedTuple):
    """A parsed RECORD: header fields and the sealed box (section 7.1)."""

    epoch: int
    counter: int
    box: bytes


def parse_record(frame: bytes) -> Record:
    """Split a RECORD into header fields and box, checking its size first."""
    # The common case in one test; anything else gets frame_kind's diagnosis.
    if len(frame) not in RECORD_SIZES or frame[0] != VERSION or frame[1] != TYPE_RECORD:
        frame_kind(frame)
        raise MalformedFrame("not a RECORD frame")
    _, _, epoch, counter = _RECORD_HEADER.unpack_from(frame)
    return Record(epoch, counter, frame[RECORD_HEADER_SIZE:])


def encode_record_header(epoch: int, counter: int) -> bytes:
    """Header = 0x01 || 0x03 || epoch u32 || counter u64 (section 7.1)."""
    return _RECORD_HEADER.pack(VERSION, TYPE_RECORD, epoch, counter)


def padded_size(length: int) -> int:
    """Bucket for ``length`` plaintext bytes: max(256, 2^k >= length + 1)."""
    return max(MIN_PADDED, 1 << length.bit_length())


def pad(plaintext: bytes) -> bytes:
    """plaintext || 0x80 || zeros, up to its bucket (section 7.3)."""
    # One slice of a ready-made tail and one concatenation: this runs for
    # every record sealed.
    length = len(plaintext)
    size = max(MIN_PADDED, 1 << length.bit_length())
    if size > MAX_PADDED:
        raise ValueError(f"{length} bytes do not fit in a record")
    return plaintext + _PADDING[: size - length]


def unpad(padded: bytes) -> bytes:
    """Remove 0x80 || zeros; the padding is authenticated, so no oracle."""
    # The last 0x80 must be followed by zeros only, which is the same as
    # "strip the zeros, then one 0x80", without copying the record twice.
    end = padded.rfind(0x80)
    if end < 0 or padded.count(0, end + 1) != len(padded) - end - 1:
        raise MalformedFrame("record padding is malformed")
    return padded[:end]


class Confirm(NamedTuple):
    """Key confirmation: the first record of a session or epoch."""

    # A NamedTuple needs no fields; Confirm carries none (section 7.4).


class Text(NamedTuple):
    """A chat message with its 16-byte id."""

    message_id: bytes
    text: str


class Receipt(NamedTuple):
    """Delivery receipt for a message id."""

    message_id: bytes


class Rekey(NamedTuple):
    """Proposal of epoch ``new_epoch`` with the sender's fresh X25519 key."""

    new_epoch: int
    public: bytes


class Close(NamedTuple):
    """The peer closes the session."""

    reason: int


class Profile(NamedTuple):
    """The nickname the peer claims: a label to show, never an identity."""

    nickname: str


Payload = Confirm | Text | Receipt | Rekey | Close | Profile


def _is_control(char: str) -> bool:
    # Unicode general category Cc: C0 controls, DEL and C1 controls.
    code = ord(char)
    return code <= 0x1F or 0x7F <= code <= 0x9F


def nickname_problem(nickname: str) -> str | None:
    """Say what makes ``nickname`` invalid in a PROFILE, or None (section 7.4).

    A nickname is 1 to MAX_NICKNAME_BYTES bytes of UTF-8 with no control
    character (U+0000-U+001F, U+007F-U+009F).
    """
    try:
        size = len(nickname.encode("utf-8"))
    except UnicodeEncodeError:
        return "a nickname must be valid UTF-8 (it holds a lone surrogate)"
    if not 1 <= size <= MAX_NICKNAME_BYTES:
        return f"a nickname is 1 to {MAX_NICKNAME_BYTES} bytes of UTF-8, not {size}"
    if any(_is_control(char) for char in nickname):
        return "a nickname must not contain control characters"
    return None


def encode_payload(payload: Payload) -> bytes:
    """payload_version || payload_type || body (section 7.4)."""
    if isinstance(payload, Text):
        return b"".join((_TEXT_HEAD, payload.message_id, payload.text.encode()))
    if isinstance(payload, Confirm):
        return bytes((PAYLOAD_VERSION, PAYLOAD_CONFIRM))
    if isinstance(payload, Receipt):
        return bytes((PAYLOAD_VERSION, PAYLOAD_RECEIPT)) + payload.message_id
    if isinstance(payload, Rekey):
        head = bytes((PAYLOAD_VERSION, PAYLOAD_REKEY))
        return head + struct.pack(">I", payload.new_epoch) + payload.public
    if isinstance(payload, Profile):
        head = bytes((PAYLOAD_VERSION, PAYLOAD_PROFILE))
        return head + payload.nickname.encode("utf-8")
    return bytes((PAYLOAD_VERSION, PAYLOAD_CLOSE, payload.reason))


def parse_payload(plaintext: bytes) -> Payload:
    """Parse an unpadded record plaintext; unknown versions are refused."""
    if len(plaintext) < 2:
        raise MalformedFrame("record payload is shorter than 2 bytes")
    if plaintext[0] != PAYLOAD_VERSION:
        raise UnsupportedVersion(f"payload version {plaintext[0]} is not supported")
    kind = plaintext[1]

    # TEXT first, sliced once: it is the common case.
    if kind == PAYLOAD_TEXT and len(plaintext) > 18:
        try:
            return Text(plaintext[2:18], plaintext[18:].decode())
        except UnicodeDecodeError as exc:
            raise MalformedFrame("TEXT is not valid UTF-8") from exc
    body = plaintext[2:]
    if kind == PAYLOAD_CONFIRM and not body:
        return Confirm()
    if kind == PAYLOAD_RECEIPT and len(body) == 16:
        return Receipt(body)
    if kind == PAYLOAD_REKEY and len(body) == 36:
        return Rekey(int.from_bytes(body[:4], "big"), body[4:])
    if kind == PAYLOAD_CLOSE and len(body) == 1:
        return Close(body[0])
    if kind == PAYLOAD_PROFILE and 1 <= len(body) <= MAX_NICKNAME_BYTES:
        return _parse_profile(body)
    raise MalformedFrame(f"payload type {kind} with a {len(body)}-byte body")


def _parse_profile(body: bytes) -> Profile:
    """Decode and check a PROFILE body whose size is already checked."""
    try:
        nickname = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame("PROFILE nickname is not valid UTF-8") from exc
    problem = nickname_problem(nickname)
    if problem is not None:
        raise MalformedFrame(f"PROFILE: {problem}")
    return Profile(nickname)
