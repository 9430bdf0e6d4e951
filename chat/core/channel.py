"""The record layer: sealing, opening, nonces, the replay window, epochs.

See protocol.md sections 7 (records), 8 (replay window) and 9 (epochs).
Opening is split in two so that a rejected frame changes nothing: ``open``
checks and decrypts without touching state, ``accept`` moves the window once
the session has also parsed the payload.
"""

from __future__ import annotations

import struct

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
from chat.core.frames import (
    RECORD_HEADER_SIZE,
    RECORD_SIZES,
    TYPE_RECORD,
    VERSION,
    pad,
    parse_record,
    unpad,
)
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
    "record_nonce",
]

_TAG_SIZE = 16
_NONCE = struct.Struct(">BBBIQ9x")
_HEADER = struct.Struct(">BBIQ")
_pack_nonce = _NONCE.pack
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_seal = nacl.bindings.crypto_secretbox_easy
_open = nacl.bindings.crypto_secretbox_open_easy


def record_nonce(epoch: int, counter: int, sender_role: int) -> bytes:
    """0x01 || 0x03 || sender_role || epoch u32 || counter u64 || 9 zeros.

    Every header byte is in the nonce, so SecretBox authenticates the header
    without associated data (section 7.2).
    """
    return _pack_nonce(VERSION, TYPE_RECORD, sender_role, epoch, counter)


class ReplayWindow:
    """RFC 6479-style bitmap of REPLAY_WINDOW bits plus a ring of tags.

    Counter ``c`` lives at position ``c mod W``. A counter at or below
    ``highest - W`` is too old; positions between the old and the new highest
    are cleared when the window slides (section 8).
    """

    __slots__ = ("_bits", "_tags", "highest")

    def __init__(self) -> None:
        self.highest = -1
        self._bits = bytearray(REPLAY_WINDOW // 8)
        self._tags = bytearray(REPLAY_WINDOW * _TAG_SIZE)

    def seen(self, counter: int) -> bytes | None:
        """Return the tag stored for ``counter`` if it was accepted, else None.

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
        return bytes(self._tags[slot * _TAG_SIZE : (slot + 1) * _TAG_SIZE])

    def commit(self, counter: int, tag: bytes) -> None:
        """Mark ``counter`` accepted; call only after it authenticated."""
        # Sliding forward frees the slots of the counters skipped over; the
        # slot of ``counter`` itself is overwritten below.
        highest = self.highest
        if counter > highest:
            if counter > highest + 1:
                self._clear(highest + 1, counter - 1)
            self.highest = counter
        slot = counter % REPLAY_WINDOW
        self._bits[slot >> 3] |= 1 << (slot & 7)
        start = slot * _TAG_SIZE
        self._tags[start : start + _TAG_SIZE] = tag

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


class Opened:
    """A record that authenticated, not yet accepted into the window.

    A plain class with slots: one is made for every record received, and
    that is cheaper than a named tuple.
    """

    __slots__ = ("counter", "epoch", "plaintext", "tag")

    def __init__(self, epoch: int, counter: int, plaintext: bytes, tag: bytes) -> None:
        self.epoch = epoch
        self.counter = counter
        self.plaintext = plaintext
        self.tag = tag

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
        send_key, counter = keys.send_key, keys.send_counter
        if send_key is None:
            raise CounterExhausted(f"epoch {keys.epoch} no longer sends")
        if counter >= REJECT_AFTER_MESSAGES:
            raise CounterExhausted(
                f"epoch {keys.epoch} sealed {REJECT_AFTER_MESSAGES} records; "
                "rekey or start a new session"
            )

        # The counter only grows; it is consumed before sealing (section 7.2).
        # The struct calls are inlined: this is the hot path of every message.
        keys.send_counter = counter + 1
        nonce = _pack_nonce(VERSION, TYPE_RECORD, self.role, keys.epoch, counter)
        box = _seal(pad(payload), nonce, send_key.reveal())
        return _pack_header(VERSION, TYPE_RECORD, keys.epoch, counter) + box

    def open(self, frame: bytes, now: float) -> Opened:
        """Check and decrypt a record without changing any state (section 7.5).

        Raises:
            MalformedFrame, UnsupportedVersion: size, version, type, counter.
            StaleFrame, FutureEpoch: no receive key for that epoch.
            ReplayedFrame, NonceReuse, ForgedFrame, ReflectedFrame.
        """
        # Size, version and type in one test (section 7.5, step 1); on a fault,
        # parse_record raises the error that names it.
        size = len(frame)
        if size not in RECORD_SIZES or frame[0] != VERSION or frame[1] != TYPE_RECORD:
            parse_record(frame)
            raise MalformedFrame("not a RECORD frame")
        _, _, epoch, counter = _unpack_header(frame)
        if counter >= REJECT_AFTER_MESSAGES:
            raise MalformedFrame(f"counter {counter} is past the limit")
        keys = self.epochs.get(epoch)
        if keys is None or (keys.expires is not None and now >= keys.expires):
            keys = self._receiving(epoch, now)
        window = keys.window
        stored = None if counter > window.highest else window.seen(counter)
        nonce = _pack_nonce(VERSION, TYPE_RECORD, self.peer_role, epoch, counter)
        box = frame[RECORD_HEADER_SIZE:]
        if stored is not None:
            self._seen_before(box, nonce, keys, stored, f"{epoch}/{counter}")

        try:
            padded = _open(box, nonce, keys.recv_key.reveal())
        except nacl.exceptions.CryptoError as exc:
            self._check_reflection(epoch, counter, box, keys)
            raise ForgedFrame("record does not authenticate") from exc
        return Opened(epoch, counter, unpad(padded), box[:_TAG_SIZE])

    def _seen_before(
        self, box: bytes, nonce: bytes, keys: EpochKeys, stored: bytes, name: str
    ) -> None:
        """Classify a record whose counter was already accepted (section 8).

        The ring holds the tag of the accepted record. A frame that opens
        with the same tag is that record again; one that opens with another
        tag is a second plaintext sealed under the same nonce.
        """
        try:
            _open(box, nonce, keys.recv_key.reveal())
        except nacl.exceptions.CryptoError as exc:
            raise ForgedFrame(f"record {name} does not authenticate") from exc
        if nacl.bindings.sodium_memcmp(stored, box[:_TAG_SIZE]):
            raise ReplayedFrame(f"record {name} was already accepted")
        raise NonceReuse(
            f"two different records authenticated as {name}: the peer reused a nonce"
        )

    def accept(self, opened: Opened) -> None:
        """Move the window for a record whose payload the session accepted."""
        keys = self.epochs[opened.epoch]
        keys.window.commit(opened.counter, opened.tag)
        keys.received += 1

    def _receiving(self, epoch: int, now: float) -> EpochKeys:
        keys = self.epochs.get(epoch)
        if keys is not None and (keys.expires is None or now < keys.expires):
            return keys
        if epoch > max(self.epochs):
            raise FutureEpoch(f"no keys for epoch {epoch} yet")
        raise StaleFrame(f"epoch {epoch} is forgotten")

    def _check_reflection(
        self, epoch: int, counter: int, box: bytes, keys: EpochKeys
    ) -> None:
        # Only on the failure path: does it open as one of our own records?
        if keys.send_key is None:
            return
        nonce = record_nonce(epoch, counter, self.role)
        try:
            _open(box, nonce, keys.send_key.reveal())
        except nacl.exceptions.CryptoError:
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
