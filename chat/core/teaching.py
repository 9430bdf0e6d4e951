"""Observer events that narrate a session, for the demo and --show-handshake.

A :class:`Session` given an ``observer`` calls it with one
:class:`TeachingEvent` per step. Public values appear in hex; secrets only as
:func:`short_hash`, which shows that two sides agree without revealing
anything. The "seal" and "open" steps alone carry plaintext, padded
plaintext, nonce and ciphertext, because the demo's teaching output shows
them on purpose; nothing else in saltchat ever prints them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from chat.core.secrets import short_hash

__all__ = ["STEPS", "Observer", "TeachingEvent", "short_hash"]

#: Every step name an observer can receive, in the order they usually occur.
STEPS = (
    "identity",
    "ephemeral",
    "hello-sent",
    "hello-received",
    "shared-secret",
    "keys",
    "auth",
    "established",
    "seal",
    "open",
    "rejected",
    "rekey",
)


@dataclass(frozen=True)
class TeachingEvent:
    """One narrated step of a session.

    Attributes:
        step: One of :data:`STEPS`.
        side: The caller's label for this session (for example "alice").
        fields: Values to show: public ones in hex, secrets as short_hash().
    """

    step: str
    side: str
    fields: Mapping[str, str] = field(default_factory=dict)


Observer = Callable[[TeachingEvent], None]
