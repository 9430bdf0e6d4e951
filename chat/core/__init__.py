"""The sans-I/O protocol core of saltchat (see docs/protocol.md).

No asyncio, no sockets: the handshake, the key schedule and the secure
channel take bytes and return bytes or events.
"""

from chat.core.errors import (
    CounterExhausted,
    ForgedFrame,
    FutureEpoch,
    HandshakeFailed,
    KeyChanged,
    KeyFileError,
    LocalError,
    MalformedFrame,
    MessageTooLarge,
    NonceReuse,
    NotEstablished,
    PeerError,
    ReflectedFrame,
    ReplayedFrame,
    SaltchatError,
    SessionClosed,
    StaleFrame,
    UnexpectedFrame,
    UnsupportedVersion,
)
from chat.core.identity import (
    Identity,
    PublicIdentity,
    fingerprint_matches,
    safety_number,
)
from chat.core.rooms import RoomKeys

__all__ = [
    "CounterExhausted",
    "ForgedFrame",
    "FutureEpoch",
    "HandshakeFailed",
    "Identity",
    "KeyChanged",
    "KeyFileError",
    "LocalError",
    "MalformedFrame",
    "MessageTooLarge",
    "NonceReuse",
    "NotEstablished",
    "PeerError",
    "PublicIdentity",
    "ReflectedFrame",
    "ReplayedFrame",
    "RoomKeys",
    "SaltchatError",
    "SessionClosed",
    "StaleFrame",
    "UnexpectedFrame",
    "UnsupportedVersion",
    "fingerprint_matches",
    "safety_number",
]
