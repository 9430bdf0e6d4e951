"""The Redis backends against a real redis-server, in this process.

Each test uses its own key prefix on the session's redis-server. Fan-outs
stand for relays: two `RedisFanout`s on one Redis are two relays.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chat.envelope import PresenceKind, encode_deliver
from server.backends.base import (
    MailboxBounds,
    RoomFull,
    StorageFull,
    StorageUnavailable,
)
from server.backends.redis import RedisFanout, RedisLink, RedisMailbox
from server.backends.redis.link import redacted
from server.backends.redis.mailbox import frame_id_of, stream_id_of
from tests.redis_helpers import RedisServer, free_port, need_binary
from tests.test_relay_backends import BOUNDED, SMALL

ROOM = b"r" * 32
OTHER_ROOM = b"o" * 32
ALICE = b"a" * 32
BOB = b"b" * 32
CAROL = b"c" * 32
WAIT = 10.0
"""Seconds any wait on an event may take before the test fails."""

ROOMY = MailboxBounds(ttl=100, max_frames=10, max_bytes=1000)
"""Bounds of the mailboxes the fan-outs are given."""


class Clock:
    """A settable clock for expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    prefix = "test-" + os.urandom(6).hex()
    opened = RedisLink.open(redis_server.url, prefix=prefix, timeout=2, connections=8)
    yield opened
    await opened.close()


@pytest.fixture
async def mailbox(link: RedisLink, clock: Clock) -> RedisMailbox:
    return RedisMailbox(link, SMALL, clock=clock)


# The mailbox: the cases shared with SQLite run in tests/test_relay_backends.py;
# these look inside Redis.


async def test_frame_ids_grow_even_when_this_relays_clock_is_behind(
    mailbox: RedisMailbox, clock: Clock
) -> None:
    frame_id = await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.ack(ROOM, BOB, frame_id)
    clock.now -= 50
    assert await mailbox.store(ROOM, BOB, ALICE, b"z") > frame_id


async def test_frame_id_maps_to_a_stream_id_and_back() -> None:
    for stream_id in (b"1-0", b"1700000000000-5", b"17592186044415-1048575"):
        assert stream_id_of(frame_id_of(stream_id)).encode() == stream_id


async def test_purge_empties_and_forgets_fully_expired_mailboxes(
    mailbox: RedisMailbox, link: RedisLink, clock: Clock
) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"old")
    clock.now += 101
    assert await mailbox.purge_expired() == 1
    stream, sizes = link.mailbox(ROOM, BOB)
    senders = stream + b":senders"
    assert await link.client.exists(stream, sizes, senders, link.index) == 0


async def test_storing_drops_the_mailboxs_expired_frames_at_once(
    mailbox: RedisMailbox, clock: Clock
) -> None:
    for _ in range(3):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    clock.now += 101
    await mailbox.store(ROOM, BOB, ALICE, b"x")
    assert (await mailbox.depth()).frames == 1


def _bounded(link: RedisLink, clock: Clock) -> RedisMailbox:
    """A mailbox with a probation (60 s) much shorter than its ttl (1000 s)."""
    return RedisMailbox(link, BOUNDED, clock=clock)


async def test_membership_records_expire_by_themselves(
    link: RedisLink, clock: Clock
) -> None:
    # Redis removes them: unused after the probation, used after the ttl.
    mailbox = _bounded(link, clock)
    await mailbox.remember(ROOM, ALICE)
    await mailbox.remember(ROOM, BOB, used=True)
    assert 0 < await link.client.pttl(link.member(ROOM, ALICE)) <= 60_000
    assert 60_000 < await link.client.pttl(link.member(ROOM, BOB)) <= 1_000_000

    # A frame stored for Alice makes her record last the ttl too.
    await mailbox.store(ROOM, ALICE, BOB, b"x")
    assert 60_000 < await link.client.pttl(link.member(ROOM, ALICE)) <= 1_000_000


async def test_membership_records_written_before_probation_keep_the_ttl(
    link: RedisLink, clock: Clock
) -> None:
    # Such a record holds the time it was seen alone, without "used".
    await link.client.set(link.member(ROOM, BOB), repr(clock.now))
    mailbox = _bounded(link, clock)
    await mailbox.remember(ROOM, BOB)
    clock.now += 999
    assert await mailbox.is_member(ROOM, BOB)


async def test_a_frame_for_a_present_member_not_yet_recorded_marks_it_used(
    redis_server: RedisServer, link: RedisLink, clock: Clock
) -> None:
    # Bob joined on another relay, which has not written his record yet.
    await link.client.zadd(link.room(ROOM).present, {BOB: 2**50})
    mailbox = _bounded(link, clock)
    assert await mailbox.is_member(ROOM, BOB)
    await mailbox.store(ROOM, BOB, ALICE, b"x")

    # That relay's record, written now, keeps the mark: Bob lasts the ttl.
    other_link = RedisLink.open(
        redis_server.url, prefix=_prefix_of(link), timeout=2, connections=4
    )
    other = _bounded(other_link, clock)
    await other.remember(ROOM, BOB)
    await link.client.zrem(link.room(ROOM).present, BOB)
    clock.now += 999
    assert await other.is_member(ROOM, BOB)
    await other.close()


async def test_relays_sharing_a_store_never_overshoot_the_overall_cap(
    redis_server: RedisServer, link: RedisLink, clock: Clock
) -> None:
    other_link = RedisLink.open(
        redis_server.url, prefix=_prefix_of(link), timeout=2, connections=4
    )
    relays = [_bounded(link, clock), _bounded(other_link, clock)]
    stores = [
        relays[n % 2].store(ROOM, bytes([n]) * 32, ALICE, b"x") for n in range(20)
    ]
    outcomes = await asyncio.gather(*stores, return_exceptions=True)
    assert sum(isinstance(o, int) for o in outcomes) == 5
    assert all(isinstance(o, int | StorageFull) for o in outcomes)
    assert (await relays[0].depth()).frames == 5
    await other_link.close()


async def test_a_frame_stored_through_one_relay_is_fetched_through_another(
    redis_server: RedisServer, link: RedisLink, clock: Clock
) -> None:
    first = RedisMailbox(link, SMALL, clock=clock)
    other_link = RedisLink.open(
        redis_server.url, prefix=_prefix_of(link), timeout=2, connections=4
    )
    second = RedisMailbox(other_link, SMALL, clock=clock)
    frame_id = await first.store(ROOM, BOB, ALICE, b"kept")
    assert [f.frame_id for f in await second.fetch(ROOM, BOB, 0, 10)] == [frame_id]
    assert await second.ack(ROOM, BOB, frame_id)
    assert await first.fetch(ROOM, BOB, 0, 10) == []
    await second.close()


def _prefix_of(link: RedisLink) -> str:
    return link.index.decode().removesuffix(":mailboxes")


async def test_unreachable_redis_raises_storage_unavailable(clock: Clock) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    dead = RedisLink.open(url, prefix="x", timeout=0.5, connections=2)
    mailbox = RedisMailbox(
        dead, MailboxBounds(ttl=1, max_frames=1, max_bytes=1), clock=clock
    )
    with pytest.raises(StorageUnavailable):
        await mailbox.check()
    with pytest.raises(StorageUnavailable):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.close()


def test_a_url_that_is_not_redis_names_the_flag() -> None:
    with pytest.raises(StorageUnavailable, match="--redis 'http://:\\*\\*\\*@x'"):
        RedisLink.open("http://:pw@x", prefix="x", timeout=1, connections=2)


def test_urls_are_logged_without_password() -> None:
    assert redacted("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


# The fan-out: two fan-outs on one Redis are two relays.


class Recorder:
    """A `Member` recording what it is handed; tests wait on its contents."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.events: list[tuple[PresenceKind, bytes]] = []
        self.displaced_from: list[bytes] = []
        self._changed = asyncio.Event()

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)
        self._changed.set()

    def presence(self, room_id: bytes, kind: PresenceKind, address: bytes) -> None:
        self.events.append((kind, address))
        self._changed.set()

    def displaced(self, room_id: bytes) -> None:
        self.displaced_from.append(room_id)
        self._changed.set()

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds, within the test deadline."""
        async with asyncio.timeout(WAIT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def relays(
    redis_server: RedisServer, link: RedisLink
) -> AsyncIterator[list[RedisFanout]]:
    """Two connected fan-outs (fast heartbeats) sharing one key prefix."""
    opened: list[tuple[RedisLink, RedisFanout]] = []
    for _ in range(2):
        own = RedisLink.open(
            redis_server.url, prefix=_prefix_of(link), timeout=2, connections=8
        )
        mailbox = RedisMailbox(own, ROOMY)
        fanout = RedisFanout(
            own,
            mailbox,
            presence_ttl=0.6,
            presence_interval=0.1,
            timeout=2,
            backoff=0.2,
            batch=10,
        )
        fanout.start()
        opened.append((own, fanout))
    await _connected([fanout for _, fanout in opened])
    yield [fanout for _, fanout in opened]
    for own, fanout in opened:
        await fanout.close()
        await own.close()


async def _connected(fanouts: list[RedisFanout]) -> None:
    async with asyncio.timeout(WAIT):
        while not all(fanout.connected for fanout in fanouts):
            await asyncio.sleep(0.01)  # no event exposed for "subscribed"


async def test_join_lists_members_on_other_relays_and_announces(
    relays: list[RedisFanout],
) -> None:
    alice, bob = Recorder(), Recorder()
    assert await relays[0].join(ROOM, ALICE, alice, 10) == ()
    assert await relays[1].join(ROOM, BOB, bob, 10) == (ALICE,)
    await alice.wait(lambda: alice.events == [(PresenceKind.JOINED, BOB)])
    assert await relays[0].is_online(ROOM, BOB)
    assert not await relays[0].is_online(ROOM, CAROL)


async def test_leave_is_announced_on_other_relays(relays: list[RedisFanout]) -> None:
    alice, bob = Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[1].join(ROOM, BOB, bob, 10)
    await relays[1].leave(ROOM, BOB, bob)
    await alice.wait(lambda: (PresenceKind.LEFT, BOB) in alice.events)
    assert relays[1].room_count() == 0
    assert not await relays[0].is_online(ROOM, BOB)


async def test_room_full_counts_members_on_every_relay(
    relays: list[RedisFanout],
) -> None:
    await relays[0].join(ROOM, ALICE, Recorder(), 2)
    await relays[1].join(ROOM, BOB, Recorder(), 2)
    with pytest.raises(RoomFull):
        await relays[1].join(ROOM, CAROL, Recorder(), 2)


async def test_members_of_a_relay_that_stops_beating_are_announced_left(
    relays: list[RedisFanout],
) -> None:
    alice, bob = Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[1].join(ROOM, BOB, bob, 10)

    # Closing without leaving is what a killed relay looks like from Redis.
    await relays[1].close()
    await alice.wait(lambda: (PresenceKind.LEFT, BOB) in alice.events)
    assert not await relays[0].is_online(ROOM, BOB)


async def test_newer_connection_on_another_relay_displaces_the_older(
    relays: list[RedisFanout],
) -> None:
    alice, old, new = Recorder(), Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[0].join(ROOM, BOB, old, 10)
    assert await relays[1].join(ROOM, BOB, new, 10) == (ALICE,)
    await old.wait(lambda: old.displaced_from == [ROOM])

    # Nobody left: Alice saw Bob join once and never leave.
    await relays[0].leave(ROOM, BOB, old)
    assert alice.events == [(PresenceKind.JOINED, BOB)]
    assert await relays[0].is_online(ROOM, BOB)


async def test_room_frames_reach_members_on_every_relay_but_the_sender(
    relays: list[RedisFanout],
) -> None:
    alice, bob, carol = Recorder(), Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[0].join(ROOM, CAROL, carol, 10)
    await relays[1].join(ROOM, BOB, bob, 10)
    await alice.wait(lambda: (PresenceKind.JOINED, BOB) in alice.events)

    assert await relays[0].send_room(ROOM, ALICE, b"all") == 1
    await bob.wait(lambda: bob.frames == [b"all"])
    assert carol.frames == [b"all"]
    assert alice.frames == []


async def test_live_frame_for_another_relay_is_left_to_the_mailbox(
    relays: list[RedisFanout],
) -> None:
    alice, bob = Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[1].join(ROOM, BOB, bob, 10)
    await alice.wait(lambda: (PresenceKind.JOINED, BOB) in alice.events)

    live = encode_deliver(ROOM, ALICE, 0, b"live")
    assert not await relays[0].send_to(ROOM, BOB, live)
    stored = encode_deliver(ROOM, ALICE, 42, b"stored")
    assert await relays[0].send_to(ROOM, BOB, stored)
    await bob.wait(lambda: bob.frames == [stored])


async def test_frames_for_a_member_on_this_relay_go_directly(
    relays: list[RedisFanout],
) -> None:
    alice, bob = Recorder(), Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)
    await relays[0].join(ROOM, BOB, bob, 10)
    live = encode_deliver(ROOM, ALICE, 0, b"live")
    assert await relays[0].send_to(ROOM, BOB, live)
    assert bob.frames == [live]


async def test_a_lost_presence_message_heals_with_the_next_heartbeat(
    relays: list[RedisFanout], link: RedisLink
) -> None:
    alice = Recorder()
    await relays[0].join(ROOM, ALICE, alice, 10)

    # Register Carol behind every relay's back: no message is published.
    keys = link.room(ROOM)
    await link.client.zadd(keys.present, {CAROL: 2**50})
    await link.client.hset(keys.owner, CAROL, b"i" * 8)
    await link.client.set(keys.version, 2**60)
    await alice.wait(lambda: (PresenceKind.JOINED, CAROL) in alice.events)


async def test_healthy_only_while_pub_sub_listens(tmp_path: Path) -> None:
    server = RedisServer(need_binary("redis-server"), tmp_path)
    server.start()
    own = RedisLink.open(server.url, prefix="h", timeout=0.5, connections=4)
    mailbox = RedisMailbox(own, ROOMY)
    fanout = RedisFanout(
        own,
        mailbox,
        presence_ttl=0.6,
        presence_interval=0.1,
        timeout=0.5,
        backoff=0.2,
        batch=10,
    )
    fanout.start()
    try:
        await _connected([fanout])
        await fanout.check()

        # Stop and start in a thread: the fan-out's loop must keep running.
        await asyncio.to_thread(server.stop)
        async with asyncio.timeout(WAIT):
            while fanout.connected:
                await asyncio.sleep(0.01)  # no event exposed for "lost"
        with pytest.raises(StorageUnavailable):
            await fanout.check()
        await asyncio.to_thread(server.start)
        await _connected([fanout])
        await fanout.check()
        assert fanout.reconnects >= 1
    finally:
        await fanout.close()
        await own.close()
        server.stop()
