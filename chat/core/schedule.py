"""The key schedule: from X25519 outputs to every key of a session.

Each function is one line of protocol.md section 6; the labels are in
:mod:`chat.core.kdf`. Roles: ``LO`` (0x00) is the side whose ephemeral public
key is bytewise smaller, ``HI`` (0x01) the other (section 5.3).
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

from chat.core import kdf as k
from chat.core.errors import MalformedFrame

__all__ = [
    "HI",
    "LO",
    "auth_keys",
    "auth_nonce",
    "auth_signed_message",
    "epoch_keys",
    "handshake_secret",
    "rekey_root",
    "root_key",
    "transcript_hash",
    "transcript_hash2",
    "x25519",
]

LO = 0x00
HI = 0x01

_ALL_ZERO = bytes(32)


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519 through PyNaCl, refusing small-order points (section 6.1).

    libsodium reports an all-zero result as an error; both paths end here.

    Raises:
        MalformedFrame: ``public`` is a small-order point. Callers decide
            whether that is fatal (REKEY) or a dropped frame (HELLO).
    """
    try:
        shared = nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        raise MalformedFrame("peer key is a small-order X25519 point") from exc
    if nacl.bindings.sodium_memcmp(shared, _ALL_ZERO):
        raise MalformedFrame("peer key is a small-order X25519 point")
    return shared


def transcript_hash(room_id: bytes, e_lo: bytes, e_hi: bytes) -> bytes:
    """th = H64("sc1-transcript", 0x01 || room_id || e_lo || e_hi)."""
    return k.h64(k.LABEL_TRANSCRIPT, b"\x01" + room_id + e_lo + e_hi)


def handshake_secret(room_key: bytes, shared: bytes, th: bytes) -> bytes:
    """hs = BLAKE2b-256(key=room_key, person="sc1-hs-secret", dh || th)."""
    return k.keyed_hash(room_key, k.LABEL_HS_SECRET, shared + th)


def auth_keys(hs: bytes) -> tuple[bytes, bytes]:
    """(k_auth_lo, k_auth_hi): one single-use AUTH key per role."""
    return k.kdf(hs, k.LABEL_AUTH_LO), k.kdf(hs, k.LABEL_AUTH_HI)


def auth_nonce(role: int) -> bytes:
    """0x01 || 0x02 || role || 21 zero bytes (each k_auth seals once)."""
    return bytes((0x01, 0x02, role)) + bytes(21)


def auth_signed_message(role: int, th: bytes, identity_key: bytes) -> bytes:
    """What AUTH signs: "sc1-auth-sig" padded to 16 || role || th || ik."""
    return k.LABEL_AUTH_SIG + bytes((role,)) + th + identity_key


def transcript_hash2(th: bytes, ik_lo: bytes, ik_hi: bytes) -> bytes:
    """th2 = H64("sc1-transcript2", th || ik_lo || ik_hi)."""
    return k.h64(k.LABEL_TRANSCRIPT2, th + ik_lo + ik_hi)


def root_key(hs: bytes, th2: bytes) -> bytes:
    """root_0 = KDF(hs, "sc1-root", th2)."""
    return k.kdf(hs, k.LABEL_ROOT, th2)


def epoch_keys(root: bytes, epoch: int) -> tuple[bytes, bytes]:
    """(k_lo2hi, k_hi2lo) of epoch ``epoch``, one key per direction."""
    n = k.u32(epoch)
    return k.kdf(root, k.LABEL_KEY_LO2HI, n), k.kdf(root, k.LABEL_KEY_HI2LO, n)


def rekey_root(
    root: bytes, shared: bytes, f_lo: bytes, f_hi: bytes, new_epoch: int
) -> bytes:
    """root_{n+1} = BLAKE2b-256(key=root_n, "sc1-rekey", dh' || f_lo || f_hi || n+1)."""
    return k.keyed_hash(root, k.LABEL_REKEY, shared + f_lo + f_hi + k.u32(new_epoch))
