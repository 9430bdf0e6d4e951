"""Secret bytes that never show themselves in a repr, str or traceback.

PyNaCl's key objects print their raw bytes from ``str()``; everything in the
core that holds a secret keeps it in a :class:`Secret` (or a class with its
own redacting ``repr``) so that logging a session, a key or an exception
cannot leak it.
"""

from __future__ import annotations

import nacl.bindings

__all__ = ["Secret", "short_hash"]

_SHORT_HASH_PERSON = b"sc1-short-hash"


def short_hash(secret: bytes) -> str:
    """Name a secret without revealing it: 8 hex chars of a keyed-off BLAKE2b.

    A 32-bit personalised digest lets a reader see that two sides hold the
    same key, and nothing more (see protocol.md section 12).
    """
    digest = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        secret, digest_size=4, person=_SHORT_HASH_PERSON
    )
    return digest.hex()


class Secret:
    """Holds secret bytes; repr and str show only the length.

    Python cannot wipe immutable bytes, so "erasing" a secret means dropping
    every reference to it (see protocol.md section 13).
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """Return the secret bytes, for a PyNaCl call and nothing else."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"<Secret {len(self._value)} bytes redacted>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return nacl.bindings.sodium_memcmp(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("a Secret is not hashable")
