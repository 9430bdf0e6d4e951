"""Presence across relays: the Lua scripts and the messages on a room channel.

Who is present in a room is kept in Redis, not in any relay: a sorted set of
addresses scored by a deadline, and a hash naming the instance (a random id
of one JOIN on one relay) that owns each address. A relay pushes the
deadline of its own members forward on every heartbeat; a member whose
relay stopped beating passes its deadline and is removed by the next script
that touches the room, which announces it as left. Scripts use Redis' clock
only, so the relays' clocks do not matter here.

Every change bumps the room's version (microseconds of Redis' clock, never
lower than the previous version plus one) and publishes one presence message
from inside the same script: messages leave in version order, and a relay can
tell a snapshot (a script's reply) from an older or newer message.

Messages on a room's sharded channel (byte 0 says which)::

    P kind[1] address[32] instance[8] version (ASCII digits)
        presence: kind J joined, L left, R replaced (same address, newer
        connection: the older one is displaced, nobody left)
    T origin[8] recipient[32] frame
        a stored frame for one member (the DELIVER, ready to send)
    A origin[8] sender[32] frame
        a live frame for every member present except the sender

``origin`` is the publishing relay's random id: a relay skips its own
frames, having handed them to its local members already.
"""

from __future__ import annotations

from dataclasses import dataclass

from chat.envelope import ADDRESS_SIZE

__all__ = [
    "INSTANCE_SIZE",
    "JOIN",
    "LEAVE",
    "ONLINE",
    "REFRESH",
    "STATUS_FULL",
    "STATUS_JOINED",
    "STATUS_REPLACED",
    "PresenceEvent",
    "parse_presence",
]

INSTANCE_SIZE = 8
"""Bytes of the random id of one member's JOIN, and of a relay's id."""

STATUS_FULL = 0
STATUS_JOINED = 1
STATUS_REPLACED = 2

# KEYS: present, owner, version, channel. ARGV[1]: presence ttl (ms),
# ARGV[2]: how long the room's keys outlive the last heartbeat (ms).
_PRELUDE = """
local present, owner, version, channel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = math.floor(now_us / 1000)

local function bump()
  local last = tonumber(redis.call('GET', version) or '0')
  local text = string.format('%.0f', math.max(last + 1, now_us))
  redis.call('SET', version, text, 'PX', keep)
  return text
end

local function announce(kind, address, instance)
  local text = bump()
  redis.call('SPUBLISH', channel, 'P' .. kind .. address .. instance .. text)
  return text
end

local function add(address, instance)
  redis.call('ZADD', present, now + ttl, address)
  redis.call('HSET', owner, address, instance)
end

-- Members whose relay stopped beating are removed and announced as left.
local function sweep()
  for _, address in ipairs(redis.call('ZRANGEBYSCORE', present, '-inf', now)) do
    local instance = redis.call('HGET', owner, address) or '\\0\\0\\0\\0\\0\\0\\0\\0'
    redis.call('ZREM', present, address)
    redis.call('HDEL', owner, address)
    announce('L', address, instance)
  end
end

local function keep_keys()
  redis.call('PEXPIRE', present, keep)
  redis.call('PEXPIRE', owner, keep)
end

local function current()
  return redis.call('GET', version) or '0'
end
"""

JOIN = (
    _PRELUDE
    + """
-- ARGV[3]: address, ARGV[4]: instance, ARGV[5]: most members present.
-- Returns {status, version, members present now (self included)}.
sweep()
local address, instance = ARGV[3], ARGV[4]
local kind = 'J'
if redis.call('HEXISTS', owner, address) == 1 then
  kind = 'R'
elseif redis.call('ZCARD', present) >= tonumber(ARGV[5]) then
  return {0, current(), {}}
end
add(address, instance)
keep_keys()
local text = announce(kind, address, instance)
return {kind == 'R' and 2 or 1, text, redis.call('ZRANGE', present, 0, -1)}
"""
)

LEAVE = (
    _PRELUDE
    + """
-- ARGV[3]: address, ARGV[4]: instance. Does nothing if a newer connection
-- owns the address. Returns the version of the announcement, or 0.
local address, instance = ARGV[3], ARGV[4]
if redis.call('HGET', owner, address) ~= instance then return 0 end
redis.call('ZREM', present, address)
redis.call('HDEL', owner, address)
return announce('L', address, instance)
"""
)

REFRESH = (
    _PRELUDE
    + """
-- ARGV[3..]: address, instance pairs of this relay's members. Pushes their
-- deadlines, registers again any the store lost (announced as joined),
-- then sweeps. Returns {version, members present, addresses now owned by
-- another connection}.
local displaced = {}
for i = 3, #ARGV, 2 do
  local address, instance = ARGV[i], ARGV[i + 1]
  local holder = redis.call('HGET', owner, address)
  if holder == instance then
    redis.call('ZADD', present, now + ttl, address)
  elseif holder then
    displaced[#displaced + 1] = address
  else
    add(address, instance)
    announce('J', address, instance)
  end
end
sweep()
keep_keys()
redis.call('PEXPIRE', version, keep)
return {current(), redis.call('ZRANGE', present, 0, -1), displaced}
"""
)

ONLINE = (
    _PRELUDE
    + """
-- ARGV[3]: address. Returns 1 if it is present and within its deadline.
local deadline = redis.call('ZSCORE', present, ARGV[3])
if deadline and tonumber(deadline) > now then return 1 end
return 0
"""
)

_PRESENCE_HEAD = 2 + ADDRESS_SIZE + INSTANCE_SIZE


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One presence message from a room channel."""

    kind: bytes
    address: bytes
    instance: bytes
    version: int


def parse_presence(data: bytes) -> PresenceEvent:
    """Read a ``P`` message.

    Raises:
        ValueError: it is malformed (names what).
    """
    if len(data) <= _PRESENCE_HEAD or data[:1] != b"P":
        raise ValueError(f"presence message of {len(data)} bytes is malformed")
    kind = data[1:2]
    if kind not in (b"J", b"L", b"R"):
        raise ValueError(f"presence kind {kind!r} is unknown")
    digits = data[_PRESENCE_HEAD:]
    if not digits.isdigit():
        raise ValueError("presence version is not a number")
    return PresenceEvent(
        kind,
        data[2 : 2 + ADDRESS_SIZE],
        data[2 + ADDRESS_SIZE : _PRESENCE_HEAD],
        int(digits),
    )
