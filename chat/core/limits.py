"""Every bound of the protocol, in one place (see protocol.md section 10).

Changing a value that appears on the wire or in the key schedule breaks
interoperability; the others are local policy.
"""

from __future__ import annotations

__all__ = [
    "CANDIDATE_INTERVAL_SECONDS",
    "HANDSHAKE_JITTER",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "KEY_FILE_MAX_BYTES",
    "MAX_FRAME",
    "MAX_NICKNAME_BYTES",
    "MAX_PADDED",
    "MAX_TEXT_BYTES",
    "MIN_PADDED",
    "PREVIOUS_EPOCH_GRACE_SECONDS",
    "RECENT_HELLOS",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_SECONDS",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_SECONDS",
    "REKEY_RETRANSMIT_SECONDS",
    "REPLAY_WINDOW",
]

#: Replay window, in counters, per epoch and direction (section 8).
REPLAY_WINDOW = 2048

#: Start a rekey after this many records sent in one epoch (section 9).
REKEY_AFTER_MESSAGES = 4096

#: Start a rekey when the epoch is this old (section 9).
REKEY_AFTER_SECONDS = 600.0

#: Never seal or accept a record with a counter at or past this (section 7.2).
REJECT_AFTER_MESSAGES = 2**20

#: Stop sending in an epoch this old and run a fresh handshake (section 9.4).
REJECT_AFTER_SECONDS = 1200.0

#: Keep the previous epoch's receive key this long after switching (section 9).
PREVIOUS_EPOCH_GRACE_SECONDS = 30.0

#: Resend REKEY and the new epoch's CONFIRM this often until the switch, and an
#: unconfirmed handshake's CONFIRM until the peer answers (sections 5.6, 9.2).
REKEY_RETRANSMIT_SECONDS = 5.0

#: Restart a handshake that has not completed after this long (section 5.5),
#: scaled by a random factor in [1 - HANDSHAKE_JITTER, 1 + HANDSHAKE_JITTER].
HANDSHAKE_TIMEOUT_SECONDS = 10.0
HANDSHAKE_JITTER = 0.5

#: At most one new candidate handshake per this many seconds (section 5.4).
CANDIDATE_INTERVAL_SECONDS = 1.0

#: Peer ephemerals remembered to ignore replayed HELLOs (section 5.4).
RECENT_HELLOS = 8

#: Smallest and largest padded plaintext (section 7.3).
MIN_PADDED = 256
MAX_PADDED = 32768

#: Largest TEXT body in bytes: padded size minus the 0x80 padding byte, the
#: payload version and type, and the 16-byte message id (section 7.4).
MAX_TEXT_BYTES = MAX_PADDED - 1 - 2 - 16

#: Largest PROFILE body: a nickname of UTF-8 bytes (section 7.4). Room for
#: 32 characters of up to 4 bytes each.
MAX_NICKNAME_BYTES = 128

#: Largest frame on the wire: 14-byte header, 16-byte tag, padded plaintext.
MAX_FRAME = 14 + 16 + MAX_PADDED

#: Largest key file we read (section 4.2).
KEY_FILE_MAX_BYTES = 4096
