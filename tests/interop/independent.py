"""A second implementation of the saltchat channel, written from the spec alone.

Its purpose is to show that docs/protocol.md is enough to interoperate: it
shares no code with ``chat`` and is checked against the recorded vectors in
tests/vectors/. It covers rooms (section 3), fingerprints and safety numbers
(section 4), HELLO and AUTH (section 5), the key schedule (section 6),
records, padding and payloads, PROFILE included (section 7), and the rekey
derivation (sections 6.4 and 9).

``Peer`` is a happy-path endpoint: enough of the state machine (section 5.4)
and of rekeying (section 9.2) to replay the recorded session. It has no
candidate handshakes, timeouts, retransmissions or replay window (sections
5.5, 8, 9.2 step 5); it is a conformance probe, not a client.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.pwhash.argon2id
import nacl.signing
import nacl.utils

__all__ = [
    "AUTH_SIZE",
    "HELLO_SIZE",
    "MAX_NICKNAME_BYTES",
    "RECORD_SIZES",
    "ROLE_HI",
    "ROLE_LO",
    "AuthKeys",
    "Close",
    "Confirm",
    "Established",
    "Event",
    "Hello",
    "Payload",
    "Peer",
    "Profile",
    "ProtocolViolation",
    "Receipt",
    "Rekey",
    "Rekeyed",
    "RoomKeys",
    "Text",
    "auth_keys",
    "auth_nonce",
    "build_auth",
    "build_hello",
    "check_nickname",
    "encode_nickname",
    "encode_payload",
    "epoch_keys",
    "fingerprint",
    "h64",
    "handshake_secret",
    "is_canonical",
    "is_control",
    "kdf",
    "label",
    "open_auth",
    "open_record",
    "pad",
    "parse_hello",
    "parse_payload",
    "parse_record_header",
    "record_nonce",
    "rekey_root",
    "role_of",
    "room_keys",
    "room_secret_from_name",
    "root_key",
    "safety_number",
    "seal_record",
    "shared_secret",
    "transcript_hash",
    "transcript_hash2",
    "unpad",
]

# Frame header (section 2).
VERSION = 0x01
TYPE_HELLO = 0x01
TYPE_AUTH = 0x02
TYPE_RECORD = 0x03

# Sizes on the wire (sections 5.1, 5.2, 7.1, 7.3, 10).
KEY_SIZE = 32
TAG_SIZE = 16
HELLO_SIZE = 66
AUTH_SIZE = 114
RECORD_HEADER_SIZE = 14
MIN_PADDED = 256
MAX_PADDED = 32768
RECORD_SIZES = frozenset(
    RECORD_HEADER_SIZE + TAG_SIZE + (MIN_PADDED << i) for i in range(8)
)
MESSAGE_ID_SIZE = 16
MAX_TEXT_BYTES = 32749
MAX_NICKNAME_BYTES = 128
REJECT_AFTER_MESSAGES = 2**20

# Role bytes (section 5.3).
ROLE_LO = 0x00
ROLE_HI = 0x01

# Payload types (section 7.4).
PAYLOAD_CONFIRM = 0x01
PAYLOAD_TEXT = 0x02
PAYLOAD_RECEIPT = 0x03
PAYLOAD_REKEY = 0x04
PAYLOAD_CLOSE = 0x05
PAYLOAD_PROFILE = 0x06

# Control characters, refused in a nickname (section 7.4): Unicode's general
# category Cc, as two inclusive ranges of code points.
CONTROL_RANGES = ((0x00, 0x1F), (0x7F, 0x9F))

# Room names (section 3.2): libsodium's INTERACTIVE limits, memory in bytes.
ROOM_NAME_OPSLIMIT = 2
ROOM_NAME_MEMLIMIT = 67108864

# Unicode's White_Space property, trimmed from both ends of a room name (3.2).
WHITE_SPACE = "".join(
    chr(c)
    for c in (
        *range(0x09, 0x0E),
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    )
)

# The field prime of Curve25519, for the canonical check (section 5.1).
CURVE25519_P = 2**255 - 19

FINGERPRINT_ROUNDS = 8192
JITTER_BYTES = 2
ZERO_KEY = bytes(KEY_SIZE)


class ProtocolViolation(ValueError):
    """A frame or value that the spec says to refuse.

    Attributes:
        kind: the error kind of protocol.md section 11 ("malformed",
            "forgery", "reflection", ...).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# --- Primitives (section 1) -------------------------------------------------


def label(name: str) -> bytes:
    """Return a label: ASCII, zero-padded to 16 bytes (section 1)."""
    raw = name.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"label {name!r} is longer than 16 bytes")
    return raw.ljust(16, b"\x00")


def _blake2b(data: bytes, size: int, key: bytes, name: str) -> bytes:
    return nacl.bindings.crypto_generichash_blake2b_salt_personal(
        data, digest_size=size, key=key, person=label(name)
    )


def h64(name: str, data: bytes) -> bytes:
    """H64(label, data): unkeyed 64-byte BLAKE2b (section 1)."""
    return _blake2b(data, 64, b"", name)


def kdf(key: bytes, name: str, data: bytes = b"") -> bytes:
    """KDF and KH of section 1: keyed 32-byte BLAKE2b (key up to 64 bytes)."""
    if not 0 < len(key) <= 64:
        raise ValueError("a KDF key is 1 to 64 bytes")
    return _blake2b(data, 32, key, name)


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


# --- Rooms (section 3) ------------------------------------------------------


@dataclass(frozen=True)
class RoomKeys:
    """room_id (public) and room_key (secret, hidden from repr)."""

    room_id: bytes
    room_key: bytes = field(repr=False)


def room_keys(room_secret: bytes) -> RoomKeys:
    """Derive room_id and room_key from a 32-byte room secret (section 3)."""
    if len(room_secret) != KEY_SIZE:
        raise ValueError("a room secret is 32 bytes")
    return RoomKeys(
        room_id=kdf(room_secret, "sc1-room-id"),
        room_key=kdf(room_secret, "sc1-room-key"),
    )


def room_secret_from_name(name: str) -> bytes:
    """Derive a room secret from a typed room name (section 3.2).

    The password is UTF-8 of the name in NFC, without the White_Space code
    points at either end; an empty result is refused.
    """
    password = unicodedata.normalize("NFC", name).strip(WHITE_SPACE)
    if not password:
        raise ValueError("a room name cannot be empty or only white space")
    return nacl.pwhash.argon2id.kdf(
        KEY_SIZE,
        password.encode("utf-8"),
        label("sc1-room-name"),
        opslimit=ROOM_NAME_OPSLIMIT,
        memlimit=ROOM_NAME_MEMLIMIT,
    )


# --- Identities (section 4) -------------------------------------------------


def fingerprint(ik: bytes) -> str:
    """The 30-digit fingerprint of an identity key, in groups (section 4.3)."""
    if len(ik) != KEY_SIZE:
        raise ValueError("an identity key is 32 bytes")

    # 2^13 chained hashes make a targeted second preimage cost 2^13 times more.
    h = h64("sc1-fingerprint", b"\x01" + ik)
    for _ in range(FINGERPRINT_ROUNDS - 1):
        h = h64("sc1-fingerprint", h + ik)

    # Six 40-bit big-endian integers, each reduced to five decimal digits.
    groups = [int.from_bytes(h[5 * i : 5 * i + 5], "big") % 100000 for i in range(6)]
    return " ".join(f"{g:05d}" for g in groups)


def _digits(printed: str) -> str:
    return printed.replace(" ", "").replace("-", "")


def safety_number(fingerprint_a: str, fingerprint_b: str) -> str:
    """Both fingerprints, sorted as digit strings, in 12 groups (section 4.4)."""
    digits = "".join(sorted([_digits(fingerprint_a), _digits(fingerprint_b)]))
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


# --- Handshake frames (section 5) -------------------------------------------


def is_canonical(u: bytes) -> bool:
    """Whether a Curve25519 u-coordinate is canonical (sections 5.1, 9.2).

    RFC 7748 encodes u little-endian, so bit 255 is the top bit of the last
    byte (section 1's "big-endian" covers the protocol's own integers only).
    """
    if len(u) != KEY_SIZE:
        return False
    value = int.from_bytes(u, "little")
    return value < CURVE25519_P


@dataclass(frozen=True)
class Hello:
    """A parsed HELLO: the sender's ephemeral and the one it answers."""

    e: bytes
    echo: bytes

    @property
    def fresh(self) -> bool:
        """A fresh HELLO answers no one: its echo is 32 zero bytes."""
        return self.echo == ZERO_KEY


def _check_header(frame: bytes, frame_type: int) -> None:
    if len(frame) < 2:
        raise ProtocolViolation("malformed", "a frame has at least 2 bytes")
    if frame[0] != VERSION:
        raise ProtocolViolation("unsupported-version", f"version {frame[0]:#04x}")
    if frame[1] != frame_type:
        raise ProtocolViolation("malformed", f"frame type {frame[1]:#04x}")


def build_hello(e: bytes, echo: bytes = ZERO_KEY) -> bytes:
    """HELLO = 0x01 || 0x01 || e[32] || echo[32] (section 5.1)."""
    return bytes([VERSION, TYPE_HELLO]) + e + echo


def parse_hello(frame: bytes) -> Hello:
    """Parse a HELLO and refuse a non-canonical ephemeral first (section 5.1)."""
    _check_header(frame, TYPE_HELLO)
    if len(frame) != HELLO_SIZE:
        raise ProtocolViolation("malformed", f"HELLO of {len(frame)} bytes")
    e = frame[2:34]
    if not is_canonical(e):
        raise ProtocolViolation("malformed", "non-canonical HELLO ephemeral")
    return Hello(e=e, echo=frame[34:66])


def role_of(own_e: bytes, peer_e: bytes) -> int:
    """lo if our ephemeral is bytewise smaller, else hi (section 5.3)."""
    if own_e == peer_e:
        raise ProtocolViolation("reflection", "the peer ephemeral is our own")
    return ROLE_LO if own_e < peer_e else ROLE_HI


# --- Key schedule (section 6) -----------------------------------------------


def shared_secret(private: bytes, public: bytes) -> bytes:
    """X25519, refusing the all-zero output of a small-order point (6.1, 6.4)."""
    try:
        return nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        # libsodium fails crypto_scalarmult exactly when the output is zero.
        raise ProtocolViolation("malformed", "small-order X25519 point") from exc


def transcript_hash(room_id: bytes, e_a: bytes, e_b: bytes) -> bytes:
    """th = H64("sc1-transcript", 0x01 || room_id || e_lo || e_hi) (6.1)."""
    e_lo, e_hi = sorted([e_a, e_b])
    return h64("sc1-transcript", b"\x01" + room_id + e_lo + e_hi)


def handshake_secret(room_key: bytes, dh: bytes, th: bytes) -> bytes:
    """hs = KH(room_key, "sc1-hs-secret", dh || th) (section 6.1)."""
    return kdf(room_key, "sc1-hs-secret", dh + th)


@dataclass(frozen=True)
class AuthKeys:
    """k_auth_lo and k_auth_hi (section 6.1), hidden from repr."""

    lo: bytes = field(repr=False)
    hi: bytes = field(repr=False)

    def for_role(self, role: int) -> bytes:
        """The key the side with this role seals its AUTH with (5.2)."""
        return self.lo if role == ROLE_LO else self.hi


def auth_keys(hs: bytes) -> AuthKeys:
    """Both AUTH keys from the handshake secret (section 6.1)."""
    return AuthKeys(lo=kdf(hs, "sc1-auth-lo"), hi=kdf(hs, "sc1-auth-hi"))


def transcript_hash2(th: bytes, ik_lo: bytes, ik_hi: bytes) -> bytes:
    """th2 = H64("sc1-transcript2", th || ik_lo || ik_hi) (section 6.2).

    ik_lo is the identity of the side whose role is lo (not the bytewise
    smaller identity key).
    """
    return h64("sc1-transcript2", th + ik_lo + ik_hi)


def root_key(hs: bytes, th2: bytes) -> bytes:
    """root_0 = KDF(hs, "sc1-root", th2) (section 6.2)."""
    return kdf(hs, "sc1-root", th2)


def epoch_keys(root: bytes, epoch: int) -> tuple[bytes, bytes]:
    """(k_lo2hi, k_hi2lo) of an epoch (section 6.3)."""
    return (
        kdf(root, "sc1-key-lo2hi", _u32(epoch)),
        kdf(root, "sc1-key-hi2lo", _u32(epoch)),
    )


def rekey_root(root: bytes, dh: bytes, f_a: bytes, f_b: bytes, epoch: int) -> bytes:
    """root_{n+1} = KH(root_n, "sc1-rekey", dh' || f_lo || f_hi || u32(n+1)).

    Args:
        root: root_n.
        dh: dh' = X25519(f_priv, g).
        f_a: one side's rekey public key.
        f_b: the other side's rekey public key.
        epoch: the new epoch n+1.
    """
    f_lo, f_hi = sorted([f_a, f_b])
    return kdf(root, "sc1-rekey", dh + f_lo + f_hi + _u32(epoch))


# --- AUTH (section 5.2) -----------------------------------------------------


def auth_nonce(role: int) -> bytes:
    """nonce_auth(role) = 0x01 || 0x02 || role || 0x00*21 (section 5.2)."""
    return bytes([VERSION, TYPE_AUTH, role]) + bytes(21)


def _auth_signed(role: int, th: bytes, ik: bytes) -> bytes:
    return label("sc1-auth-sig") + bytes([role]) + th + ik


def build_auth(
    signing_key: nacl.signing.SigningKey, role: int, th: bytes, keys: AuthKeys
) -> bytes:
    """Our AUTH: our identity and signature sealed under our role's key (5.2)."""
    ik = bytes(signing_key.verify_key)
    sig = signing_key.sign(_auth_signed(role, th, ik)).signature
    sealed = nacl.bindings.crypto_secretbox_easy(
        ik + sig, auth_nonce(role), keys.for_role(role)
    )
    return bytes([VERSION, TYPE_AUTH]) + sealed


def _try_open(sealed: bytes, nonce: bytes, key: bytes) -> bytes | None:
    try:
        return nacl.bindings.crypto_secretbox_open_easy(sealed, nonce, key)
    except nacl.exceptions.CryptoError:
        return None


def open_auth(frame: bytes, own_role: int, th: bytes, keys: AuthKeys) -> bytes:
    """Open and verify the peer's AUTH; return its identity key (section 5.2).

    Steps 1 to 3 of the receiver's list; the pin check (step 4) belongs to
    whoever knows which identity to expect.
    """
    _check_header(frame, TYPE_AUTH)
    if len(frame) != AUTH_SIZE:
        raise ProtocolViolation("malformed", f"AUTH of {len(frame)} bytes")
    peer_role = 1 - own_role

    # Step 1: the peer role's key and nonce; our own ones mean a reflection.
    plain = _try_open(frame[2:], auth_nonce(peer_role), keys.for_role(peer_role))
    if plain is None:
        if _try_open(frame[2:], auth_nonce(own_role), keys.for_role(own_role)):
            raise ProtocolViolation("reflection", "our own AUTH came back")
        raise ProtocolViolation("forgery", "AUTH does not open")
    peer_ik, sig = plain[:32], plain[32:]

    # Step 2: the signature names the peer's role, th and the peer's own key.
    try:
        nacl.signing.VerifyKey(peer_ik).verify(
            _auth_signed(peer_role, th, peer_ik), sig
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise ProtocolViolation("handshake-failed", "bad AUTH signature") from exc
    return peer_ik


# --- Records (sections 7.1 to 7.3) ------------------------------------------


def record_nonce(sender_role: int, epoch: int, counter: int) -> bytes:
    """0x01 || 0x03 || sender_role || u32(epoch) || u64(counter) || 0x00*9."""
    return (
        bytes([VERSION, TYPE_RECORD, sender_role])
        + _u32(epoch)
        + _u64(counter)
        + bytes(9)
    )


def pad(plaintext: bytes) -> bytes:
    """plaintext || 0x80 || zeros, to the smallest bucket (section 7.3)."""
    size = MIN_PADDED
    while size < len(plaintext) + 1:
        size *= 2
    if size > MAX_PADDED:
        raise ValueError(f"a plaintext of {len(plaintext)} bytes does not fit")
    return plaintext + b"\x80" + bytes(size - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    """Strip trailing zeros, then exactly one 0x80 (section 7.3)."""
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise ProtocolViolation("malformed", "bad padding")
    return stripped[:-1]


def parse_record_header(frame: bytes) -> tuple[int, int]:
    """Check a record's size, version, type and counter; return (epoch, counter).

    Section 7.5 step 1, before any work.
    """
    _check_header(frame, TYPE_RECORD)
    if len(frame) not in RECORD_SIZES:
        raise ProtocolViolation("malformed", f"RECORD of {len(frame)} bytes")
    epoch = int.from_bytes(frame[2:6], "big")
    counter = int.from_bytes(frame[6:14], "big")
    if counter >= REJECT_AFTER_MESSAGES:
        raise ProtocolViolation("malformed", "counter beyond 2^20")
    return epoch, counter


def seal_record(
    key: bytes, sender_role: int, epoch: int, counter: int, plaintext: bytes
) -> bytes:
    """header || Seal(k_dir, nonce, padded) (sections 7.1 to 7.3)."""
    if counter >= REJECT_AFTER_MESSAGES:
        raise ValueError("counter exhausted: rekey or start a new handshake")
    header = bytes([VERSION, TYPE_RECORD]) + _u32(epoch) + _u64(counter)
    nonce = record_nonce(sender_role, epoch, counter)
    return header + nacl.bindings.crypto_secretbox_easy(pad(plaintext), nonce, key)


def open_record(frame: bytes, key: bytes, sender_role: int) -> bytes:
    """Open a record sealed by the side with sender_role; return the plaintext.

    Raises:
        ProtocolViolation: malformed header or padding, or forgery.
    """
    epoch, counter = parse_record_header(frame)
    plain = _try_open(frame[14:], record_nonce(sender_role, epoch, counter), key)
    if plain is None:
        raise ProtocolViolation("forgery", "record does not open")
    return unpad(plain)


# --- Payloads (section 7.4) -------------------------------------------------


@dataclass(frozen=True)
class Confirm:
    """CONFIRM: key confirmation, empty body."""


@dataclass(frozen=True)
class Text:
    """TEXT: a message and the id its receipt will name."""

    message_id: bytes
    text: str


@dataclass(frozen=True)
class Receipt:
    """RECEIPT: the id of a TEXT the peer accepted."""

    message_id: bytes


@dataclass(frozen=True)
class Rekey:
    """REKEY: the new epoch and the sender's rekey public key."""

    new_epoch: int
    public: bytes


@dataclass(frozen=True)
class Close:
    """CLOSE: one reason byte (0x00 closed, the rest reserved: 7.4)."""

    reason: int


@dataclass(frozen=True)
class Profile:
    """PROFILE: the nickname the sender claims (a label, never an identity)."""

    nickname: str


Payload = Confirm | Text | Receipt | Rekey | Close | Profile


def is_control(char: str) -> bool:
    """Whether a code point is a control character of section 7.4 (Cc)."""
    code = ord(char)
    return any(low <= code <= high for low, high in CONTROL_RANGES)


def check_nickname(raw: bytes) -> str:
    """Decode a nickname's bytes, refusing what section 7.4 forbids.

    Raises:
        ValueError: empty, longer than MAX_NICKNAME_BYTES, not well-formed
            UTF-8, or holding a control character.
    """
    # The size first: nothing is decoded from an over-long body.
    if not 1 <= len(raw) <= MAX_NICKNAME_BYTES:
        raise ValueError(
            f"a nickname is 1 to {MAX_NICKNAME_BYTES} bytes of UTF-8, not {len(raw)}"
        )

    # Strict UTF-8, as for TEXT; then no code point of category Cc.
    try:
        nickname = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("a nickname must be well-formed UTF-8") from exc
    if any(is_control(char) for char in nickname):
        raise ValueError("a nickname must not hold a control character")
    return nickname


def encode_nickname(nickname: str) -> bytes:
    """The UTF-8 of a nickname, refused unless a receiver would accept it.

    Section 7.4: a sender MUST NOT seal a nickname that is malformed.

    Raises:
        ValueError: the nickname breaks a rule of check_nickname, or holds a
            lone surrogate (which has no UTF-8 form).
    """
    try:
        raw = nickname.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("a nickname cannot hold a lone surrogate") from exc
    check_nickname(raw)
    return raw


def encode_payload(payload: Payload) -> bytes:
    """payload_version (0x01) || payload_type || body (section 7.4)."""
    match payload:
        case Confirm():
            return bytes([VERSION, PAYLOAD_CONFIRM])
        case Text(message_id, text):
            return bytes([VERSION, PAYLOAD_TEXT]) + message_id + text.encode("utf-8")
        case Receipt(message_id):
            return bytes([VERSION, PAYLOAD_RECEIPT]) + message_id
        case Rekey(new_epoch, public):
            return bytes([VERSION, PAYLOAD_REKEY]) + _u32(new_epoch) + public
        case Close(reason):
            return bytes([VERSION, PAYLOAD_CLOSE, reason])
        case Profile(nickname):
            return bytes([VERSION, PAYLOAD_PROFILE]) + encode_nickname(nickname)


def _parse_text(body: bytes) -> Text:
    text = body[MESSAGE_ID_SIZE:]
    if len(body) < MESSAGE_ID_SIZE or not 1 <= len(text) <= MAX_TEXT_BYTES:
        raise ProtocolViolation("malformed", "TEXT of a wrong length")
    try:
        return Text(message_id=body[:MESSAGE_ID_SIZE], text=text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("malformed", "TEXT is not UTF-8") from exc


def _parse_profile(body: bytes) -> Profile:
    try:
        return Profile(nickname=check_nickname(body))
    except ValueError as exc:
        raise ProtocolViolation("malformed", f"PROFILE: {exc}") from exc


def parse_payload(plaintext: bytes) -> Payload:
    """Parse an unpadded plaintext into a payload (section 7.4)."""
    if len(plaintext) < 2:
        raise ProtocolViolation("malformed", "payload shorter than its header")
    if plaintext[0] != VERSION:
        raise ProtocolViolation("unsupported-version", "payload version")
    kind, body = plaintext[1], plaintext[2:]

    # Each fixed-size body is checked to the byte; TEXT and PROFILE have their
    # own checks.
    expected = {
        PAYLOAD_CONFIRM: 0,
        PAYLOAD_RECEIPT: MESSAGE_ID_SIZE,
        PAYLOAD_REKEY: 4 + KEY_SIZE,
        PAYLOAD_CLOSE: 1,
    }
    if kind == PAYLOAD_TEXT:
        return _parse_text(body)
    if kind == PAYLOAD_PROFILE:
        return _parse_profile(body)
    if kind not in expected:
        raise ProtocolViolation("malformed", f"payload type {kind:#04x}")
    if len(body) != expected[kind]:
        raise ProtocolViolation("malformed", f"payload {kind:#04x} body length")
    if kind == PAYLOAD_CONFIRM:
        return Confirm()
    if kind == PAYLOAD_RECEIPT:
        return Receipt(message_id=body)
    if kind == PAYLOAD_REKEY:
        return Rekey(new_epoch=int.from_bytes(body[:4], "big"), public=body[4:])
    return Close(reason=body[0])


# --- A happy-path endpoint --------------------------------------------------


@dataclass(frozen=True)
class Established:
    """The peer proved it holds the same keys (section 5.6)."""

    peer: bytes
    safety_number: str


@dataclass(frozen=True)
class Rekeyed:
    """Both sides now seal in this epoch (section 9.2 step 4)."""

    epoch: int


# An accepted TEXT, RECEIPT or PROFILE is itself the event that reports it.
Event = Established | Text | Receipt | Profile | Rekeyed

RandomSource = Callable[[int], bytes]


@dataclass
class _Direction:
    """One sending or receiving key of an epoch, with its next counter."""

    key: bytes = field(repr=False)
    next_counter: int = 0


@dataclass
class _PendingRekey:
    """A rekey in progress (section 9.2): the new epoch and our f."""

    new_epoch: int
    f_priv: bytes = field(repr=False)
    f: bytes


class Peer:
    """One side of a session, following the spec's happy path.

    Frames to send queue in ``outbox``; events in ``events``. Refusals raise
    ProtocolViolation. See the module docstring for what is left out.
    """

    def __init__(
        self,
        signing_key: nacl.signing.SigningKey,
        room: RoomKeys,
        random: RandomSource = nacl.utils.random,
    ) -> None:
        """Make an idle side.

        Args:
            signing_key: our identity key pair (section 4.1).
            room: the room's keys (section 3).
            random: the source of every random byte, called with a size.
        """
        self._signing_key = signing_key
        self._ik = bytes(signing_key.verify_key)
        self._room = room
        self._random = random
        self.outbox: list[bytes] = []
        self.events: list[Event] = []
        self.jitter = 0.0
        self._e_priv: bytes | None = None
        self._e: bytes | None = None
        self._role = ROLE_LO
        self._th = b""
        self._hs: bytes | None = None
        self._auth_keys: AuthKeys | None = None
        self._peer_ik: bytes | None = None
        self._root: bytes | None = None
        self._epoch = 0
        self._send: dict[int, _Direction] = {}
        self._receive: dict[int, _Direction] = {}
        self._established = False
        self._rekey: _PendingRekey | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"Peer(ik={self._ik.hex()}, epoch={self._epoch})"

    # Handshake.

    def start(self) -> None:
        """IDLE -> HELLO_SENT: a fresh HELLO (section 5.4)."""
        self._new_ephemeral()
        assert self._e is not None
        self.outbox.append(build_hello(self._e))

    def _new_ephemeral(self) -> None:
        # The vectors draw the timeout jitter before e_priv (sections 5.5, 18).
        r = int.from_bytes(self._random(JITTER_BYTES), "big")
        self.jitter = 0.5 + r / 65535
        self._e_priv = self._random(KEY_SIZE)
        self._e = nacl.bindings.crypto_scalarmult_base(self._e_priv)

    def receive(self, frame: bytes) -> None:
        """Take in one frame from the peer (section 2 dispatches on byte 1)."""
        if len(frame) < 2:
            raise ProtocolViolation("malformed", "a frame has at least 2 bytes")
        handlers = {
            TYPE_HELLO: lambda: self._receive_hello(parse_hello(frame)),
            TYPE_AUTH: lambda: self._receive_auth(frame),
            TYPE_RECORD: lambda: self._receive_record(frame),
        }
        if frame[0] != VERSION:
            raise ProtocolViolation("unsupported-version", f"version {frame[0]:#04x}")
        if frame[1] not in handlers:
            raise ProtocolViolation("malformed", f"frame type {frame[1]:#04x}")
        handlers[frame[1]]()

    def _receive_hello(self, hello: Hello) -> None:
        # IDLE (section 5.4): a fresh HELLO is answered; one answering someone
        # else acts as start().
        if self._e is None:
            if not hello.fresh:
                self.start()
                return
            self._new_ephemeral()
            self._answer(hello.e)
        elif self._e_priv is None:
            raise ProtocolViolation("unexpected", "HELLO after pairing")

        # HELLO_SENT: pair with an answer to our HELLO; a fresh one crossed
        # ours, so answer it too; anything else is stale.
        elif hello.fresh:
            self._answer(hello.e)
        elif hello.echo != self._e:
            raise ProtocolViolation("stale", "HELLO answering another ephemeral")
        self._pair(hello.e)

    def _answer(self, peer_e: bytes) -> None:
        assert self._e is not None
        self.outbox.append(build_hello(self._e, peer_e))

    def _pair(self, peer_e: bytes) -> None:
        # Section 6.1, then queue our AUTH; e_priv goes once dh exists.
        assert self._e is not None and self._e_priv is not None
        self._role = role_of(self._e, peer_e)
        dh = shared_secret(self._e_priv, peer_e)
        self._e_priv = None
        self._th = transcript_hash(self._room.room_id, self._e, peer_e)
        self._hs = handshake_secret(self._room.room_key, dh, self._th)
        self._auth_keys = auth_keys(self._hs)
        self.outbox.append(
            build_auth(self._signing_key, self._role, self._th, self._auth_keys)
        )

    def _receive_auth(self, frame: bytes) -> None:
        if self._auth_keys is None or self._hs is None:
            raise ProtocolViolation("unexpected", "AUTH before pairing")
        peer_ik = open_auth(frame, self._role, self._th, self._auth_keys)
        if peer_ik == self._ik:
            raise ProtocolViolation("handshake-failed", "the peer uses our identity")
        self._peer_ik = peer_ik

        # Section 6.2: root_0 binds both identities, ordered by role.
        ik_lo, ik_hi = (
            (self._ik, peer_ik) if self._role == ROLE_LO else (peer_ik, self._ik)
        )
        self._root = root_key(self._hs, transcript_hash2(self._th, ik_lo, ik_hi))
        self._hs = None
        self._auth_keys = None
        self._install_epoch(0)
        self._send_payload(Confirm(), epoch=0)

    def _install_epoch(self, epoch: int) -> None:
        assert self._root is not None
        lo2hi, hi2lo = epoch_keys(self._root, epoch)
        own, peer = (lo2hi, hi2lo) if self._role == ROLE_LO else (hi2lo, lo2hi)
        self._send[epoch] = _Direction(own)
        self._receive[epoch] = _Direction(peer)

    # Records.

    def _send_payload(self, payload: Payload, epoch: int | None = None) -> None:
        # Encode and seal before taking the counter: a refused payload
        # consumes none (section 7.2).
        epoch = self._epoch if epoch is None else epoch
        direction = self._send[epoch]
        record = seal_record(
            direction.key,
            self._role,
            epoch,
            direction.next_counter,
            encode_payload(payload),
        )
        direction.next_counter += 1
        self.outbox.append(record)

    def _require_established(self) -> None:
        # Application payloads go out only once ESTABLISHED (sections 5.4, 5.6).
        if not self._established:
            raise RuntimeError("not established: wait for the peer's record")

    def send_text(self, text: str) -> bytes:
        """Send a TEXT once established; return its message id (section 7.4)."""
        self._require_established()
        message_id = self._random(MESSAGE_ID_SIZE)
        self._send_payload(Text(message_id, text))
        return message_id

    def send_profile(self, nickname: str) -> None:
        """Send a PROFILE once established; no RECEIPT answers it (section 7.4).

        Raises:
            RuntimeError: not established yet.
            ValueError: a nickname section 7.4 forbids; nothing is sealed and
                no counter is used.
        """
        self._require_established()
        self._send_payload(Profile(nickname))

    def _receive_record(self, frame: bytes) -> None:
        epoch, _ = parse_record_header(frame)
        if epoch not in self._receive:
            raise ProtocolViolation("future-epoch", f"no key for epoch {epoch}")
        payload = parse_payload(
            open_record(frame, self._receive[epoch].key, 1 - self._role)
        )

        # Any authenticated record confirms the keys (sections 5.6, 9.2 step 4).
        if not self._established:
            self._established = True
            assert self._peer_ik is not None
            self.events.append(
                Established(
                    self._peer_ik,
                    safety_number(fingerprint(self._ik), fingerprint(self._peer_ik)),
                )
            )
        if epoch == self._epoch + 1:
            self._switch(epoch)
        self._act(payload, epoch)

    def _act(self, payload: Payload, epoch: int) -> None:
        match payload:
            case Text(message_id, _):
                self.events.append(payload)
                self._send_payload(Receipt(message_id))
            case Receipt() | Profile():
                # Reported as they came; no RECEIPT answers a PROFILE (7.4).
                self.events.append(payload)
            case Rekey(new_epoch, public):
                self._receive_rekey(new_epoch, public, epoch)
            case Close():
                self.closed = True
            case Confirm():
                pass

    # Rekeying (section 9.2).

    def rekey(self) -> None:
        """Start a rekey from the current epoch n to n+1 (section 9.2 step 1)."""
        f_priv = self._random(KEY_SIZE)
        self._rekey = _PendingRekey(
            self._epoch + 1, f_priv, nacl.bindings.crypto_scalarmult_base(f_priv)
        )
        self._send_payload(Rekey(self._rekey.new_epoch, self._rekey.f))

    def _receive_rekey(self, new_epoch: int, g: bytes, epoch: int) -> None:
        if new_epoch != self._epoch + 1 or epoch != self._epoch:
            raise ProtocolViolation("malformed", "REKEY for the wrong epoch")
        if not is_canonical(g):
            raise ProtocolViolation("malformed", "non-canonical REKEY key")

        # Step 2: answer a REKEY we did not start.
        if self._rekey is None:
            self.rekey()
        assert self._rekey is not None
        if g == self._rekey.f:
            raise ProtocolViolation("malformed", "REKEY carries our own key")

        # Step 3: root_{n+1}, epoch n+1 keys, CONFIRM in epoch n+1.
        assert self._root is not None
        dh = shared_secret(self._rekey.f_priv, g)
        self._root = rekey_root(self._root, dh, self._rekey.f, g, new_epoch)
        self._install_epoch(new_epoch)
        self._send_payload(Confirm(), epoch=new_epoch)

    def _switch(self, epoch: int) -> None:
        # Step 4: seal in the new epoch; the old send key goes.
        self._send.pop(self._epoch, None)
        self._epoch = epoch
        self._rekey = None
        self.events.append(Rekeyed(epoch))
