"""The two storage interfaces the relay runs on: `Mailbox` and `Fanout`.

The relay keeps no routing state of its own beyond its connections. Who is in
which room, and the live delivery of frames to them, sits behind `Fanout`;
frames kept for members who are away sit behind `Mailbox`. Two families of
implementations exist or are planned:

- embedded (one relay process): `server.backends.memory.MemoryFanout` and
  `server.backends.sqlite.SqliteMailbox`;
- Redis (several relay processes behind one address): `server.backends.redis`,
  with live fan-out through sharded pub/sub, presence kept by heartbeats with
  expiry, and the mailbox in Redis data structures.

A backend module other than the embedded one (``server.backends.redis``)
exposes one coroutine, ``open_backends(config: RelayConfig, clock) ->
tuple[Mailbox, Fanout]``, which the relay calls at start when ``--redis`` is
given; the relay calls ``close()`` on both when it stops. The bounds of the mailbox
(see `Mailbox`) come from that configuration through
`MailboxBounds.from_config`.

Rules every implementation follows, so that the relay behaves the same on
either:

- Every method that may touch storage or the network is a coroutine. Nothing
  assumes that all members of a room are connected to this process.
- Live events reach the relay only through the `Member` callbacks a local
  member registered in `Fanout.join`. Callbacks are plain functions called on
  the relay's event loop; they must not block and never raise (the relay's
  callbacks only queue bytes).
- Frames are opaque bytes: an implementation stores and forwards them and
  never looks inside.
- Addresses, room ids and frame ids are those of the envelope (see
  protocol.md, "Envelope (relay protocol)"): 32-byte room ids and addresses,
  frame ids as unsigned 64-bit integers, never 0 (0 means "live").
- Failures of the store are raised as `StorageUnavailable`; the relay turns
  them into a refusal for the sender and a 503 on /healthz, and keeps serving.

Errors::

    Exception
    └── BackendError
        ├── MailboxFull          the recipient's mailbox is at its cap
        ├── StorageUnavailable   the store cannot be reached or written
        │   └── StorageFull      the store holds its overall maximum
        └── RoomFull             the room has its maximum number of members
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chat.envelope import PresenceKind
from server.config import RelayConfig

__all__ = [
    "BackendError",
    "Fanout",
    "Mailbox",
    "MailboxBounds",
    "MailboxDepth",
    "MailboxFull",
    "Member",
    "RoomFull",
    "StorageFull",
    "StorageUnavailable",
    "StoredFrame",
]


class BackendError(Exception):
    """Root of the errors raised by storage backends."""


class MailboxFull(BackendError):  # noqa: N818 (names the condition)
    """The recipient's mailbox holds its maximum frames or bytes already."""


class StorageUnavailable(BackendError):  # noqa: N818 (names the condition)
    """The store failed; nothing was written. Retry later or check the store."""


class StorageFull(StorageUnavailable):
    """All mailboxes together hold the store's maximum frames or bytes.

    A `StorageUnavailable`, so that a caller that knows only that error still
    refuses the frame with "storage unavailable; try again later": room comes
    back as recipients acknowledge and frames expire. The store itself is
    healthy, so `Mailbox.check` does not raise it.
    """


class RoomFull(BackendError):  # noqa: N818 (names the condition)
    """The room already has its maximum number of members present."""


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One frame kept in a mailbox.

    Attributes:
        frame_id: non-zero id, unique within the recipient's mailbox and
            increasing in the order frames were stored.
        room_id: the room the frame was sent in.
        sender: the sender's address.
        payload: the opaque payload, byte for byte as sent.
    """

    frame_id: int
    room_id: bytes
    sender: bytes
    payload: bytes

    def __repr__(self) -> str:
        size = len(self.payload)
        return f"StoredFrame(frame_id={self.frame_id}, payload=<{size} bytes>)"


@dataclass(frozen=True, slots=True)
class MailboxDepth:
    """How much the whole store holds, for metrics."""

    frames: int
    bytes: int


@dataclass(frozen=True, slots=True, init=False)
class MailboxBounds:
    """How long a mailbox keeps its records and how much it holds.

    Every `Mailbox` implementation takes one; the relay makes it from its
    configuration with `from_config`. The bounds left out take the defaults
    below, applied here and nowhere else, so that every implementation
    resolves them alike.

    Args:
        ttl: seconds a frame or a used membership is kept (see `Mailbox`).
        max_frames: most frames one mailbox holds.
        max_bytes: most payload bytes one mailbox holds.
        sender_frames: most frames one sender holds in one mailbox; default
            `max_frames`.
        sender_bytes: most payload bytes one sender holds in one mailbox;
            default `max_bytes`.
        total_frames: most frames all mailboxes hold together; default none.
        total_bytes: most payload bytes all mailboxes hold together; default
            none.
        probation: seconds a never used membership is kept; default `ttl`,
            and never more than `ttl`.
    """

    ttl: float
    max_frames: int
    max_bytes: int
    sender_frames: int
    sender_bytes: int
    total_frames: int | None
    total_bytes: int | None
    probation: float

    def __init__(
        self,
        *,
        ttl: float,
        max_frames: int,
        max_bytes: int,
        sender_frames: int | None = None,
        sender_bytes: int | None = None,
        total_frames: int | None = None,
        total_bytes: int | None = None,
        probation: float | None = None,
    ) -> None:
        # The class is frozen: each field is set once, here, past its guard.
        resolved = {
            "ttl": ttl,
            "max_frames": max_frames,
            "max_bytes": max_bytes,
            "sender_frames": max_frames if sender_frames is None else sender_frames,
            "sender_bytes": max_bytes if sender_bytes is None else sender_bytes,
            "total_frames": total_frames,
            "total_bytes": total_bytes,
            "probation": ttl if probation is None else min(probation, ttl),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, config: RelayConfig) -> MailboxBounds:
        """The bounds the relay's settings name.

        Those are ``mailbox_ttl``, ``mailbox_max_frames``,
        ``mailbox_max_bytes``, ``mailbox_sender_frames``,
        ``mailbox_sender_bytes``, ``store_max_frames``, ``store_max_bytes``
        and ``membership_probation`` (see server/config.py).
        """
        return cls(
            ttl=config.mailbox_ttl,
            max_frames=config.mailbox_max_frames,
            max_bytes=config.mailbox_max_bytes,
            sender_frames=config.mailbox_sender_frames,
            sender_bytes=config.mailbox_sender_bytes,
            total_frames=config.store_max_frames,
            total_bytes=config.store_max_bytes,
            probation=config.membership_probation,
        )


class Mailbox(Protocol):
    """Durable store of opaque frames per recipient, plus room membership.

    A mailbox is identified by ``(room_id, address)``: the address is the hash
    of a token only its owner knows, so presenting the token (checked by the
    relay before it calls in here) proves ownership. Every method that takes
    an address acts only on that address's own mailbox.

    Time to live (`ttl` and `probation` are the mailbox's `MailboxBounds`): a
    membership record is *used* once its member sent a frame
    in the room (`remember` with ``used=True``) or a frame was stored for it
    (`store` marks the recipient's membership used); being used is never
    undone. A used membership expires `ttl` seconds after the member was last
    seen (joined, left or sent); one never used expires a shorter
    `probation` seconds after it was last seen, so that addresses minted by
    JOIN alone do not stay valid recipients for days. A frame expires `ttl`
    seconds after it was stored. Expired records behave as absent even
    before `purge_expired` has removed them.

    Caps, all checked in the same transaction as the write, so that several
    relays sharing one store cannot overshoot them together:

    - a mailbox holds at most a configured number of frames and of payload
      bytes; `store` refuses with `MailboxFull` beyond either;
    - one sender holds at most a configured share (frames and bytes) of
      each mailbox, so that one sender cannot fill a mailbox and lock every
      other sender out; `store` refuses with `MailboxFull` beyond it;
    - all mailboxes together hold at most a configured number of frames and
      of payload bytes; `store` refuses with `StorageFull` beyond either.

    Frames that expired but were not purged yet may still count against the
    overall cap until `purge_expired` runs.
    """

    async def remember(
        self, room_id: bytes, address: bytes, *, used: bool = False
    ) -> None:
        """Record that `address` is a member of `room_id`, seen now.

        Called on every JOIN and LEAVE, so that the membership stays valid
        after the member was last seen; and with ``used=True`` once per
        connection and room when the member first sends a frame there.

        Args:
            room_id: the room.
            address: the member's address.
            used: also mark the membership used, so that it is kept for the
                full `ttl` rather than `probation` (see the class docstring).
                A membership once used stays used; ``used=False`` never
                clears it.

        Raises:
            StorageUnavailable: the record could not be written.
        """
        ...

    async def is_member(self, room_id: bytes, address: bytes) -> bool:
        """Tell whether `address` joined `room_id` before and has not expired.

        Only such an address is a valid recipient of a stored frame.

        Raises:
            StorageUnavailable: the store could not be read.
        """
        ...

    async def store(
        self, room_id: bytes, recipient: bytes, sender: bytes, payload: bytes
    ) -> int:
        """Keep a frame for `recipient`; return only once it is committed.

        Returns:
            The new frame's id (non-zero).

        Marks the recipient's membership used (see the class docstring).

        Raises:
            MailboxFull: the recipient's mailbox is at its frame or byte cap,
                or `sender` holds its share of that mailbox already.
            StorageFull: all mailboxes together are at the overall cap.
            StorageUnavailable: the frame could not be committed.
        """
        ...

    async def fetch(
        self, room_id: bytes, address: bytes, after: int, limit: int
    ) -> Sequence[StoredFrame]:
        """Return up to `limit` unexpired frames with id > `after`, oldest first.

        Raises:
            StorageUnavailable: the store could not be read.
        """
        ...

    async def ack(self, room_id: bytes, address: bytes, frame_id: int) -> bool:
        """Delete `frame_id` from the mailbox of `address` in `room_id` only.

        Returns:
            True if a frame was deleted; False if that mailbox has no such
            frame (already acknowledged, expired, or someone else's).

        Raises:
            StorageUnavailable: the deletion could not be committed.
        """
        ...

    async def purge_expired(self) -> int:
        """Delete expired frames and memberships; return how many frames went.

        Raises:
            StorageUnavailable: the store could not be written.
        """
        ...

    async def depth(self) -> MailboxDepth:
        """Count the frames and payload bytes held, for metrics.

        Raises:
            StorageUnavailable: the store could not be read.
        """
        ...

    async def check(self) -> None:
        """Check that the store answers (for /healthz).

        Raises:
            StorageUnavailable: it does not.
        """
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store. Idempotent."""
        ...


class Member(Protocol):
    """The relay's side of one member of one room on this process.

    The fan-out calls these on the relay's event loop. They queue bytes for
    the member's connection and return at once; they never raise.
    """

    def deliver(self, frame: bytes) -> None:
        """Hand a ready-to-send relay envelope (a DELIVER) to the member."""
        ...

    def presence(self, room_id: bytes, kind: PresenceKind, address: bytes) -> None:
        """Tell the member that `address` joined or left `room_id`."""
        ...

    def displaced(self, room_id: bytes) -> None:
        """Tell the member that a newer connection joined with its address.

        The member is no longer in the room (no LEFT is announced for it: the
        address is still present through the newer connection).
        """
        ...


class Fanout(Protocol):
    """Who is in which room, and live delivery of frames to them.

    Members join through the relay process they are connected to; the
    implementation tells every member of the room, on every process, about
    joins and leaves (`Member.presence`). A process listens for a room's
    traffic (for example a pub/sub subscription) only while it has at least
    one local member there.

    A member is identified by ``(room_id, address)``. If the same address
    joins a room again while present (a client reconnecting before its old
    connection was noticed gone), the newer member replaces the older one,
    whose `Member.displaced` is called.
    """

    async def join(
        self, room_id: bytes, address: bytes, member: Member, max_members: int
    ) -> tuple[bytes, ...]:
        """Add a local member and announce it to the others.

        Args:
            room_id: the room.
            address: the member's address.
            member: callbacks for events addressed to this member.
            max_members: most members the room may have present.

        Returns:
            The addresses of the other members present now.

        Raises:
            RoomFull: the room has `max_members` members present.
            StorageUnavailable: the shared state could not be reached.
        """
        ...

    async def leave(self, room_id: bytes, address: bytes, member: Member) -> None:
        """Remove a local member and announce that it left.

        Does nothing if `member` is no longer the one registered for
        `address` (it was displaced).
        """
        ...

    async def send_to(self, room_id: bytes, recipient: bytes, frame: bytes) -> bool:
        """Deliver `frame` live to one member, wherever it is connected.

        Returns:
            True if the recipient is present and the frame was handed to its
            member; False if it is not present (the caller then stores it).

        Raises:
            StorageUnavailable: the shared state could not be reached.
        """
        ...

    async def send_room(self, room_id: bytes, sender: bytes, frame: bytes) -> int:
        """Deliver `frame` live to every member present except `sender`.

        Returns:
            How many members on this process were handed the frame (remote
            members are not counted).

        Raises:
            StorageUnavailable: the shared state could not be reached.
        """
        ...

    async def is_online(self, room_id: bytes, address: bytes) -> bool:
        """Tell whether `address` is present in `room_id` on any process."""
        ...

    def room_count(self) -> int:
        """How many rooms have a member on this process (for metrics)."""
        ...

    async def check(self) -> None:
        """Check the shared state answers (for /healthz).

        Raises:
            StorageUnavailable: it does not.
        """
        ...

    async def close(self) -> None:
        """Stop listening and release resources. Idempotent."""
        ...
