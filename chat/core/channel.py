"""The record layer: sealing, opening, nonces, the replay window, epochs.

See protocol.md sections 7 (records), 8 (replay window) and 9 (epochs).
Opening is split in two so that a rejected frame changes nothing: ``open``
checks and decrypts without touching state, ``accept`` moves the window once
the session has also parsed the payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

from chat.core.errors import (
    CounterExhausted,
    ForgedFrame,
    FutureEpoch,
    MalformedFrame,
    NonceReuse,
    ReflectedFrame,
    ReplayedFrame,
    StaleFrame,
)
from chat.core.frames import encode_record_header, pad, parse_record, unpad
from chat.core.limits import (
    PREVIOUS_EPOCH_GRACE_SECONDS,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
)
from chat.core.schedule import LO, epoch_keys
from chat.core.secrets import Secret

__all__ = [
    "Channel",
    "EpochKeys",
    "Opened",
    "ReplayWindow",
    "frame_digest",
    "record_nonce",
]

_DIGEST_SIZE = 16
_NONCE_TAIL = bytes(9)
_seal = nacl.bindings.crypto_secretbox_easy
_open = nacl.bindings.crypto_secretbox_open_easy
_blake2b = nacl.bindings.crypto_generichash_blake2b_salt_personal
_DIGEST_PERSON = b"sc1-replay"


def record_nonce(header: bytes, sender_role: int) -> bytes:
    """0x01 || 0x03 || sender_role || epoch u32 || counter u64 || 9 zeros.

    Every header byte is in the nonce, so SecretBox authenticates the header
    without associated data (section 7.2).
    """
    return header[:2] + bytes((sender_role,)) + header[2:] + _NONCE_TAIL


def frame_digest(frame: bytes) -> bytes:
    """BLAKE2b-128 of a whole frame, kept per counter to tell replay apart."""
    return _blake2b(frame, digest_size=_DIGEST_SIZE, person=_DIGEST_PERSON)


class ReplayWindow:
    """RFC 6479-style bitmap of REPLAY_WINDOW bits plus a digest ring.

    Counter ``c`` lives at position ``c mod W``. A counter at or below
    ``highest - W`` is too old; positions between the old and the new highest
    are cleared when the window slides (section 8).
    """

    __slots__ = ("_bits", "_digests", "highest")

    def __init__(self) -> None:
        self.highest = -1
        self._bits = bytearray(REPLAY_WINDOW // 8)
        self._digests = bytearray(REPLAY_WINDOW * _DIGEST_SIZE)

    def seen(self, counter: int) -> bytes | None:
        """Return the digest stored for ``counter`` if it was accepted, else None.

        Raises:
            StaleFrame: ``counter`` is older than the window.
        """
        if counter > self.highest:
            return None
        if counter <= self.highest - REPLAY_WINDOW:
            raise StaleFrame(
                f"counter {counter} is older than the window "
                f"(highest {self.highest}, window {REPLAY_WINDOW})"
            )
        slot = counter % REPLAY_WINDOW
        if not self._bits[slot >> 3] & (1 << (slot & 7)):
            return None
        return bytes(self._digests[slot * _DIGEST_SIZE : (slot + 1) * _DIGEST_SIZE])

    def commit(self, counter: int, digest: bytes) -> None:
        """Mark ``counter`` accepted; call only after it authenticated."""
        if counter > self.highest:
            self._clear(self.highest + 1, counter)
            self.highest = counter
        slot = counter % REPLAY_WINDOW
        self._bits[slot >> 3] |= 1 << (slot & 7)
        self._digests[slot * _DIGEST_SIZE : (slot + 1) * _DIGEST_SIZE] = digest

    def _clear(self, first: int, last: int) -> None:
        # Slots of counters first..last held counters that just left the window.
        if last - first + 1 >= REPLAY_WINDOW:
            self._bits[:] = bytes(len(self._bits))
            return
        for counter in range(first, last + 1):
            slot = counter % REPLAY_WINDOW
            self._bits[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF


class EpochKeys:
    """Keys and counters of one epoch. The repr shows no key."""

    __slots__ = (
        "epoch",
        "expires",
        "received",
        "recv_key",
        "send_counter",
        "send_key",
        "started",
        "window",
    )

    def __init__(self, epoch: int, root: bytes, role: int, now: float) -> None:
        lo2hi, hi2lo = epoch_keys(root, epoch)
        self.epoch = epoch
        self.send_key: Secret | None = Secret(lo2hi if role == LO else hi2lo)
        self.recv_key = Secret(hi2lo if role == LO else lo2hi)
        self.send_counter = 0
        self.received = 0
        self.window = ReplayWindow()
        self.started = now
        self.expires: float | None = None

    def __repr__(self) -> str:
        return (
            f"<EpochKeys epoch={self.epoch} sent={self.send_counter} "
            f"received={self.received} keys redacted>"
        )


@dataclass(frozen=True, slots=True)
class Opened:
    """A record that authenticated, not yet accepted into the window."""

    epoch: int
    counter: int
    plaintext: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"<Opened epoch={self.epoch} counter={self.counter} redacted>"


class Channel:
    """Both directions of an established session, across epochs.

    Attributes:
        role: LO or HI, settled by the handshake.
        send_epoch: The epoch application records are sealed in.
        epochs: Epochs whose receive key we still hold, by number.
    """

    def __init__(self, role: int, root: bytes, now: float) -> None:
        self.role = role
        self.peer_role = role ^ 1
        self.root = Secret(root)
        self.send_epoch = 0
        self.epochs: dict[int, EpochKeys] = {0: EpochKeys(0, root, role, now)}

    def __repr__(self) -> str:
        return f"<Channel role={self.role} send_epoch={self.send_epoch} redacted>"

    @property
    def sending(self) -> EpochKeys:
        """The epoch application records are sealed in."""
        return self.epochs[self.send_epoch]

    def seal(self, payload: bytes, epoch: int | None = None) -> bytes:
        """Pad and seal ``payload`` as the next record of ``epoch``.

        Raises:
            CounterExhausted: the epoch's counter reached REJECT_AFTER_MESSAGES.
        """
        keys = self.epochs[self.send_epoch if epoch is None else epoch]
        if keys.send_key is None:
            raise CounterExhausted(f"epoch {keys.epoch} no longer sends")
        if keys.send_counter >= REJECT_AFTER_MESSAGES:
            raise CounterExhausted(
                f"epoch {keys.epoch} sealed {REJECT_AFTER_MESSAGES} records; "
                "rekey or start a new session"
            )

        # The counter only grows; it is consumed before sealing (section 7.2).
        counter = keys.send_counter
        keys.send_counter = counter + 1
        header = encode_record_header(keys.epoch, counter)
        nonce = record_nonce(header, self.role)
        return header + _seal(pad(payload), nonce, keys.send_key.reveal())

    def open(self, frame: bytes, now: float) -> Opened:
        """Check and decrypt a record without changing any state (section 7.5).

        Raises:
            MalformedFrame, UnsupportedVersion: size, version, type, counter.
            StaleFrame, FutureEpoch: no receive key for that epoch.
            ReplayedFrame, NonceReuse, ForgedFrame, ReflectedFrame.
        """
        record = parse_record(frame)
        if record.counter >= REJECT_AFTER_MESSAGES:
            raise MalformedFrame(f"counter {record.counter} is past the limit")
        keys = self._receiving(record.epoch, now)
        stored = keys.window.seen(record.counter)
        digest = frame_digest(frame)
        nonce = record_nonce(record.header, self.peer_role)

        # A counter already accepted: same bytes is a replay, other bytes that
        # still authenticate mean the peer sealed twice under one nonce.
        if stored is not None:
            if nacl.bindings.sodium_memcmp(stored, digest):
                raise ReplayedFrame(
                    f"record {record.epoch}/{record.counter} was already accepted"
                )
            self._decrypt(record.box, nonce, keys.recv_key)
            raise NonceReuse(
                f"two different records authenticated as {record.epoch}/"
                f"{record.counter}: the peer reused a nonce"
            )

        try:
            padded = self._decrypt(record.box, nonce, keys.recv_key)
        except ForgedFrame:
            self._check_reflection(record.header, record.box, keys)
            raise
        return Opened(record.epoch, record.counter, unpad(padded), digest)

    def accept(self, opened: Opened) -> None:
        """Move the window for a record whose payload the session accepted."""
        keys = self.epochs[opened.epoch]
        keys.window.commit(opened.counter, opened.digest)
        keys.received += 1

    def _receiving(self, epoch: int, now: float) -> EpochKeys:
        keys = self.epochs.get(epoch)
        if keys is not None and (keys.expires is None or now < keys.expires):
            return keys
        if epoch > max(self.epochs):
            raise FutureEpoch(f"no keys for epoch {epoch} yet")
        raise StaleFrame(f"epoch {epoch} is forgotten")

    @staticmethod
    def _decrypt(box: bytes, nonce: bytes, key: Secret) -> bytes:
        try:
            return _open(box, nonce, key.reveal())
        except nacl.exceptions.CryptoError as exc:
            raise ForgedFrame("record does not authenticate") from exc

    def _check_reflection(self, header: bytes, box: bytes, keys: EpochKeys) -> None:
        # Only on the failure path: does it open as one of our own records?
        if keys.send_key is None:
            return
        try:
            self._decrypt(box, record_nonce(header, self.role), keys.send_key)
        except ForgedFrame:
            return
        raise ReflectedFrame("one of our own records was sent back to us")

    def install(self, epoch: int, root: bytes, now: float) -> None:
        """Add the keys of a new epoch; the old root is dropped (section 9.2)."""
        self.root = Secret(root)
        self.epochs[epoch] = EpochKeys(epoch, root, self.role, now)

    def switch(self, now: float) -> None:
        """Send in the next epoch; keep the old receive key for the grace time."""
        old = self.epochs[self.send_epoch]
        old.send_key = None
        old.expires = now + PREVIOUS_EPOCH_GRACE_SECONDS
        for number in [n for n in self.epochs if n < old.epoch]:
            del self.epochs[number]
        self.send_epoch += 1

    def forget_expired(self, now: float) -> None:
        """Erase receive keys whose grace time has passed (section 9.3)."""
        for number, keys in list(self.epochs.items()):
            if keys.expires is not None and now >= keys.expires:
                del self.epochs[number]
