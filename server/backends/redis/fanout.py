"""Redis fan-out: rooms shared by every relay process on one Redis.

Each relay keeps its own members (`_Local`) and a view of who is present in
each room where it has one, and listens to that room's sharded pub/sub
channel only while it has a member there. Presence lives in Redis (see
`server.backends.redis.presence`); the view follows it by versioned
messages and by a snapshot on every heartbeat, so a lost message heals
within one ``--presence-interval``.

Delivery rules (see docs/relay.md, "Scale-out"):

- a member on this relay gets frames directly, as with the embedded
  fan-out;
- a live frame for one member on another relay is not sent through pub/sub
  (`send_to` answers False): the relay stores it and then publishes the
  stored frame, so the sender is told "stored" and a lost pub/sub message
  loses nothing, the frame waits in the mailbox;
- a live frame for the whole room is published once for the other relays
  before the local members get it; a failed publish refuses the SEND.

The pub/sub connection is watched with pings; when it fails the relay
reports unhealthy, reconnects with bounded exponential backoff, subscribes
again to every room it has members in, then takes a snapshot of each room
(announcing what changed meanwhile) and hands its members the stored frames
whose notifications may have been lost while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from chat.envelope import ADDRESS_SIZE, ROOM_ID_SIZE, PresenceKind, encode_deliver
from server.backends.base import Fanout, Member, RoomFull, StorageUnavailable
from server.backends.redis.link import RedisLink, RoomKeys
from server.backends.redis.mailbox import SEQ_BITS, RedisMailbox
from server.backends.redis.presence import (
    INSTANCE_SIZE,
    JOIN,
    LEAVE,
    ONLINE,
    REFRESH,
    STATUS_FULL,
    PresenceEvent,
    parse_presence,
)

__all__ = ["RedisFanout"]

logger = logging.getLogger("server.relay")

BACKOFF_START = 0.05
"""Seconds before the first attempt to reconnect; doubles up to the bound."""

KEEP_FACTOR = 4
"""A room's keys outlive its last heartbeat by this many presence ttls."""

_FRAME_ID = slice(2 + ROOM_ID_SIZE + ADDRESS_SIZE, 2 + ROOM_ID_SIZE + ADDRESS_SIZE + 8)
"""Where a DELIVER carries its frame id (see protocol.md, "Envelope")."""

_ORIGIN_END = 1 + INSTANCE_SIZE
_TARGET_END = _ORIGIN_END + ADDRESS_SIZE


@dataclass(slots=True)
class _Local:
    """A member connected to this relay, with its JOIN's instance id."""

    member: Member
    instance: bytes
    version: int


@dataclass(slots=True)
class _Room:
    """This relay's state for a room it has members in."""

    room_id: bytes
    keys: RoomKeys
    local: dict[bytes, _Local] = field(default_factory=dict)
    present: set[bytes] = field(default_factory=set)
    version: int = 0
    subscribed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RedisFanout(Fanout):
    """Rooms and live delivery across every relay sharing one Redis.

    Args:
        link: the relay's Redis client and key names.
        mailbox: the Redis mailbox, read again after a reconnection.
        presence_ttl: seconds a member stays present after the last heartbeat
            of its relay.
        presence_interval: seconds between heartbeats (below `presence_ttl`);
            also the ping interval of the pub/sub connection.
        timeout: seconds to wait for Redis to confirm a subscription.
        backoff: most seconds between attempts to reconnect.
        batch: most stored frames handed again to each member after a
            reconnection (the rest wait for its next JOIN).
        clock: wall-clock seconds; injected by tests.
    """

    def __init__(
        self,
        link: RedisLink,
        mailbox: RedisMailbox,
        *,
        presence_ttl: float,
        presence_interval: float,
        timeout: float,
        backoff: float,
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._mailbox = mailbox
        self._ttl_ms = int(presence_ttl * 1000)
        self._interval = presence_interval
        self._timeout = timeout
        self._backoff = backoff
        self._batch = batch
        self._clock = clock
        self._relay_id = os.urandom(INSTANCE_SIZE)
        self._rooms: dict[bytes, _Room] = {}
        self._by_channel: dict[bytes, _Room] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._departed: dict[tuple[bytes, bytes], bytes] = {}
        self._pubsub: PubSub | None = None
        self._connected = False
        self._heard_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._join = link.script(JOIN)
        self._leave = link.script(LEAVE)
        self._refresh = link.script(REFRESH)
        self._online = link.script(ONLINE)
        self.reconnects = 0

    def start(self) -> None:
        """Start listening and beating; returns at once (Redis may be down)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._supervise()),
            loop.create_task(self._heartbeat()),
        ]

    @property
    def collector(self) -> Collector:
        """Metrics of the link to Redis, registered by the relay."""
        return _RedisCollector(self)

    @property
    def connected(self) -> bool:
        """True while the pub/sub connection is subscribed and listening."""
        return self._connected

    def _args(self, *more: object) -> list[Any]:
        return [self._ttl_ms, self._ttl_ms * KEEP_FACTOR, *more]

    @staticmethod
    def _keys(room: _Room) -> list[bytes]:
        keys = room.keys
        return [keys.present, keys.owner, keys.version, keys.channel]

    # Joining and leaving.

    async def join(
        self, room_id: bytes, address: bytes, member: Member, max_members: int
    ) -> tuple[bytes, ...]:
        """See `Fanout.join`: subscribe first, then register, then list."""
        while True:
            room = self._rooms.get(room_id)
            if room is None:
                room = _Room(room_id, self._link.room(room_id))
                self._rooms[room_id] = room
                self._by_channel[room.keys.channel] = room
            async with room.lock:
                # The room may have been dropped while this waited for it.
                if self._rooms.get(room_id) is room:
                    return await self._join_locked(room, address, member, max_members)

    async def _join_locked(
        self, room: _Room, address: bytes, member: Member, max_members: int
    ) -> tuple[bytes, ...]:
        # Subscribing before registering means no message about this member's
        # room can be missed once others can see it.
        instance = os.urandom(INSTANCE_SIZE)
        try:
            await self._subscribe(room)
            status, version, members = await self._link.call(
                self._join(
                    keys=self._keys(room),
                    args=self._args(address, instance, max_members),
                )
            )
        except StorageUnavailable:
            if not room.local:
                await self._drop(room)
            raise
        if status == STATUS_FULL:
            if not room.local:
                await self._drop(room)
            raise RoomFull(f"room already has its maximum of {max_members} members")

        # An older connection of this address on this relay is replaced; one
        # on another relay learns it from the R message.
        previous = room.local.pop(address, None)
        if previous is not None:
            previous.member.displaced(room.room_id)
        # A snapshot older than the view leaves this member to be added here.
        snapshot = self._apply_snapshot(room, int(version), members)
        if not snapshot and address not in room.present:
            room.present.add(address)
            self._announce(room, PresenceKind.JOINED, address)
        room.local[address] = _Local(member, instance, int(version))
        self._departed.pop((room.room_id, address), None)
        return tuple(other for other in room.present if other != address)

    async def leave(self, room_id: bytes, address: bytes, member: Member) -> None:
        """See `Fanout.leave`; never raises.

        If Redis cannot be told, the member's presence entry expires within
        the presence ttl (this relay stops beating for it) and the removal is
        tried again on each heartbeat.
        """
        room = self._rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            local = room.local.get(address)
            if local is None or local.member is not member:
                return
            del room.local[address]
            try:
                version = await self._link.call(
                    self._leave(
                        keys=self._keys(room), args=self._args(address, local.instance)
                    )
                )
            except StorageUnavailable as exc:
                logger.warning("leave not recorded in Redis: %s", exc)
                self._departed[(room_id, address)] = local.instance
                version = None
            if version:
                event = PresenceEvent(b"L", address, local.instance, int(version))
                self._apply_event(room, event)
            elif version is None and address in room.present:
                room.present.discard(address)
                self._announce(room, PresenceKind.LEFT, address)
            if not room.local:
                await self._drop(room)

    async def _subscribe(self, room: _Room) -> None:
        """Subscribe to the room's channel and wait until Redis confirms it."""
        if room.subscribed:
            return
        pubsub = self._pubsub
        if pubsub is None or not self._connected:
            raise StorageUnavailable("Redis pub/sub is not connected; reconnecting")
        await self._confirm(pubsub, [room.keys.channel])
        room.subscribed = True

    async def _confirm(self, pubsub: PubSub, channels: list[bytes]) -> None:
        """SSUBSCRIBE to `channels`; return once the listener saw every reply."""
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            future = self._confirmations.get(channel)
            if future is None or future.done():
                future = self._confirmations[channel] = loop.create_future()
            waits.append(future)
        try:
            await self._link.call(pubsub.ssubscribe(*channels))
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*waits)
        except TimeoutError as exc:
            raise StorageUnavailable("Redis did not confirm a subscription") from exc
        finally:
            for channel in channels:
                self._confirmations.pop(channel, None)

    async def _drop(self, room: _Room) -> None:
        """Forget a room without local members; stop listening to it."""
        self._rooms.pop(room.room_id, None)
        self._by_channel.pop(room.keys.channel, None)
        pubsub = self._pubsub
        if room.subscribed and pubsub is not None and self._connected:
            with contextlib.suppress(StorageUnavailable):
                await self._link.call(pubsub.sunsubscribe(room.keys.channel))
        room.subscribed = False

    # The view of who is present.

    def _announce(self, room: _Room, kind: PresenceKind, address: bytes) -> None:
        for other, local in room.local.items():
            if other != address:
                local.member.presence(room.room_id, kind, address)

    def _apply_snapshot(self, room: _Room, version: int, members: list[bytes]) -> bool:
        """Take Redis' list of members at `version`; announce the difference.

        Returns:
            False if the view is already newer than the snapshot (ignored).
        """
        if version < room.version:
            return False
        room.version = version
        now = set(members) | room.local.keys()
        now.difference_update(
            address for (room_id, address) in self._departed if room_id == room.room_id
        )
        for address in now - room.present:
            self._announce(room, PresenceKind.JOINED, address)
        for address in room.present - now:
            self._announce(room, PresenceKind.LEFT, address)
        room.present = now
        return True

    def _apply_event(self, room: _Room, event: PresenceEvent) -> None:
        """Apply one presence message unless the view is newer already."""
        address = event.address
        if event.kind == b"R":
            local = room.local.get(address)
            if (
                local is not None
                and local.instance != event.instance
                and local.version < event.version
            ):
                self._displace(room, address)
        if event.version <= room.version:
            return
        room.version = event.version
        if event.kind in (b"J", b"R") and address not in room.present:
            room.present.add(address)
            self._announce(room, PresenceKind.JOINED, address)
        elif (
            event.kind == b"L" and address in room.present and address not in room.local
        ):
            room.present.discard(address)
            self._announce(room, PresenceKind.LEFT, address)

    def _displace(self, room: _Room, address: bytes) -> None:
        """A newer connection elsewhere took `address`: drop the local one."""
        local = room.local.pop(address)
        local.member.displaced(room.room_id)
        if not room.local:
            asyncio.get_running_loop().create_task(self._drop_later(room))

    async def _drop_later(self, room: _Room) -> None:
        async with room.lock:
            if not room.local and self._rooms.get(room.room_id) is room:
                await self._drop(room)

    # Live delivery.

    async def send_to(self, room_id: bytes, recipient: bytes, frame: bytes) -> bool:
        """See `Fanout.send_to`.

        A member on this relay gets `frame` at once. A live frame (frame id
        0) for a member elsewhere is refused (False) so that the caller
        stores it; a stored frame is then published for the member's relay.
        """
        room = self._rooms.get(room_id)
        if room is None:
            return False
        local = room.local.get(recipient)
        if local is not None:
            local.member.deliver(frame)
            return True
        if not int.from_bytes(frame[_FRAME_ID], "big"):
            return False

        # Published even if the view lacks the recipient: it may be joining
        # on another relay right now, after its mailbox was read.
        message = b"T" + self._relay_id + recipient + frame
        await self._link.batched("SPUBLISH", room.keys.channel, message)
        return recipient in room.present

    async def send_room(self, room_id: bytes, sender: bytes, frame: bytes) -> int:
        """See `Fanout.send_room`: publish for other relays first, then local."""
        room = self._rooms.get(room_id)
        if room is None:
            return 0
        if len(room.present) > len(room.local):
            message = b"A" + self._relay_id + sender + frame
            await self._link.batched("SPUBLISH", room.keys.channel, message)
        return self._deliver_local(room, sender, frame)

    @staticmethod
    def _deliver_local(room: _Room, sender: bytes, frame: bytes) -> int:
        count = 0
        for address, local in room.local.items():
            if address != sender:
                local.member.deliver(frame)
                count += 1
        return count

    async def is_online(self, room_id: bytes, address: bytes) -> bool:
        """See `Fanout.is_online`: present on any relay, within its deadline."""
        room = self._rooms.get(room_id)
        if room is not None and address in room.local:
            return True
        keys = self._link.room(room_id)
        online = await self._link.call(
            self._online(
                keys=[keys.present, keys.owner, keys.version, keys.channel],
                args=self._args(address),
            )
        )
        return bool(online)

    def room_count(self) -> int:
        """See `Fanout.room_count`."""
        return len(self._rooms)

    async def check(self) -> None:
        """See `Fanout.check`: Redis answers and pub/sub is listening."""
        if not self._connected:
            raise StorageUnavailable("Redis pub/sub is not connected; reconnecting")
        await self._link.ping()

    async def close(self) -> None:
        """See `Fanout.close`: stop listening; members' entries then expire."""
        if self._closed:
            return
        self._closed = True
        self._connected = False

        # Closing the connection ends the listener's read: a cancellation
        # alone can be lost inside redis-py's read timeout.
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=self._timeout)
            if stuck:
                logger.warning("Redis listener did not stop in time")

    # Messages from the room channels.

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "ssubscribe":
            future = self._confirmations.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind != "smessage":
            return
        room = self._by_channel.get(channel)
        if room is None:
            return
        try:
            self._on_room_message(room, message["data"])
        except ValueError as exc:
            logger.warning("ignored a malformed message on a room channel: %s", exc)

    def _on_room_message(self, room: _Room, data: bytes) -> None:
        head = data[:1]
        if head == b"P":
            self._apply_event(room, parse_presence(data))
            return
        if len(data) <= _TARGET_END or head not in (b"T", b"A"):
            raise ValueError(f"message of {len(data)} bytes starting {head!r}")
        if data[1:_ORIGIN_END] == self._relay_id:
            return
        address, frame = data[_ORIGIN_END:_TARGET_END], data[_TARGET_END:]
        if head == b"A":
            self._deliver_local(room, address, frame)
            return
        local = room.local.get(address)
        if local is not None:
            local.member.deliver(frame)

    # Staying connected.

    async def _supervise(self) -> None:
        """Keep one pub/sub connection listening; reconnect with backoff."""
        delay = BACKOFF_START
        lost_at: float | None = None
        while not self._closed:
            pubsub = self._link.listener.pubsub()
            self._pubsub = pubsub
            listener: asyncio.Task[None] | None = None
            try:
                await self._link.call(pubsub.connect())  # type: ignore[no-untyped-call]
                listener = asyncio.get_running_loop().create_task(self._listen(pubsub))
                await self._resubscribe(pubsub, listener)
                self._connected = True
                if lost_at is not None:
                    logger.info("reconnected to Redis")
                delay = BACKOFF_START
                await self._resync(lost_at)
                await listener
            except (StorageUnavailable, RedisError, OSError) as exc:
                if self._connected or lost_at is None:
                    logger.warning("Redis pub/sub lost: %s; reconnecting", exc)
            finally:
                self._connected = False
                if listener is not None:
                    listener.cancel()
                for room in self._rooms.values():
                    room.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

            if self._closed:
                return

            # The previous connection was last heard at `lost_at`: stored
            # frames announced after that are handed over again (_resync).
            lost_at = self._heard_at or self._clock()
            self.reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
            delay = min(delay * 2, self._backoff)

    async def _resubscribe(self, pubsub: PubSub, listener: asyncio.Task[None]) -> None:
        """Subscribe to every room with local members, on a new connection."""
        rooms = list(self._rooms.values())
        if rooms:
            confirm = asyncio.ensure_future(
                self._confirm(pubsub, [room.keys.channel for room in rooms])
            )
            done, _ = await asyncio.wait(
                {confirm, listener}, return_when=asyncio.FIRST_COMPLETED
            )
            if confirm not in done:
                confirm.cancel()
                listener.result()
                raise StorageUnavailable("pub/sub connection closed while subscribing")
            confirm.result()
        for room in rooms:
            room.subscribed = True

    async def _listen(self, pubsub: PubSub) -> None:
        """Dispatch messages until the connection fails or stops answering."""
        heard = time.monotonic()
        self._heard_at = self._clock()
        pinged = False
        while not self._closed:
            message = await pubsub.get_message(timeout=self._interval)
            now = time.monotonic()
            if message is not None:
                heard, pinged = now, False
                self._heard_at = self._clock()
                self._dispatch(message)
            elif now - heard > self._interval:
                if pinged and now - heard > 3 * self._interval:
                    raise StorageUnavailable("Redis stopped answering pings")
                await pubsub.ping()
                pinged = True

    async def _resync(self, lost_at: float | None) -> None:
        """After (re)connecting: snapshot each room, hand over missed frames."""
        for room in list(self._rooms.values()):
            await self._refresh_room(room)
            if lost_at is not None:
                await self._redeliver(room, lost_at)

    async def _redeliver(self, room: _Room, lost_at: float) -> None:
        """Hand over frames stored since `lost_at` (their notice may be lost)."""
        since_ms = int((lost_at - 2 * self._timeout) * 1000)
        after = max(0, (since_ms << SEQ_BITS) - 1)
        for address, local in list(room.local.items()):
            frames = await self._mailbox.fetch(
                room.room_id, address, after, self._batch
            )
            for frame in frames:
                local.member.deliver(
                    encode_deliver(
                        room.room_id, frame.sender, frame.frame_id, frame.payload
                    )
                )

    # Heartbeats.

    async def _heartbeat(self) -> None:
        """Every interval: push this relay's members' deadlines, sync views."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
            except StorageUnavailable as exc:
                logger.warning("presence heartbeat failed: %s", exc)

    async def _beat(self) -> None:
        for room in list(self._rooms.values()):
            await self._refresh_room(room)
        for (room_id, address), instance in list(self._departed.items()):
            keys = self._link.room(room_id)
            await self._link.call(
                self._leave(
                    keys=[keys.present, keys.owner, keys.version, keys.channel],
                    args=self._args(address, instance),
                )
            )
            self._departed.pop((room_id, address), None)

    async def _refresh_room(self, room: _Room) -> None:
        """One heartbeat for one room, and a snapshot of its members."""
        sent = {address: local.instance for address, local in room.local.items()}
        if not sent:
            return
        pairs = [item for entry in sent.items() for item in entry]
        version, members, displaced = await self._link.call(
            self._refresh(keys=self._keys(room), args=self._args(*pairs))
        )
        for address in displaced:
            local = room.local.get(address)
            if local is not None and local.instance == sent.get(address):
                self._displace(room, address)
        self._apply_snapshot(room, int(version), members)


class _RedisCollector(Collector):
    """``saltchat_relay_redis_*`` metrics of one fan-out."""

    def __init__(self, fanout: RedisFanout) -> None:
        self._fanout = fanout

    def collect(self) -> Iterator[Metric]:
        """Yield the metrics; called on each scrape."""
        yield GaugeMetricFamily(
            "saltchat_relay_redis_connected",
            "1 while the pub/sub connection to Redis listens, else 0",
            value=int(self._fanout.connected),
        )
        yield CounterMetricFamily(
            "saltchat_relay_redis_reconnects",
            "Attempts to open the pub/sub connection to Redis again",
            value=self._fanout.reconnects,
        )
