"""Long-term identities: Ed25519 key pairs, key files, fingerprints.

See protocol.md section 4. An identity is created on first use and saved as
a JSON key file with mode 0600, either in clear or sealed with SecretBox
under an Argon2id key derived from a passphrase.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id
import nacl.secret
import nacl.signing
import nacl.utils

from chat.core.errors import KeyFileError, WrongPassphrase
from chat.core.kdf import LABEL_FINGERPRINT, h64
from chat.core.limits import KEY_FILE_MAX_BYTES

__all__ = [
    "FINGERPRINT_ITERATIONS",
    "Identity",
    "PublicIdentity",
    "fingerprint_matches",
    "safety_number",
    "write_private",
]

#: BLAKE2b iterations behind each fingerprint (protocol.md section 4.3).
FINGERPRINT_ITERATIONS = 2**13

_KEY_FILE_FORMAT = "saltchat-identity-v1"

# Argon2id parameters for new key files, and the floor for files we load, so
# that an edited file cannot make the passphrase cheap to guess (section 4.2).
_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
_MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE

# sealed_seed = nonce[24] || tag[16] || sealed 32-byte seed (section 4.2).
_SEALED_SEED_BYTES = 24 + 16 + 32
_LOWER_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, eq=False)
class PublicIdentity:
    """The public half of an identity: a 32-byte Ed25519 public key.

    Equality runs in constant time; instances are hashable.
    """

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != 32:
            raise ValueError("an identity public key is 32 bytes")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicIdentity):
            return NotImplemented
        return hmac.compare_digest(self.key, other.key)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"PublicIdentity({self.key.hex()[:16]}...)"

    def fingerprint(self) -> str:
        """Return the 30-digit fingerprint in six groups of five digits."""
        return _group(_fingerprint_digits(self.key))


@functools.lru_cache(maxsize=256)
def _fingerprint_digits(key: bytes) -> str:
    """Iterate H64 2^13 times over the key and print 30 digits (section 4.3)."""
    digest = h64(LABEL_FINGERPRINT, b"\x01" + key)
    for _ in range(FINGERPRINT_ITERATIONS - 1):
        digest = h64(LABEL_FINGERPRINT, digest + key)

    # Six 5-byte big-endian integers, each reduced mod 10^5.
    chunks = (digest[i : i + 5] for i in range(0, 30, 5))
    return "".join(f"{int.from_bytes(chunk, 'big') % 100000:05d}" for chunk in chunks)


def _group(digits: str) -> str:
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def safety_number(a: PublicIdentity, b: PublicIdentity) -> str:
    """Return the 60-digit safety number of a pair, the same in either order.

    The two fingerprints are sorted as strings and concatenated (section 4.4).
    """
    halves = sorted([_fingerprint_digits(a.key), _fingerprint_digits(b.key)])
    return _group("".join(halves))


def fingerprint_matches(identity: PublicIdentity, fingerprint: str) -> bool:
    """Tell whether a fingerprint typed or pasted by a user names ``identity``.

    Spaces and dashes are ignored; the comparison runs in constant time.
    """
    typed = "".join(ch for ch in fingerprint if ch not in " -\t\n")
    expected = _fingerprint_digits(identity.key)
    return hmac.compare_digest(typed.encode(), expected.encode())


class Identity:
    """A long-term Ed25519 key pair. Its repr shows only the fingerprint."""

    __slots__ = ("_public", "_signing_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self._public = PublicIdentity(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        """Create a new random identity."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Rebuild an identity from its 32-byte seed (tests and vectors)."""
        if len(seed) != 32:
            raise ValueError("an identity seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public(self) -> PublicIdentity:
        """The public half, safe to show and share."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"<Identity {self._public.fingerprint()} secret redacted>"

    __str__ = __repr__

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key file atomically with mode 0600 (section 4.2).

        Args:
            path: Where to write; its directory must exist.
            passphrase: If given, the seed is sealed under an Argon2id key.
        """
        document = _seal_seed(bytes(self._signing_key), self._public, passphrase)
        write_private(Path(path), json.dumps(document, indent=2).encode() + b"\n")

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> Identity:
        """Read a key file written by :meth:`save`.

        Raises:
            KeyFileError: The file is missing, unreadable, corrupt, protected
                and no (or a wrong) passphrase was given.
        """
        document = _read_document(Path(path))
        public = _hex_field(document, "public", 32)
        seed = _open_seed(document, passphrase)
        identity = cls.from_seed(seed)

        # The stored public key must be the seed's: catches a spliced file.
        if not hmac.compare_digest(identity.public.key, public):
            raise KeyFileError(f"{path}: public key does not match the secret key")
        return identity

    @staticmethod
    def is_protected(path: Path) -> bool:
        """Tell whether the key file at ``path`` is sealed under a passphrase.

        Raises:
            KeyFileError: The file is missing, unreadable or not a key file.
        """
        return "argon2id" in _read_document(Path(path))

    @classmethod
    def load_or_create(cls, path: Path, passphrase: bytes | None = None) -> Identity:
        """Load the key file, or create and save a new identity if there is none."""
        if Path(path).exists():
            return cls.load(path, passphrase)
        identity = cls.generate()
        identity.save(path, passphrase)
        return identity


def _seal_seed(
    seed: bytes, public: PublicIdentity, passphrase: bytes | None
) -> dict[str, Any]:
    document: dict[str, Any] = {"format": _KEY_FILE_FORMAT, "public": public.key.hex()}
    if passphrase is None:
        document["seed"] = seed.hex()
        return document

    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    key = nacl.pwhash.argon2id.kdf(32, passphrase, salt, _OPSLIMIT, _MEMLIMIT)
    sealed = nacl.secret.SecretBox(key).encrypt(seed)
    document["argon2id"] = {
        "salt": salt.hex(),
        "opslimit": _OPSLIMIT,
        "memlimit": _MEMLIMIT,
        "sealed_seed": bytes(sealed).hex(),
    }
    return document


def _open_seed(document: dict[str, Any], passphrase: bytes | None) -> bytes:
    # Exactly one of the two (section 4.2): a file with both is ambiguous.
    if ("seed" in document) == ("argon2id" in document):
        raise KeyFileError("key file is corrupt: it needs one of seed and argon2id")
    if "seed" in document:
        return _hex_field(document, "seed", 32)
    sealed = document["argon2id"]
    if not isinstance(sealed, dict):
        raise KeyFileError("key file is corrupt: argon2id is not an object")
    return _open_sealed_seed(sealed, passphrase)


def _open_sealed_seed(sealed: dict[str, Any], passphrase: bytes | None) -> bytes:
    if passphrase is None:
        raise KeyFileError("key file is protected: a passphrase is needed")
    opslimit, memlimit = _int_field(sealed, "opslimit"), _int_field(sealed, "memlimit")
    if not (_OPSLIMIT <= opslimit <= _MAX_OPSLIMIT) or not (
        _MEMLIMIT <= memlimit <= _MAX_MEMLIMIT
    ):
        raise KeyFileError("key file is corrupt: Argon2id limits out of range")
    salt = _hex_field(sealed, "salt", nacl.pwhash.argon2id.SALTBYTES)
    box = _hex_field(sealed, "sealed_seed", _SEALED_SEED_BYTES)

    key = nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit, memlimit)
    try:
        return nacl.secret.SecretBox(key).decrypt(box)
    except nacl.exceptions.CryptoError as exc:
        raise WrongPassphrase("wrong passphrase (or the key file was altered)") from exc


def _hex_field(fields: dict[str, Any], name: str, size: int) -> bytes:
    """A field of ``size`` bytes in lowercase hex, the only form written."""
    value = fields.get(name)
    if not isinstance(value, str) or len(value) != 2 * size or set(value) - _LOWER_HEX:
        raise KeyFileError(
            f"key file is corrupt: {name} must be {2 * size} lowercase hex digits"
        )
    return bytes.fromhex(value)


def _int_field(fields: dict[str, Any], name: str) -> int:
    """A JSON integer; strings, floats and booleans are refused."""
    value = fields.get(name)
    if type(value) is not int:
        raise KeyFileError(f"key file is corrupt: {name} must be a JSON integer")
    return value


def _read_document(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(raw) > KEY_FILE_MAX_BYTES:
        raise KeyFileError(f"{path} is larger than {KEY_FILE_MAX_BYTES} bytes")

    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} is not a saltchat key file: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != _KEY_FILE_FORMAT:
        raise KeyFileError(f"{path} is not a saltchat key file")
    return document


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600.

    A temporary file in the same directory, never readable by others even
    briefly, is flushed to disk and then renamed over `path`. The client
    writes its other private files (trust store, mailbox tokens) this way too.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
