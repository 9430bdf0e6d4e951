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
    WrongPassphrase,
)
from chat.core.frames import frame_kind
from chat.core.identity import (
    Identity,
    PublicIdentity,
    fingerprint_matches,
    safety_number,
)
from chat.core.rooms import RoomKeys
from chat.core.session import (
    Established,
    Event,
    MessageReceived,
    PeerClosed,
    PeerRestarted,
    ProfileReceived,
    ReceiptReceived,
    Rekeyed,
    Session,
    SessionState,
    SessionStats,
)
from chat.core.teaching import TeachingEvent, short_hash

__all__ = [
    "CounterExhausted",
    "Established",
    "Event",
    "ForgedFrame",
    "FutureEpoch",
    "HandshakeFailed",
    "Identity",
    "KeyChanged",
    "KeyFileError",
    "LocalError",
    "MalformedFrame",
    "MessageReceived",
    "MessageTooLarge",
    "NonceReuse",
    "NotEstablished",
    "PeerClosed",
    "PeerError",
    "PeerRestarted",
    "ProfileReceived",
    "PublicIdentity",
    "ReceiptReceived",
    "ReflectedFrame",
    "Rekeyed",
    "ReplayedFrame",
    "RoomKeys",
    "SaltchatError",
    "Session",
    "SessionClosed",
    "SessionState",
    "SessionStats",
    "StaleFrame",
    "TeachingEvent",
    "UnexpectedFrame",
    "UnsupportedVersion",
    "WrongPassphrase",
    "fingerprint_matches",
    "frame_kind",
    "safety_number",
    "short_hash",
]
