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

Caps: the store script checks, in this order and before it writes, the
overall cap (the depth hash, shared by every relay), the mailbox's own cap
(its stream length and byte count) and the sender's share of the mailbox (a
hash of frames and bytes per sender), and keeps all three counts as it
appends; acknowledging and trimming take them back. A script runs alone on
Redis, so relays sharing one Redis cannot overshoot a cap together.

Memberships: one key per membership holds ``seen:used`` (the relay's clock
in seconds, then 1 once used) and expires by itself, `ttl` after it was
last seen once used and `probation` after it while never used; a record
written before memberships could be unused holds ``seen`` alone and keeps
the full `ttl`, as with SQLite. Being used is decided by the scripts that
write the record, so two relays cannot undo each other's mark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast

from server.backends.base import (
    BackendError,
    Mailbox,
    MailboxBounds,
    MailboxDepth,
    MailboxFull,
    StorageFull,
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

# Which cap the store script refused a frame for (see `_STORE`).
REFUSED_MAILBOX = 1
REFUSED_SENDER = 2
REFUSED_OVERALL = 3

_SENDERS = b":senders"
"""Suffix of a mailbox's hash of each sender's share."""

# Shared by the scripts below: KEYS are the stream, its byte count, the
# index, the depth hash and the hash of each sender's share ('f' or 'b',
# then the sender's address: its frames or bytes). Expired entries are
# dropped oldest first, in bounded steps; the caps bound how many there
# can be.
_PRELUDE = """
local stream, sizes, index, depth, senders = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

-- One frame of `sender` left the mailbox. A mailbox stored before shares
-- were counted has none: its count goes below 1 and is simply dropped.
local function unshare(sender, size)
  if redis.call('HINCRBY', senders, 'f' .. sender, -1) < 1 then
    redis.call('HDEL', senders, 'f' .. sender, 'b' .. sender)
  else
    redis.call('HINCRBY', senders, 'b' .. sender, -size)
  end
end

local function trim(last_expired)
  local frames, size = 0, 0
  while true do
    local old = redis.call('XRANGE', stream, '-', last_expired, 'COUNT', 32)
    for _, entry in ipairs(old) do
      local length = #entry[2][4]
      unshare(entry[2][2], length)
      size = size + length
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

# Membership records, ``seen:used`` or (written before memberships could be
# unused) ``seen`` alone, which counts as used.
_MEMBERSHIP = """
local function membership(record)
  local seen, used = string.match(record, '^([^:]*):(%d)$')
  if seen == nil then return tonumber(record), true end
  return tonumber(seen), used == '1'
end
"""

# KEYS: the membership record. ARGV: now (seconds), ttl (seconds), used (1
# or 0), ttl (ms), probation (ms). A record past its ttl that Redis has not
# removed yet starts afresh: it must not bring back an old "used" mark.
_REMEMBER = (
    _MEMBERSHIP
    + """
local record = KEYS[1]
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local used = ARGV[3] == '1'
if not used then
  local old = redis.call('GET', record)
  if old then
    local seen, was = membership(old)
    used = was and seen ~= nil and seen > now - ttl
  end
end
if used then
  redis.call('SET', record, ARGV[1] .. ':1', 'PX', ARGV[4])
else
  redis.call('SET', record, ARGV[1] .. ':0', 'PX', ARGV[5])
end
"""
)

# KEYS (after the prelude's): the recipient's membership record and the
# room's presence set. ARGV: last expired id, milliseconds now, max frames,
# max bytes, sender, payload, sender's frames, sender's bytes, overall
# frames, overall bytes (-1: no overall cap), recipient, now (seconds), ttl
# (seconds). Returns the new entry id, or the cap that refuses: 1 the
# mailbox's, 2 the sender's share, 3 the overall one.
_STORE = (
    _PRELUDE
    + _MEMBERSHIP
    + """
local record, present = KEYS[6], KEYS[7]
local trimmed = trim(ARGV[1])
local payload, sender = ARGV[6], ARGV[5]

local function refuse(cap)
  if trimmed > 0 then reindex() end
  return cap
end

local held = redis.call('HMGET', depth, 'frames', 'bytes')
local total_frames, total_bytes = tonumber(ARGV[9]), tonumber(ARGV[10])
if total_frames >= 0 and tonumber(held[1] or '0') >= total_frames then
  return refuse(3)
end
if total_bytes >= 0 and tonumber(held[2] or '0') + #payload > total_bytes then
  return refuse(3)
end

local count = redis.call('XLEN', stream)
local size = tonumber(redis.call('GET', sizes) or '0')
if count + 1 > tonumber(ARGV[3]) or size + #payload > tonumber(ARGV[4]) then
  return refuse(1)
end

local share = redis.call('HMGET', senders, 'f' .. sender, 'b' .. sender)
if tonumber(share[1] or '0') + 1 > tonumber(ARGV[7])
    or tonumber(share[2] or '0') + #payload > tonumber(ARGV[8]) then
  return refuse(2)
end

local id = redis.pcall('XADD', stream, ARGV[2] .. '-*', 's', sender, 'p', payload)
if type(id) == 'table' then
  -- An entry with a later time is there already (another relay's clock is
  -- ahead): let Redis pick the next id after it.
  id = redis.call('XADD', stream, '*', 's', sender, 'p', payload)
end
if tonumber(string.match(id, '-(%d+)$')) >= 1048576 then
  redis.call('XDEL', stream, id)
  return redis.error_reply('frame id sequence exhausted in this millisecond')
end
redis.call('INCRBY', sizes, #payload)
redis.call('HINCRBY', depth, 'frames', 1)
redis.call('HINCRBY', depth, 'bytes', #payload)
redis.call('HINCRBY', senders, 'f' .. sender, 1)
redis.call('HINCRBY', senders, 'b' .. sender, #payload)
if trimmed > 0 or count == 0 then reindex() end

-- A frame waiting for the recipient makes its membership used. A member
-- present counts as one (see is_member) before its relay wrote the record.
local now, ttl = tonumber(ARGV[12]), tonumber(ARGV[13])
local old = redis.call('GET', record)
if old then
  local seen, used = membership(old)
  local left = seen and math.floor((seen + ttl - now) * 1000)
  if not used and left and left > 0 then
    redis.call('SET', record, string.match(old, '^[^:]*') .. ':1', 'PX', left)
  end
elseif redis.call('ZSCORE', present, ARGV[11]) then
  redis.call('SET', record, ARGV[12] .. ':1', 'PX', math.floor(ttl * 1000))
end
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
unshare(entry[1][2][2], size)
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
  redis.call('DEL', stream, sizes, senders)
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


def _script_cap(cap: int | None) -> int:
    """An overall cap as the store script reads it: -1 for none (see `_STORE`)."""
    return -1 if cap is None else cap


class RedisMailbox(Mailbox):
    """Mailboxes in Redis streams, shared by every relay on that Redis.

    Args:
        link: the relay's Redis client and key names.
        bounds: how long records are kept and how much the mailboxes hold.
        clock: returns the time in seconds; injected by tests.
    """

    def __init__(
        self,
        link: RedisLink,
        bounds: MailboxBounds,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._bounds = bounds
        self._clock = clock
        self._members: dict[tuple[bytes, bytes], float] = {}
        self._remember = link.script(_REMEMBER)
        self._store = link.script(_STORE)
        self._ack = link.script(_ACK)
        self._purge = link.script(_PURGE)

    def _cutoff_ms(self) -> int:
        """Milliseconds at and before which frames are expired."""
        return int((self._clock() - self._bounds.ttl) * 1000)

    def _keys(self, room_id: bytes, address: bytes) -> list[bytes]:
        stream, sizes = self._link.mailbox(room_id, address)
        return [stream, sizes, self._link.index, self._link.depth, stream + _SENDERS]

    async def remember(
        self, room_id: bytes, address: bytes, *, used: bool = False
    ) -> None:
        """See `Mailbox.remember`; Redis also expires the record by itself."""
        await self._link.run_script(
            self._remember,
            [self._link.member(room_id, address)],
            [
                repr(self._clock()),
                repr(self._bounds.ttl),
                int(used),
                max(1, int(self._bounds.ttl * 1000)),
                max(1, int(self._bounds.probation * 1000)),
            ],
        )

    async def is_member(self, room_id: bytes, address: bytes) -> bool:
        """See `Mailbox.is_member`; a member present in the room is one too.

        The relay records the membership just after it answered the JOIN, so
        a sender on another relay may see the recipient present before the
        record exists; presence (written before the JOIN is answered) closes
        that window.
        """
        # A membership only grows while the member returns: a yes is reused
        # until the record's expiry, at most for a short while, which spares
        # a round trip for every stored frame.
        now = self._clock()
        if self._members.get((room_id, address), 0.0) > now:
            return True
        record, present = await asyncio.gather(
            self._link.batched("GET", self._link.member(room_id, address)),
            self._link.batched("ZSCORE", self._link.room(room_id).present, address),
        )
        if present is not None:
            # Its record, written after the JOIN, lasts at least probation.
            expires = now + self._bounds.probation
        elif record is not None:
            expires = self._expiry(record)
        else:
            return False
        if expires <= now:
            return False
        if len(self._members) >= MEMBER_CACHE:
            self._members.clear()
        self._members[(room_id, address)] = min(expires, now + MEMBER_CACHE_SECONDS)
        return True

    def _expiry(self, record: bytes) -> float:
        """When a membership record expires: `ttl` once used, else `probation`.

        A record written before memberships could be unused is ``seen`` alone
        and keeps the full `ttl`; one that does not parse has expired.
        """
        seen, colon, used = record.partition(b":")
        try:
            seen_at = float(seen)
        except ValueError:
            return 0.0
        if not colon or used == b"1":
            return seen_at + self._bounds.ttl
        return seen_at + self._bounds.probation

    async def store(
        self, room_id: bytes, recipient: bytes, sender: bytes, payload: bytes
    ) -> int:
        """See `Mailbox.store`: every cap is checked in the script that appends."""
        now, bounds = self._clock(), self._bounds
        reply = await self._link.run_script(
            self._store,
            [
                *self._keys(room_id, recipient),
                self._link.member(room_id, recipient),
                self._link.room(room_id).present,
            ],
            [
                f"{self._cutoff_ms()}-18446744073709551615",
                int(now * 1000),
                bounds.max_frames,
                bounds.max_bytes,
                sender,
                payload,
                bounds.sender_frames,
                bounds.sender_bytes,
                _script_cap(bounds.total_frames),
                _script_cap(bounds.total_bytes),
                recipient,
                repr(now),
                repr(bounds.ttl),
            ],
        )
        if isinstance(reply, int):
            raise self._refusal(reply)
        return frame_id_of(reply)

    def _refusal(self, cap: int) -> BackendError:
        """The error for the cap the store script named (see `_STORE`)."""
        if cap == REFUSED_OVERALL:
            return StorageFull(
                "the relay's store holds its overall maximum of frames or bytes;"
                " try again once recipients have fetched their mail"
            )
        bounds = self._bounds
        if cap == REFUSED_SENDER:
            return MailboxFull(
                f"this sender holds its maximum of {bounds.sender_frames} frames"
                f" or {bounds.sender_bytes} bytes in that mailbox;"
                " the recipient must fetch first"
            )
        return MailboxFull(
            f"mailbox holds its maximum of {bounds.max_frames} frames"
            f" or {bounds.max_bytes} bytes; the recipient must fetch first"
        )

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
        """See `Mailbox.purge_expired`: trims mailboxes whose oldest expired.

        Membership records need no purge: Redis removes each when it expires.
        """
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
                keys = [
                    stream,
                    stream + b":bytes",
                    self._link.index,
                    self._link.depth,
                    stream + _SENDERS,
                ]
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
        """See `Mailbox.check`: Redis answers (a full store is healthy)."""
        await self._link.ping()

    async def close(self) -> None:
        """See `Mailbox.close`: closes the Redis client shared with the fan-out."""
        await self._link.close()
