"""Hashes and the key derivation function, all BLAKE2b through PyNaCl.

See protocol.md section 1 for the notation and section 6 for the key schedule
built from these. Every label is ASCII, at most 16 bytes, zero-padded to 16
and passed as BLAKE2b's personalisation, so no two purposes share a hash.
"""

from __future__ import annotations

import struct

import nacl.bindings

__all__ = [
    "LABEL_AUTH_HI",
    "LABEL_AUTH_LO",
    "LABEL_AUTH_SIG",
    "LABEL_FINGERPRINT",
    "LABEL_HS_SECRET",
    "LABEL_KEY_HI2LO",
    "LABEL_KEY_LO2HI",
    "LABEL_REKEY",
    "LABEL_ROOM_ID",
    "LABEL_ROOM_KEY",
    "LABEL_ROOM_NAME",
    "LABEL_ROOT",
    "LABEL_TRANSCRIPT",
    "LABEL_TRANSCRIPT2",
    "h64",
    "kdf",
    "keyed_hash",
    "label",
    "u32",
]

_blake2b = nacl.bindings.crypto_generichash_blake2b_salt_personal


def label(text: str) -> bytes:
    """Return a label as BLAKE2b personalisation: ASCII, zero-padded to 16."""
    raw = text.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"label {text!r} is longer than 16 bytes")
    return raw.ljust(16, b"\x00")


# Every label of protocol version 1 (protocol.md section 6.5 lists them).
LABEL_ROOM_NAME = label("sc1-room-name")
LABEL_ROOM_ID = label("sc1-room-id")
LABEL_ROOM_KEY = label("sc1-room-key")
LABEL_FINGERPRINT = label("sc1-fingerprint")
LABEL_TRANSCRIPT = label("sc1-transcript")
LABEL_TRANSCRIPT2 = label("sc1-transcript2")
LABEL_HS_SECRET = label("sc1-hs-secret")
LABEL_AUTH_LO = label("sc1-auth-lo")
LABEL_AUTH_HI = label("sc1-auth-hi")
LABEL_AUTH_SIG = label("sc1-auth-sig")
LABEL_ROOT = label("sc1-root")
LABEL_KEY_LO2HI = label("sc1-key-lo2hi")
LABEL_KEY_HI2LO = label("sc1-key-hi2lo")
LABEL_REKEY = label("sc1-rekey")


def h64(person: bytes, data: bytes) -> bytes:
    """H64: unkeyed BLAKE2b with a 64-byte digest (protocol.md section 1)."""
    return _blake2b(data, digest_size=64, person=person)


def keyed_hash(key: bytes, person: bytes, data: bytes) -> bytes:
    """BLAKE2b-256 keyed with ``key`` (1..64 bytes), personalised."""
    return _blake2b(data, digest_size=32, key=key, person=person)


def kdf(key: bytes, person: bytes, data: bytes = b"") -> bytes:
    """KDF(key, label, data): a 32-byte key for one purpose (section 1)."""
    if len(key) != 32:
        raise ValueError("KDF keys are 32 bytes")
    return _blake2b(data, digest_size=32, key=key, person=person)


def u32(value: int) -> bytes:
    """Encode an unsigned 32-bit big-endian integer."""
    return struct.pack(">I", value)
