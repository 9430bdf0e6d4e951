"""One client connection on the relay: its rooms, its limits, its messages.

A `Session` reads envelopes from one WebSocket connection, checks them and
the connection's limits, and acts through the relay's `Fanout` and
`Mailbox`. It is also the `Member` the fan-out calls back for every room the
connection joined. Routing follows protocol.md, "Envelope (relay protocol)".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from chat.envelope import (
    BROADCAST,
    Ack,
    EnvelopeError,
    Join,
    Joined,
    Leave,
    Presence,
    PresenceKind,
    Send,
    Status,
    Welcome,
    decode_client,
    encode,
    encode_deliver,
    encode_result,
    mailbox_address,
    split_send,
)
from server.backends.base import (
    MailboxFull,
    RoomFull,
    StorageFull,
    StorageUnavailable,
)
from server.limits import Bucket
from server.outbound import BatchingConnection, Outbound

if TYPE_CHECKING:
    from server.relay import Relay

__all__ = ["Close", "Session"]

logger = logging.getLogger("server.relay")


@dataclass(frozen=True, slots=True)
class Close:
    """A reason the relay closes a connection: metric label, code, text."""

    label: str
    code: int
    reason: str


CLOSE_TEXT = Close("text", 1003, "text messages are not accepted; send binary")
CLOSE_RATE = Close("rate", 1008, "rate limit exceeded; slow down")
CLOSE_JOIN_RATE = Close("join_rate", 1008, "JOIN/LEAVE rate limit exceeded; slow down")
CLOSE_ROOMS = Close("rooms", 1008, "too many rooms on one connection")
CLOSE_MEMBERSHIPS = Close(
    "memberships", 1008, "too many new memberships on one connection"
)
CLOSE_ADDRESS_MEMBERSHIPS = Close(
    "address_memberships",
    1013,
    "too many new memberships from this address; try later",
)
CLOSE_ROOM_FULL = Close("room_full", 1008, "room is full")
CLOSE_JOIN_TIMEOUT = Close("join_timeout", 1008, "no JOIN in time after connecting")
CLOSE_CONNECTIONS = Close("connections", 1013, "too many connections; try later")
CLOSE_SLOW = Close("slow_consumer", 4000, "slow consumer: outbound buffer full")
CLOSE_GOING_AWAY = Close("going_away", 1001, "relay stopping")
CLOSE_IDLE = Close("idle", 4001, "idle timeout")
CLOSE_REPLACED = Close("replaced", 4002, "address joined from a newer connection")


def _short(room_id: bytes) -> str:
    """A room id cut short for debug logs: never logged in full."""
    return room_id[:4].hex()


class Session:
    """The relay's state for one client connection; a `Member` of its rooms.

    Args:
        relay: the relay serving this connection.
        websocket: the connection.
        client: the client's IP address, for the bounds per address.
    """

    __slots__ = (
        "_created",
        "_joins",
        "_refilled",
        "_tokens",
        "_used",
        "client",
        "closing",
        "joined_once",
        "last_activity",
        "opened",
        "outbound",
        "peer_id",
        "pumps",
        "relay",
        "rooms",
        "websocket",
    )

    def __init__(
        self, relay: Relay, websocket: BatchingConnection, client: str = "unknown"
    ) -> None:
        config = relay.config
        self.relay = relay
        self.websocket = websocket
        self.client = client
        self.peer_id = os.urandom(8)
        self.rooms: dict[bytes, bytes] = {}
        self.pumps: dict[bytes, asyncio.Task[None]] = {}
        self.closing: Close | None = None
        self.joined_once = False
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self._tokens = float(config.burst)
        self._refilled = self.opened
        self._joins = Bucket(config.join_rate, config.join_burst, self.opened)
        self._created = 0
        self._used: set[bytes] = set()
        self.outbound = Outbound(
            websocket,
            max_frames=config.outbound_frames,
            max_bytes=config.outbound_bytes,
            on_overflow=self._overflow,
            on_sent=self._sent,
            spawn=relay.spawn,
        )

    @property
    def name(self) -> str:
        """The peer id as shown in logs."""
        return self.peer_id.hex()

    # Member callbacks, called by the fan-out (see server.backends.base).

    def deliver(self, frame: bytes) -> None:
        """Queue a DELIVER for this connection."""
        self.outbound.put(frame)

    def presence(self, room_id: bytes, kind: PresenceKind, address: bytes) -> None:
        """Queue a PRESENCE for this connection."""
        self.outbound.put(encode(Presence(room_id, kind, address)))

    def displaced(self, room_id: bytes) -> None:
        """A newer connection took this address in `room_id`: close this one."""
        self.rooms.pop(room_id, None)
        self.close(CLOSE_REPLACED)

    # Closing.

    def close(self, close: Close) -> None:
        """Close the connection for `close`, once; returns at once."""
        if self.closing is not None:
            return
        self.closing = close
        self.relay.spawn(self._close(close))

    async def _close(self, close: Close) -> None:
        # Leave the rooms first: the others learn at once that this member is
        # gone, even if the close handshake waits behind a full buffer.
        await self.leave_all()
        await self.websocket.close(close.code, close.reason)

    def _overflow(self) -> None:
        self.relay.stats.drops["slow_consumer"] += 1
        self.close(CLOSE_SLOW)

    def _sent(self, frames: int, size: int) -> None:
        stats = self.relay.stats
        stats.frames_out += frames
        stats.bytes_out += size
        self.last_activity = time.monotonic()

    # Reading.

    async def run(self) -> None:
        """Greet the client, then handle its messages until it goes."""
        config = self.relay.config
        self.outbound.put(encode(Welcome(self.peer_id, config.max_payload)))
        try:
            async for data in self.websocket:
                if self.closing is not None:
                    break
                await self.receive(data)
        except ConnectionClosed:
            pass

    async def receive(self, data: str | bytes) -> None:
        """Check one incoming message and act on it."""
        stats = self.relay.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        now = time.monotonic()
        self.last_activity = now

        # Rate limit first: a flood must cost as little as possible.
        if not self._take_token(now):
            self.close(CLOSE_RATE)
            return
        if isinstance(data, str):
            self.close(CLOSE_TEXT)
            return

        # SEND is most of the traffic: read its header without a dataclass.
        fields = split_send(data)
        if fields is not None:
            started = time.perf_counter()
            await self._send(*fields)
            self.relay.stats.observe_latency(time.perf_counter() - started)
            return

        try:
            message = decode_client(data)
        except EnvelopeError as exc:
            self.close(Close("malformed", 1002, str(exc)[:120]))
            return
        await self._dispatch(message)

    def _take_token(self, now: float) -> bool:
        """Token bucket: `rate` tokens per second, at most `burst` saved."""
        config = self.relay.config
        self._tokens = min(
            float(config.burst), self._tokens + (now - self._refilled) * config.rate
        )
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _dispatch(self, message: Join | Leave | Send | Ack) -> None:
        if isinstance(message, Send):
            # split_send reads every well-formed SEND; this branch only
            # keeps the dispatch complete.
            payload = memoryview(message.payload)
            await self._send(
                message.room_id, message.recipient, message.send_id, payload
            )
        elif isinstance(message, Join | Leave):
            # Each JOIN and LEAVE writes to the store: a bucket of its own.
            if not self._joins.take(time.monotonic()):
                self.close(CLOSE_JOIN_RATE)
            elif isinstance(message, Join):
                await self._join(message)
            else:
                await self._leave(message.room_id)
        else:
            await self._ack(message)

    # JOIN and LEAVE.

    async def _join(self, message: Join) -> None:
        config = self.relay.config
        room_id = message.room_id
        address = mailbox_address(message.mailbox_token)
        if room_id in self.rooms:
            return
        if len(self.rooms) >= config.max_rooms_per_connection:
            self.close(CLOSE_ROOMS)
            return
        refusal = await self._creation_refused(room_id, address)
        if refusal is not None:
            self.close(refusal)
            return

        try:
            members = await self.relay.fanout.join(
                room_id, address, self, config.max_members_per_room
            )
        except RoomFull:
            self.close(CLOSE_ROOM_FULL)
            return
        except StorageUnavailable as exc:
            logger.warning("join failed peer=%s: %s", self.name, exc)
            self.close(Close("storage", 1011, "relay storage unavailable; try later"))
            return
        self.rooms[room_id] = address
        self.joined_once = True
        self.outbound.put(encode(Joined(room_id, address, members)))
        logger.debug("join peer=%s room=%s", self.name, _short(room_id))

        # Record the membership (valid recipient from now on), then hand
        # over what the mailbox kept.
        await self._remember(room_id, address)
        pump = self.relay.spawn(self._pump(room_id, address))
        self.pumps[room_id] = pump
        pump.add_done_callback(lambda _: self._pump_done(room_id, pump))

    async def _creation_refused(self, room_id: bytes, address: bytes) -> Close | None:
        """Count a membership this JOIN would create; the close if over a bound.

        A membership already recorded costs nothing: a returning member never
        runs into these bounds. When the store cannot tell, the JOIN counts
        as new, so that a failing store does not lift the bounds.
        """
        try:
            if await self.relay.mailbox.is_member(room_id, address):
                return None
        except StorageUnavailable as exc:
            logger.warning("membership not checked peer=%s: %s", self.name, exc)

        config = self.relay.config
        if self._created >= config.new_memberships_per_connection:
            return CLOSE_MEMBERSHIPS
        if not self.relay.memberships.take(self.client, time.monotonic()):
            return CLOSE_ADDRESS_MEMBERSHIPS
        self._created += 1
        return None

    def _pump_done(self, room_id: bytes, pump: asyncio.Task[None]) -> None:
        # Forget a finished pump, unless a later JOIN already replaced it.
        if self.pumps.get(room_id) is pump:
            del self.pumps[room_id]

    async def _remember(
        self, room_id: bytes, address: bytes, *, used: bool = False
    ) -> None:
        try:
            await self.relay.mailbox.remember(room_id, address, used=used)
        except StorageUnavailable as exc:
            logger.warning("membership not recorded peer=%s: %s", self.name, exc)

    async def _pump(self, room_id: bytes, address: bytes) -> None:
        """Deliver stored frames oldest first, without flooding the queue."""
        after = 0
        batch = self.relay.config.mailbox_batch
        while room_id in self.rooms and self.closing is None:
            try:
                frames = await self.relay.mailbox.fetch(room_id, address, after, batch)
            except StorageUnavailable as exc:
                logger.warning("mailbox fetch failed peer=%s: %s", self.name, exc)
                return
            if not frames:
                return
            for frame in frames:
                await self.outbound.wait_for_space()
                self.deliver(
                    encode_deliver(room_id, frame.sender, frame.frame_id, frame.payload)
                )
                after = frame.frame_id

    async def _leave(self, room_id: bytes) -> None:
        address = self.rooms.pop(room_id, None)
        if address is None:
            return
        self._used.discard(room_id)
        pump = self.pumps.pop(room_id, None)
        if pump is not None:
            pump.cancel()
        await self.relay.fanout.leave(room_id, address, self)
        await self._remember(room_id, address)
        logger.debug("leave peer=%s room=%s", self.name, _short(room_id))

    async def leave_all(self) -> None:
        """Leave every room (the connection is gone); never raises."""
        for room_id in list(self.rooms):
            try:
                await self._leave(room_id)
            except Exception:
                logger.exception("leaving a room failed peer=%s", self.name)
        for pump in self.pumps.values():
            pump.cancel()

    # SEND and ACK.

    async def _send(
        self, room_id: bytes, recipient: bytes, send_id: int, payload: memoryview
    ) -> None:
        sender = self.rooms.get(room_id)
        if sender is None:
            self._result(send_id, Status.NOT_A_MEMBER)
            return
        if len(payload) > self.relay.config.max_payload:
            self._result(send_id, Status.PAYLOAD_TOO_LARGE)
            return

        # A member that sends keeps its membership for the full TTL; one
        # write per room and connection (see Mailbox.remember).
        if room_id not in self._used:
            self._used.add(room_id)
            await self._remember(room_id, sender, used=True)

        # Live first: to the whole room, or to the recipient if present.
        frame = encode_deliver(room_id, sender, 0, payload)
        fanout = self.relay.fanout
        try:
            if recipient == BROADCAST:
                await fanout.send_room(room_id, sender, frame)
                self._result(send_id, Status.DELIVERED)
                return
            if await fanout.send_to(room_id, recipient, frame):
                self._result(send_id, Status.DELIVERED)
                return
        except StorageUnavailable as exc:
            logger.warning("live delivery failed peer=%s: %s", self.name, exc)
            self._result(send_id, Status.STORAGE_UNAVAILABLE)
            return
        self._result(send_id, await self._store(room_id, recipient, sender, payload))

    async def _store(
        self, room_id: bytes, recipient: bytes, sender: bytes, payload: memoryview
    ) -> Status:
        """Keep a frame for an absent recipient; the status for the sender."""
        mailbox = self.relay.mailbox
        try:
            if not await mailbox.is_member(room_id, recipient):
                return Status.UNKNOWN_RECIPIENT
            frame_id = await mailbox.store(room_id, recipient, sender, bytes(payload))
        except MailboxFull:
            return Status.MAILBOX_FULL
        except StorageFull:
            # Not a failure of the store: counted apart, and not logged for
            # every refused frame (a flood would flood the log too).
            self.relay.stats.drops["storage_full"] += 1
            return Status.STORAGE_UNAVAILABLE
        except StorageUnavailable as exc:
            logger.warning("store failed peer=%s: %s", self.name, exc)
            return Status.STORAGE_UNAVAILABLE

        # The recipient may have joined while the frame was being committed,
        # after its mailbox was read: hand the stored frame over now. It may
        # then arrive twice; clients drop repeats by frame id.
        frame = encode_deliver(room_id, sender, frame_id, payload)
        with contextlib.suppress(StorageUnavailable):
            await self.relay.fanout.send_to(room_id, recipient, frame)
        return Status.STORED

    def _result(self, send_id: int, status: Status) -> None:
        if status not in (Status.DELIVERED, Status.STORED):
            self.relay.stats.refusals[status.name.lower()] += 1
        self.outbound.put(encode_result(send_id, status))

    async def _ack(self, message: Ack) -> None:
        address = self.rooms.get(message.room_id)
        if address is None:
            return
        try:
            await self.relay.mailbox.ack(message.room_id, address, message.frame_id)
        except StorageUnavailable as exc:
            logger.warning("ack failed peer=%s: %s", self.name, exc)

    def expired(self, now: float) -> Close | None:
        """The reason to close this connection at `now`, if any."""
        config = self.relay.config
        if not self.joined_once and now - self.opened > config.join_timeout:
            return CLOSE_JOIN_TIMEOUT
        if now - self.last_activity > config.idle_timeout:
            return CLOSE_IDLE
        return None
