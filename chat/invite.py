"""Invite codes: room secret, inviter's fingerprint and address, relay URL.

An invite code lets someone join a room and check, with no manual
comparison, that the person on the other side is the one who invited them: a
relay that substitutes keys is caught (protocol.md sections 3.1 and 5.2: the room
secret keys the handshake, and the fingerprint pins the inviter's identity).
The inviter's address in the room says where that check applies: only the
peer at that address must prove the inviter's fingerprint, so one code can
invite several people, who meet each other by trust on first use.

Layout before encoding::

    version u8 (0x02) || room_secret[32] || fingerprint u104 || address[32]
    || url_len u8 || url || checksum[4]

`fingerprint` is the inviter's 30-digit fingerprint as one big-endian
integer (13 bytes). `address` is the inviter's 32-byte mailbox address in
the room (chat.envelope.mailbox_address of its mailbox token there).
`checksum` is a 4-byte BLAKE2b of everything before it, so a mistyped code
is refused with a clear error instead of joining a different room or
expecting the inviter at another address.

Codes of version 1 (from older saltchat, without the address) are refused
with an error that says so: read with the rule above they would make every
peer prove the inviter's fingerprint, and the inviter must make a new code.

The bytes are written in Crockford's base32 (digits and capitals without I,
L, O, U), which reads aloud well and forgives the usual typos: reading is
case-insensitive, `O` is read as `0`, `I` and `L` as `1`, and dashes and
spaces are ignored. The code starts with `sc1-` and is grouped by five.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass

import nacl.encoding
import nacl.hash

from chat.transport import check_url

__all__ = ["Invite", "InviteError", "decode_invite", "encode_invite"]

_PREFIX = "sc1-"
_VERSION = 2
_OLD_VERSION = 1
_SECRET_SIZE = 32
_ADDRESS_SIZE = 32
_FINGERPRINT_DIGITS = 30
_FINGERPRINT_SIZE = 13
_CHECKSUM_SIZE = 4
_MAX_URL_BYTES = 200
_MAX_CODE_CHARS = 600
_GROUP = 5

_RFC = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans(_RFC, _CROCKFORD)
_FROM_CROCKFORD = str.maketrans(_CROCKFORD, _RFC)
_TYPOS = str.maketrans({"O": "0", "I": "1", "L": "1"})
_CHECKSUM_PERSON = b"sc1-invite".ljust(16, b"\x00")


class InviteError(ValueError):
    """An invite code is malformed, mistyped or from an unknown version."""


@dataclass(frozen=True)
class Invite:
    """What an invite code carries.

    Attributes:
        room_secret: the room's 32 random bytes (a secret: never print it).
        fingerprint: the inviter's identity fingerprint, 30 digits in groups.
        address: the inviter's 32-byte mailbox address in the room, the only
            place where a peer must prove `fingerprint`.
        relay: the relay URL the inviter uses.
    """

    room_secret: bytes
    fingerprint: str
    address: bytes
    relay: str

    def __repr__(self) -> str:
        return (
            f"Invite(room_secret=[secret], fingerprint={self.fingerprint!r}, "
            f"address={self.address.hex()!r}, relay={self.relay!r})"
        )


def _checksum(body: bytes) -> bytes:
    return nacl.hash.blake2b(
        body,
        digest_size=_CHECKSUM_SIZE,
        person=_CHECKSUM_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


def encode_invite(invite: Invite) -> str:
    """Encode an invite as a code to hand to the invitee.

    Raises:
        InviteError: a field cannot be encoded (bad secret, fingerprint, URL).
    """
    digits = invite.fingerprint.replace(" ", "")
    if len(invite.room_secret) != _SECRET_SIZE:
        raise InviteError("room secret must be 32 bytes")
    if len(digits) != _FINGERPRINT_DIGITS or not digits.isdigit():
        raise InviteError("fingerprint must be 30 digits")
    if len(invite.address) != _ADDRESS_SIZE:
        raise InviteError("inviter's address must be 32 bytes")
    url = _check_url(invite.relay).encode("ascii")

    body = b"".join(
        (
            bytes([_VERSION]),
            invite.room_secret,
            int(digits).to_bytes(_FINGERPRINT_SIZE, "big"),
            invite.address,
            bytes([len(url)]),
            url,
        )
    )
    text = base64.b32encode(body + _checksum(body)).decode("ascii").rstrip("=")
    text = text.translate(_TO_CROCKFORD)
    groups = [text[i : i + _GROUP] for i in range(0, len(text), _GROUP)]
    return _PREFIX + "-".join(groups)


def decode_invite(code: str) -> Invite:
    """Read an invite code, tolerating case, dashes, spaces and O/I/L typos.

    Raises:
        InviteError: the code is malformed or mistyped (the message says which).
    """
    if len(code) > _MAX_CODE_CHARS:
        raise InviteError("invite code is far too long; copy it again")
    text = "".join(code.split()).upper().translate(_TYPOS)
    if not text.startswith(_PREFIX.upper()):
        raise InviteError("an invite code starts with 'sc1-'; copy the whole code")
    text = text[len(_PREFIX) :].replace("-", "")
    if not text or any(char not in _CROCKFORD for char in text):
        bad = sorted({char for char in text if char not in _CROCKFORD})
        raise InviteError(f"invite code has characters it never uses: {''.join(bad)}")
    raw = _base32_decode(text)

    # The checksum first: a typo must read as a typo, not as a field error.
    if len(raw) < 1 + _SECRET_SIZE + _FINGERPRINT_SIZE + 1 + _CHECKSUM_SIZE:
        # The shortest code of any version (version 1 had no address).
        raise InviteError("invite code is too short; copy the whole code")
    body, checksum = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
    if not hmac.compare_digest(checksum, _checksum(body)):
        raise InviteError("invite code has a typo (checksum mismatch); copy it again")
    return _parse_body(body)


def _base32_decode(text: str) -> bytes:
    padded = text.translate(_FROM_CROCKFORD)
    padded += "=" * (-len(padded) % 8)
    try:
        return base64.b32decode(padded)
    except ValueError as exc:
        raise InviteError("invite code has the wrong length; copy it again") from exc


def _parse_body(body: bytes) -> Invite:
    if body[0] == _OLD_VERSION:
        raise InviteError(
            "this invite code is from an older version of saltchat (it does not "
            "name the inviter's address in the room); ask the inviter for a new "
            "code from `saltchat invite`"
        )
    if body[0] != _VERSION:
        raise InviteError(
            f"invite code version {body[0]} is not supported; update saltchat"
        )
    secret = body[1 : 1 + _SECRET_SIZE]
    offset = 1 + _SECRET_SIZE
    number = int.from_bytes(body[offset : offset + _FINGERPRINT_SIZE], "big")
    offset += _FINGERPRINT_SIZE
    address = body[offset : offset + _ADDRESS_SIZE]
    offset += _ADDRESS_SIZE
    if len(body) <= offset:
        raise InviteError("invite code is too short; copy the whole code")
    url_len = body[offset]
    url_bytes = body[offset + 1 :]
    if len(url_bytes) != url_len or number >= 10**_FINGERPRINT_DIGITS:
        raise InviteError("invite code is malformed")
    try:
        url = _check_url(url_bytes.decode("ascii"))
    except UnicodeDecodeError as exc:
        raise InviteError("invite code carries a malformed relay URL") from exc

    digits = f"{number:030d}"
    fingerprint = " ".join(digits[i : i + _GROUP] for i in range(0, 30, _GROUP))
    return Invite(secret, fingerprint, address, url)


def _check_url(url: str) -> str:
    if not url.startswith(("ws://", "wss://")) or not url.isascii():
        raise InviteError(f"relay URL must start with ws:// or wss://: {url!r}")
    if len(url) > _MAX_URL_BYTES or any(char.isspace() for char in url):
        raise InviteError("relay URL is too long or contains spaces")
    try:
        return check_url(url)
    except ValueError as exc:
        raise InviteError(f"the relay URL is malformed: {exc}") from exc
