# ruff: noqa: N818  (the exception names are a published API contract)
"""The protocol core's exceptions: one tree, local misuse apart from peer faults.

::

    SaltchatError
    ├── LocalError              our own side misused the API
    │   ├── NotEstablished      send before the session is ESTABLISHED
    │   ├── SessionClosed       use after CLOSED or FAILED
    │   ├── MessageTooLarge     text longer than MAX_TEXT_BYTES (or empty)
    │   └── CounterExhausted    REJECT_AFTER_MESSAGES reached in this epoch
    ├── PeerError               the peer or the relay misbehaved (.kind, .fatal)
    │   ├── MalformedFrame      "malformed": bytes that do not parse
    │   ├── UnsupportedVersion  "unsupported-version": a version we do not speak
    │   ├── ReplayedFrame       "replay": a frame already accepted
    │   ├── ForgedFrame         "forgery": does not authenticate
    │   ├── NonceReuse          "nonce-reuse": fatal security alert
    │   ├── ReflectedFrame      "reflection": our own frame sent back to us
    │   ├── StaleFrame          "stale": older than the window, forgotten epoch
    │   ├── FutureEpoch         "future-epoch": an epoch we have no keys for yet
    │   ├── UnexpectedFrame     "unexpected": no transition for it in this state
    │   ├── HandshakeFailed     "handshake-failed": authenticated failure, fatal
    │   └── KeyChanged          "identity-changed": not the expected peer, fatal
    └── KeyFileError            unreadable or corrupt key file, no passphrase
        └── WrongPassphrase     the passphrase does not open the key file

A non-fatal :class:`PeerError` means the frame was dropped and the session is
exactly as it was before the frame arrived. A fatal one means the session is
now FAILED: drop it and, if the user wants, start a new one. The ``kind``
strings are stable alert names (see protocol.md section 11).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from chat.core.identity import PublicIdentity

__all__ = [
    "CounterExhausted",
    "ForgedFrame",
    "FutureEpoch",
    "HandshakeFailed",
    "KeyChanged",
    "KeyFileError",
    "LocalError",
    "MalformedFrame",
    "MessageTooLarge",
    "NonceReuse",
    "NotEstablished",
    "PeerError",
    "ReflectedFrame",
    "ReplayedFrame",
    "SaltchatError",
    "SessionClosed",
    "StaleFrame",
    "UnexpectedFrame",
    "UnsupportedVersion",
    "WrongPassphrase",
]


class SaltchatError(Exception):
    """Root of every error the protocol core raises."""


class LocalError(SaltchatError):
    """Our own side called the API in a way it does not allow."""


class NotEstablished(LocalError):
    """Application data was sent before the session is ESTABLISHED."""


class SessionClosed(LocalError):
    """The session was used after it reached CLOSED or FAILED."""


class MessageTooLarge(LocalError):
    """The text does not fit in one record (or is empty)."""


class CounterExhausted(LocalError):
    """The send counter of this epoch reached REJECT_AFTER_MESSAGES.

    The channel refuses to seal rather than reuse a nonce; rekey or start a
    new session.
    """


class PeerError(SaltchatError):
    """The peer or the relay sent something the protocol does not accept.

    Attributes:
        kind: Stable alert name, used for statistics and logs.
        fatal: True when the session is now FAILED and must be dropped.
    """

    default_kind: ClassVar[str] = "peer-error"
    default_fatal: ClassVar[bool] = False

    def __init__(self, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(message)
        self.kind: str = self.default_kind
        self.fatal: bool = self.default_fatal if fatal is None else fatal


class MalformedFrame(PeerError):
    """Bytes that do not parse as any frame or payload of this version."""

    default_kind = "malformed"


class UnsupportedVersion(PeerError):
    """A frame or payload version this implementation does not speak."""

    default_kind = "unsupported-version"


class ReplayedFrame(PeerError):
    """A frame identical to one already accepted."""

    default_kind = "replay"


class ForgedFrame(PeerError):
    """A frame that does not authenticate under the keys it claims."""

    default_kind = "forgery"


class NonceReuse(PeerError):
    """Two different frames authenticated under the same nonce.

    Only a sender that sealed twice under one counter can cause this; it is a
    security alert and always fatal.
    """

    default_kind = "nonce-reuse"
    default_fatal = True


class ReflectedFrame(PeerError):
    """One of our own frames was sent back to us."""

    default_kind = "reflection"


class StaleFrame(PeerError):
    """Older than the replay window, from a forgotten epoch or handshake."""

    default_kind = "stale"


class FutureEpoch(PeerError):
    """A record from an epoch whose keys we do not have yet; dropped."""

    default_kind = "future-epoch"


class UnexpectedFrame(PeerError):
    """A frame that the session has no transition for in its current state."""

    default_kind = "unexpected"


class HandshakeFailed(PeerError):
    """An authenticated handshake failure: bad signature, own identity, bad DH."""

    default_kind = "handshake-failed"
    default_fatal = True


class KeyChanged(PeerError):
    """The peer proved an identity other than the one expected for it.

    Attributes:
        peer: The identity the peer proved. Show it to the user; if they trust
            it, start a new session expecting it.
    """

    default_kind = "identity-changed"
    default_fatal = True

    def __init__(self, message: str, *, peer: PublicIdentity) -> None:
        super().__init__(message)
        self.peer = peer


class KeyFileError(SaltchatError):
    """The key file cannot be read, is corrupt, or the passphrase is wrong."""


class WrongPassphrase(KeyFileError):
    """The passphrase does not open the key file (or the file was altered).

    Ask again; a user interface tells this apart from a corrupt file.
    """
