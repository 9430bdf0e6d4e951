"""Redis mailbox: the `Mailbox` shared by every relay on one Redis.

Each mailbox ``(room, address)`` is a Redis stream; each stored frame is one
entry with the sender's address and the payload. Every change is one Lua
script, so checking the caps and appending is atomic across relays, and the
store answers only after Redis executed it (with ``appendonly yes`` and
``appendfsync always`` it is also on disk; see docs/relay.md, "Scale-out").

Frame ids: a stream entry id ``ms-seq`` is sent to clients as the 64-bit
frame id ``ms << 20 | seq``. The milliseconds come from the relay's clock
(or from Redis' when the stream already holds a later entry), so ids grow in
the order frames were stored, and an id is not reused after deletion: a
stream remembers its last id, and a new stream starts from the clock.

Time to live: a frame is expired once its millisecond part is at least
``ttl`` old; fetches skip expired frames by id range, stores drop a
mailbox's expired frames before checking its caps, and `purge_expired`
drops them from mailboxes that no longer receive anything, found through an
index of each mailbox's oldest frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast

from server.backends.base import (
    Mailbox,
    MailboxDepth,
    MailboxFull,
    StoredFrame,
)
from server.backends.redis.link import RedisLink

__all__ = ["SEQ_BITS", "RedisMailbox", "frame_id_of", "stream_id_of"]

SEQ_BITS = 20
"""Low bits of a frame id holding the stream id's sequence number."""

MEMBER_CACHE = 100_000
"""Most positive `is_member` answers a relay keeps in memory."""

MEMBER_CACHE_SECONDS = 60.0
"""Longest a positive `is_member` answer is reused without asking Redis."""

PURGE_BATCH = 100
"""Mailboxes trimmed per script call by `purge_expired`."""

PURGE_ROUNDS = 100
"""Most batches one `purge_expired` call trims; the rest waits a round."""

# Shared by the scripts below: KEYS are the stream, its byte count, the
# index and the depth hash. Expired entries are dropped oldest first, in
# bounded steps; the caps bound how many there can be.
_PRELUDE = """
local stream, sizes, index, depth = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function trim(last_expired)
  local frames, size = 0, 0
  while true do
    local old = redis.call('XRANGE', stream, '-', last_expired, 'COUNT', 32)
    for _, entry in ipairs(old) do
      size = size + #entry[2][4]
      frames = frames + 1
      redis.call('XDEL', stream, entry[1])
    end
    if #old < 32 then break end
  end
  if frames > 0 then
    redis.call('DECRBY', sizes, size)
    redis.call('HINCRBY', depth, 'frames', -frames)
    redis.call('HINCRBY', depth, 'bytes', -size)
  end
  return frames
end

local function reindex()
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 then
    redis.call('ZREM', index, stream)
  else
    redis.call('ZADD', index, string.match(first[1][1], '^(%d+)-'), stream)
  end
end
"""

# ARGV: last expired id, milliseconds now, max frames, max bytes, sender,
# payload. Returns the new entry id, or 0 when a cap refuses.
_STORE = (
    _PRELUDE
    + """
local trimmed = trim(ARGV[1])
local count = redis.call('XLEN', stream)
local size = tonumber(redis.call('GET', sizes) or '0')
local payload = ARGV[6]
if count + 1 > tonumber(ARGV[3]) or size + #payload > tonumber(ARGV[4]) then
  if trimmed > 0 then reindex() end
  return 0
end
local id = redis.pcall('XADD', stream, ARGV[2] .. '-*', 's', ARGV[5], 'p', payload)
if type(id) == 'table' then
  -- An entry with a later time is there already (another relay's clock is
  -- ahead): let Redis pick the next id after it.
  id = redis.call('XADD', stream, '*', 's', ARGV[5], 'p', payload)
end
if tonumber(string.match(id, '-(%d+)$')) >= 1048576 then
  redis.call('XDEL', stream, id)
  return redis.error_reply('frame id sequence exhausted in this millisecond')
end
redis.call('INCRBY', sizes, #payload)
redis.call('HINCRBY', depth, 'frames', 1)
redis.call('HINCRBY', depth, 'bytes', #payload)
if trimmed > 0 or count == 0 then reindex() end
return id
"""
)

# ARGV: the entry id. Returns 1 if it was deleted.
_ACK = (
    _PRELUDE
    + """
local entry = redis.call('XRANGE', stream, ARGV[1], ARGV[1])
if #entry == 0 then return 0 end
local size = #entry[1][2][4]
redis.call('XDEL', stream, ARGV[1])
redis.call('DECRBY', sizes, size)
redis.call('HINCRBY', depth, 'frames', -1)
redis.call('HINCRBY', depth, 'bytes', -size)
reindex()
return 1
"""
)

# ARGV: last expired id. Returns how many frames went; an emptied mailbox
# is deleted altogether.
_PURGE = (
    _PRELUDE
    + """
local trimmed = trim(ARGV[1])
if redis.call('XLEN', stream) == 0 then
  redis.call('DEL', stream, sizes)
  redis.call('ZREM', index, stream)
else
  reindex()
end
return trimmed
"""
)


def frame_id_of(stream_id: bytes) -> int:
    """The frame id a client sees for stream entry id ``ms-seq``."""
    ms, seq = stream_id.split(b"-")
    return int(ms) << SEQ_BITS | int(seq)


def stream_id_of(frame_id: int) -> str:
    """The stream entry id of a frame id (inverse of `frame_id_of`)."""
    return f"{frame_id >> SEQ_BITS}-{frame_id & ((1 << SEQ_BITS) - 1)}"


class RedisMailbox(Mailbox):
    """Mailboxes in Redis streams, shared by every relay on that Redis.

    Args:
        link: the relay's Redis client and key names.
        ttl: seconds a frame or a membership is kept (see `Mailbox`).
        max_frames: most frames one mailbox holds.
        max_bytes: most payload bytes one mailbox holds.
        clock: returns the time in seconds; injected by tests.
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        ttl: float,
        max_frames: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._ttl = ttl
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._clock = clock
        self._members: dict[tuple[bytes, bytes], float] = {}
        self._store = link.script(_STORE)
        self._ack = link.script(_ACK)
        self._purge = link.script(_PURGE)

    def _cutoff_ms(self) -> int:
        """Milliseconds at and before which frames are expired."""
        return int((self._clock() - self._ttl) * 1000)

    def _keys(self, room_id: bytes, address: bytes) -> list[bytes]:
        stream, sizes = self._link.mailbox(room_id, address)
        return [stream, sizes, self._link.index, self._link.depth]

    async def remember(self, room_id: bytes, address: bytes) -> None:
        """See `Mailbox.remember`; Redis also expires the record by itself."""
        key = self._link.member(room_id, address)
        ttl_ms = int(self._ttl * 1000)
        await self._link.call(
            self._link.client.set(key, repr(self._clock()), px=ttl_ms)
        )

    async def is_member(self, room_id: bytes, address: bytes) -> bool:
        """See `Mailbox.is_member`; a member present in the room is one too.

        The relay records the membership just after it answered the JOIN, so
        a sender on another relay may see the recipient present before the
        record exists; presence (written before the JOIN is answered) closes
        that window.
        """
        # A membership lasts `ttl` after it was last seen and only grows
        # while the member returns: a yes is reused for a short while, which
        # spares a round trip for every stored frame.
        now = self._clock()
        if self._members.get((room_id, address), 0.0) > now:
            return True
        seen, present = await asyncio.gather(
            self._link.batched("GET", self._link.member(room_id, address)),
            self._link.batched("ZSCORE", self._link.room(room_id).present, address),
        )
        if present is not None:
            expires = now + self._ttl
        elif seen is not None and float(seen) > now - self._ttl:
            expires = float(seen) + self._ttl
        else:
            return False
        if len(self._members) >= MEMBER_CACHE:
            self._members.clear()
        self._members[(room_id, address)] = min(expires, now + MEMBER_CACHE_SECONDS)
        return True

    async def store(
        self, room_id: bytes, recipient: bytes, sender: bytes, payload: bytes
    ) -> int:
        """See `Mailbox.store`."""
        now_ms = int(self._clock() * 1000)
        reply = await self._link.run_script(
            self._store,
            self._keys(room_id, recipient),
            [
                f"{self._cutoff_ms()}-18446744073709551615",
                now_ms,
                self._max_frames,
                self._max_bytes,
                sender,
                payload,
            ],
        )
        if reply == 0:
            raise MailboxFull(
                f"mailbox holds its maximum of {self._max_frames} frames"
                f" or {self._max_bytes} bytes; the recipient must fetch first"
            )
        return frame_id_of(reply)

    async def fetch(
        self, room_id: bytes, address: bytes, after: int, limit: int
    ) -> Sequence[StoredFrame]:
        """See `Mailbox.fetch`: one range read from the first unexpired id."""
        first = max(after + 1, (self._cutoff_ms() + 1) << SEQ_BITS)
        stream, _ = self._link.mailbox(room_id, address)
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self._link.call(
                self._link.client.xrange(stream, stream_id_of(first), "+", count=limit)
            ),
        )
        frames = []
        for entry_id, fields in entries:
            frames.append(
                StoredFrame(frame_id_of(entry_id), room_id, fields[b"s"], fields[b"p"])
            )
        return frames

    async def ack(self, room_id: bytes, address: bytes, frame_id: int) -> bool:
        """See `Mailbox.ack`: the key names the owner's mailbox only."""
        if frame_id >> SEQ_BITS >= 1 << 44:
            return False
        deleted = await self._link.run_script(
            self._ack, self._keys(room_id, address), [stream_id_of(frame_id)]
        )
        return bool(deleted)

    async def purge_expired(self) -> int:
        """See `Mailbox.purge_expired`: trims mailboxes whose oldest expired."""
        cutoff = self._cutoff_ms()
        last_expired = f"{cutoff}-18446744073709551615"
        removed = 0
        for _ in range(PURGE_ROUNDS):
            streams = cast(
                "list[bytes]",
                await self._link.call(
                    self._link.client.zrangebyscore(
                        self._link.index, "-inf", cutoff, start=0, num=PURGE_BATCH
                    )
                ),
            )
            for stream in streams:
                keys = [stream, stream + b":bytes", self._link.index, self._link.depth]
                removed += await self._link.call(
                    self._purge(keys=keys, args=[last_expired])
                )
            if len(streams) < PURGE_BATCH:
                break
        return removed

    async def depth(self) -> MailboxDepth:
        """See `Mailbox.depth`: counters kept by the scripts."""
        frames, size = await self._link.call(
            self._link.client.hmget(self._link.depth, [b"frames", b"bytes"])
        )
        return MailboxDepth(
            frames=max(0, int(frames or 0)), bytes=max(0, int(size or 0))
        )

    async def check(self) -> None:
        """See `Mailbox.check`."""
        await self._link.ping()

    async def close(self) -> None:
        """See `Mailbox.close`: closes the Redis client shared with the fan-out."""
        await self._link.close()
