"""Every bound the chat client keeps, named in one place.

The protocol's own bounds (frame sizes, rekey thresholds, the replay window)
live in `chat.core.limits`; the relay's in `server.config`. These are the
client's: how much it holds in memory for a user, how it retries, and how
much it accepts from stdin and from peers before doing any work. docs/cli.md
lists them in a table.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOSE_FLUSH_SECONDS",
    "DEDUP_IDS_PER_PEER",
    "DEFAULT_RELAY",
    "DEFAULT_ROOM",
    "HANDSHAKE_RETRY_LIMIT",
    "HANDSHAKE_STEPS_KEPT",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "HELD_FRAMES_PER_PEER",
    "MAX_COMMAND_BYTES",
    "MAX_INPUT_LINE_BYTES",
    "MAX_NAMES_PER_KEY",
    "MAX_NICK_CHARS",
    "MAX_PASSPHRASE_BYTES",
    "MAX_PEERS",
    "MAX_ROOM_NAME_BYTES",
    "MAX_STRANGERS",
    "MAX_TRUST_ENTRIES",
    "OUTBOX_MAX_BYTES",
    "OUTBOX_MAX_MESSAGES",
    "PASSPHRASE_ATTEMPTS",
    "RECONNECT_BASE_SECONDS",
    "RECONNECT_CAP_SECONDS",
    "RECONNECT_FACTOR",
    "RECONNECT_JITTER",
    "REKEY_STEPS_KEPT",
    "SEND_BURST",
    "SEND_RATE",
    "STORED_FRAME_IDS",
    "TICK_SECONDS",
    "TRUST_FILE_MAX_BYTES",
]

DEFAULT_RELAY: Final = "ws://127.0.0.1:8765"
"""Relay used when neither `--relay` nor an invite code names one."""

DEFAULT_ROOM: Final = "lobby"
"""Room name used when neither `--room` nor an invite code names one."""

OUTBOX_MAX_MESSAGES: Final = 1000
"""Messages waiting for a delivery receipt; past it, sending is refused."""

OUTBOX_MAX_BYTES: Final = 8 * 1024 * 1024
"""UTF-8 bytes of text waiting for receipts, all messages together."""

RECONNECT_BASE_SECONDS: Final = 0.25
"""First delay before reconnecting to the relay."""

RECONNECT_FACTOR: Final = 2.0
"""Each failed attempt multiplies the delay by this."""

RECONNECT_CAP_SECONDS: Final = 30.0
"""The delay never grows past this (Magic Wormhole caps at 60 s)."""

RECONNECT_JITTER: Final = 0.5
"""Fraction of the delay drawn at random, so clients do not reconnect in step."""

DEDUP_IDS_PER_PEER: Final = 4096
"""Message ids remembered per peer identity to hide resent duplicates."""

STORED_FRAME_IDS: Final = 4096
"""Ids of stored frames remembered (processed, or held until /trust), so that
a frame the relay delivers again is dropped rather than processed twice."""

HELD_FRAMES_PER_PEER: Final = 256
"""Frames kept unprocessed for a peer whose identity changed (until /trust)."""

HANDSHAKE_STEPS_KEPT: Final = 16
"""Steps of a session's handshake kept per peer for /keys (one handshake
takes about ten)."""

REKEY_STEPS_KEPT: Final = 6
"""Rekey steps kept per peer for /keys (each rekey takes two): the last few."""

HANDSHAKE_TIMEOUT_SECONDS: Final = 10.0
"""A handshake still unfinished after this is started afresh."""

HANDSHAKE_RETRY_LIMIT: Final = 3
"""Failed handshakes in a row with one peer before the client stops trying
until that peer joins again (a meddling relay must not cause a loop)."""

SEND_RATE: Final = 50.0
"""Frames per second the client sends at most, on average: half the relay's
default allowance, so that resending a full outbox after a reconnect never
gets the connection closed for flooding (which would make it resend again)."""

SEND_BURST: Final = 100
"""Frames the client may send at once before SEND_RATE applies."""

CLOSE_FLUSH_SECONDS: Final = 2.0
"""At /quit, how long the last frames (CLOSE to each peer) may take to leave."""

TICK_SECONDS: Final = 1.0
"""How often sessions are ticked (time-based rekey, handshake timeouts)."""

MAX_PEERS: Final = 64
"""Peers met in one room (a handshake with them succeeded in this run, or a
key is pinned to their address) that the client keeps a session with."""

MAX_STRANGERS: Final = 32
"""Members announced by the relay with whom no handshake has succeeded yet:
anyone who knows the room id can announce them, so they count apart from
MAX_PEERS, are never recipients, and are forgotten when they leave; past the
bound a newcomer takes the place of an absent one, else of one whose
handshake is not under way (the newest such), else of the oldest."""

MAX_NICK_CHARS: Final = 32
"""Longest nickname shown; longer claims are cut."""

MAX_ROOM_NAME_BYTES: Final = 256
"""Longest room name accepted from the command line."""

MAX_INPUT_LINE_BYTES: Final = 32768 - 1 - 2 - 16
"""Longest stdin line accepted as a message: the protocol's largest text
(see protocol.md section 7.3: padded plaintext of at most 32768 bytes)."""

MAX_COMMAND_BYTES: Final = 1024
"""Longest command line (`/verify NICK 60-DIGITS` fits easily)."""

MAX_PASSPHRASE_BYTES: Final = 1024
"""Longest identity passphrase, typed or read from --passphrase-file."""

PASSPHRASE_ATTEMPTS: Final = 3
"""Passphrases a user may type at the prompt before the client gives up."""

MAX_TRUST_ENTRIES: Final = 10000
"""Identities pinned in the trust store."""

MAX_NAMES_PER_KEY: Final = 8
"""Nicknames pinned to one identity key; further claims are shown but not
pinned, so a peer that renames itself cannot fill the trust store."""

TRUST_FILE_MAX_BYTES: Final = 4 * 1024 * 1024
"""Largest trust store file read from disk."""
