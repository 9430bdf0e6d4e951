"""Rooms: a room secret gives the id sent to the relay and a pre-shared key.

See protocol.md section 3. The relay learns ``room_id`` and nothing of
``room_key``, which is mixed into every handshake in the room.
"""

from __future__ import annotations

import unicodedata

import nacl.pwhash.argon2id
import nacl.utils

from chat.core.kdf import LABEL_ROOM_ID, LABEL_ROOM_KEY, LABEL_ROOM_NAME, kdf
from chat.core.secrets import Secret

__all__ = [
    "ROOM_NAME_MEMLIMIT",
    "ROOM_NAME_OPSLIMIT",
    "ROOM_NAME_TRIMMED",
    "RoomKeys",
    "room_name_password",
]

#: Argon2id cost of turning a room name into a room secret (section 3.2).
ROOM_NAME_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
ROOM_NAME_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

# The label "sc1-room-name" zero-padded to 16 bytes is the Argon2id salt.
_ROOM_NAME_SALT = LABEL_ROOM_NAME

#: What is trimmed from both ends of a room name: exactly the 25 code points
#: of Unicode's White_Space property (section 3.2). Named in full, not left to
#: str.strip(), whose idea of white space differs from other languages'.
ROOM_NAME_TRIMMED = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def room_name_password(name: str) -> bytes:
    """The Argon2id password for a room name (section 3.2).

    NFC first, so that "é" typed as one code point or as "e" and a combining
    accent names one room; then the White_Space code points at both ends are
    trimmed. Case and inner white space are kept.

    Raises:
        ValueError: nothing is left of the name.
    """
    trimmed = unicodedata.normalize("NFC", name).strip(ROOM_NAME_TRIMMED)
    if not trimmed:
        raise ValueError("a room name cannot be empty or only white space")
    return trimmed.encode("utf-8")


class RoomKeys:
    """The two values derived from a room secret. The repr redacts room_key.

    Attributes:
        room_id: 32 bytes that name the room to the relay.
    """

    __slots__ = ("_room_key", "room_id")

    def __init__(self, room_id: bytes, room_key: bytes) -> None:
        if len(room_id) != 32 or len(room_key) != 32:
            raise ValueError("room_id and room_key are 32 bytes each")
        self.room_id = room_id
        self._room_key = Secret(room_key)

    @property
    def room_key(self) -> Secret:
        """The pre-shared key of the room; it never leaves the client."""
        return self._room_key

    @classmethod
    def from_secret(cls, secret: bytes) -> RoomKeys:
        """Derive the keys of an invite-code room from its 32-byte secret."""
        if len(secret) != 32:
            raise ValueError("a room secret is 32 bytes")
        return cls(kdf(secret, LABEL_ROOM_ID), kdf(secret, LABEL_ROOM_KEY))

    @classmethod
    def from_name(cls, name: str) -> RoomKeys:
        """Derive the keys of a room named by a typed name (slow on purpose).

        A name has little entropy: the relay can test guesses against room_id
        offline, at one Argon2id call each (section 3.2). Prefer invite codes.
        """
        secret = nacl.pwhash.argon2id.kdf(
            32,
            room_name_password(name),
            _ROOM_NAME_SALT,
            ROOM_NAME_OPSLIMIT,
            ROOM_NAME_MEMLIMIT,
        )
        return cls.from_secret(secret)

    @staticmethod
    def new_secret() -> bytes:
        """Return a fresh 32-byte room secret for an invite code."""
        return nacl.utils.random(32)

    def __repr__(self) -> str:
        return f"<RoomKeys room_id={self.room_id.hex()[:16]}... room_key redacted>"

    __str__ = __repr__
