"""Trust on first use: which identity key belongs to which peer.

A nickname is a claim and never an identity: the identity is the peer's
long-term key, proven in the handshake (protocol.md section 5.2). The trust
store pins, on first contact:

- the identity key itself, with its state (verified or unverified);
- the nickname the peer claimed, to that key;
- the peer's address in a room (its mailbox address), to that key.

The key pinned to an address is what the client expects in every later
handshake there (`pinned_at`), refused before CONFIRM when it differs
(protocol.md section 5.2, step 4). A pinned nickname arrives only inside the
channel: a later session in which it shows a different key is `changed`,
and the client raises a loud alert and holds messages to and from that peer
until the user accepts the new key (`/trust NICK`). `/verify NICK` compares
the safety number out of band and marks the key verified under the nickname
it has then; under another nickname it is unverified again.

The store is a JSON file (mode 0600) in the home; it holds public keys only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from chat.home import write_private
from chat.limits import MAX_NAMES_PER_KEY, MAX_TRUST_ENTRIES, TRUST_FILE_MAX_BYTES

__all__ = ["TrustDecision", "TrustState", "TrustStore", "TrustStoreError"]

_VERSION = 1


class TrustStoreError(ValueError):
    """The trust store file is unreadable or corrupt, or the store is full."""


class TrustState(StrEnum):
    """What the user knows about a peer's identity key."""

    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    CHANGED = "changed"


@dataclass(frozen=True)
class TrustDecision:
    """The outcome of checking a peer's key against the pins.

    Attributes:
        state: the peer's state now.
        previous_key: the key pinned before, when `state` is CHANGED.
        pinned_by: "name" or "address": which pin disagrees, when CHANGED.
    """

    state: TrustState
    previous_key: bytes | None = None
    pinned_by: str | None = None


def _check_key(value: Any) -> str:
    """A pinned key as stored: 64 hex digits (raises ValueError otherwise)."""
    if not isinstance(value, str) or len(bytes.fromhex(value)) != 32:
        raise ValueError(f"{value!r} is not an identity key")
    return value


class TrustStore:
    """Pinned identity keys, with nickname and address pins to them."""

    def __init__(self, path: Path | None, data: dict[str, Any] | None = None) -> None:
        """Create a store saved at `path` (None: kept in memory only)."""
        self.path = path
        self._identities: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}
        self._addresses: dict[str, str] = {}
        if data is not None:
            self._load_data(data)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read the store at `path`, or start an empty one if there is none.

        Raises:
            TrustStoreError: the file is too large, not JSON, or malformed.
        """
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return cls(path)
        if size > TRUST_FILE_MAX_BYTES:
            raise TrustStoreError(f"trust store {path} is larger than expected")
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustStoreError(
                f"cannot read trust store {path} ({exc}); move it aside to start "
                "again (every peer will then be new and unverified)"
            ) from exc
        return cls(path, data)

    def _load_data(self, data: Any) -> None:
        # Every field is checked: the file may have been edited by hand.
        try:
            if data.get("version") != _VERSION:
                raise TrustStoreError("unsupported trust store version")
            for key, record in data["identities"].items():
                _check_key(key)
                self._identities[key] = {
                    "verified": bool(record["verified"]),
                    "name": str(record["name"]),
                    "first_seen": float(record["first_seen"]),
                    "verified_name": str(record.get("verified_name", record["name"])),
                }
            self._names = {str(k): _check_key(v) for k, v in data["names"].items()}
            self._addresses = {
                str(k): _check_key(v) for k, v in data["addresses"].items()
            }
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TrustStoreError(f"trust store is malformed: {exc}") from exc

    def save(self) -> None:
        """Write the store (atomically, mode 0600); no-op when in memory."""
        if self.path is None:
            return
        data = {
            "version": _VERSION,
            "identities": self._identities,
            "names": self._names,
            "addresses": self._addresses,
        }
        write_private(self.path, json.dumps(data, indent=1).encode("utf-8"))

    def check(self, key: bytes, name: str, slot: str | None) -> TrustDecision:
        """Check a peer's key against the pins, pinning it on first use.

        Args:
            key: the peer's identity public key (proven by the handshake).
            name: the nickname the peer claims.
            slot: the peer's place, "<room id hex>:<address hex>", or None
                where addresses mean nothing (direct mode).

        Returns:
            CHANGED (nothing pinned) when the name or the slot is pinned to
            another key; otherwise the key's state, after pinning.

        Raises:
            TrustStoreError: the store is full.
        """
        key_hex = key.hex()
        for pinned_by, pinned in (
            ("name", self._names.get(name)),
            ("address", self._addresses.get(slot) if slot else None),
        ):
            if pinned is not None and pinned != key_hex:
                return TrustDecision(
                    TrustState.CHANGED, bytes.fromhex(pinned), pinned_by
                )

        self._pin(key_hex, name, slot)
        return TrustDecision(self.state_of(key, name))

    def accept(self, key: bytes, name: str | None, slot: str | None) -> None:
        """Pin `key` for `name` and `slot`, replacing any earlier pin (/trust).

        The accepted key starts unverified: accepting a change is not the
        same as comparing safety numbers.

        Args:
            key: the new identity key.
            name: the nickname to pin to it, or None when the peer has not
                named itself yet (its key was refused before CONFIRM).
            slot: as for `check`.
        """
        self._pin(key.hex(), name, slot, replace=True)

    def pinned_at(self, slot: str | None) -> bytes | None:
        """The identity key pinned to a peer's place, if any.

        The client expects this key in every handshake at that place, so a
        different one is refused before CONFIRM (protocol.md section 5.2).
        """
        pinned = self._addresses.get(slot) if slot else None
        return None if pinned is None else bytes.fromhex(pinned)

    def name_of(self, key: bytes) -> str | None:
        """The nickname `key` claimed when it was first pinned, if pinned."""
        record = self._identities.get(key.hex())
        return None if record is None else str(record["name"])

    def _pin(
        self, key_hex: str, name: str | None, slot: str | None, replace: bool = False
    ) -> None:
        # A key keeps at most MAX_NAMES_PER_KEY names; past it a new claim is
        # not pinned (it stays a label), so renaming cannot fill the store.
        if (
            name
            and name not in self._names
            and self._name_count(key_hex) >= MAX_NAMES_PER_KEY
        ):
            name = None
        sizes = (len(self._identities), len(self._names), len(self._addresses))
        new = (
            key_hex not in self._identities
            or bool(name and name not in self._names)
            or bool(slot and slot not in self._addresses)
        )
        if new and max(sizes) >= MAX_TRUST_ENTRIES:
            raise TrustStoreError(
                f"trust store is full ({MAX_TRUST_ENTRIES} entries); "
                "move trust.json aside to start again"
            )

        if key_hex not in self._identities:
            self._identities[key_hex] = {
                "verified": False,
                "name": name or "",
                "first_seen": time.time(),
                "verified_name": "",
            }
        if name and (replace or name not in self._names):
            self._names[name] = key_hex
        if slot and (replace or slot not in self._addresses):
            self._addresses[slot] = key_hex
        after = (len(self._identities), len(self._names), len(self._addresses))
        if replace or after != sizes:
            self.save()

    def _name_count(self, key_hex: str) -> int:
        return sum(1 for pinned in self._names.values() if pinned == key_hex)

    def mark_verified(self, key: bytes, name: str) -> None:
        """Record that the user compared the safety number for `key`, which
        then called itself `name`."""
        record = self._identities.get(key.hex())
        if record is None:
            raise TrustStoreError("that identity is not pinned yet")
        record["verified"] = True
        record["verified_name"] = name
        self.save()

    def state_of(self, key: bytes, name: str) -> TrustState:
        """The state of a pinned key under the nickname it claims now.

        Verified only under the name it had when the user verified it: the
        key is what was checked, but the user checked it as that person, so
        a new name is shown unverified until it is verified again.
        """
        record = self._identities.get(key.hex())
        if (
            record is not None
            and record["verified"]
            and record["verified_name"] == name
        ):
            return TrustState.VERIFIED
        return TrustState.UNVERIFIED
