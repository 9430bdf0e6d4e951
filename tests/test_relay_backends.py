"""The mailbox on either backend, and the embedded in-process fan-out.

The mailbox cases run against every `Mailbox` implementation: the SQLite
one and the Redis one (on the session's real redis-server, one key prefix
per test), since both must behave the same. Cases that look inside one
store stay with that store (here for SQLite, tests/test_redis_backends.py
for Redis).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chat.envelope import PresenceKind
from server.backends.base import (
    Mailbox,
    MailboxBounds,
    MailboxDepth,
    MailboxFull,
    RoomFull,
    StorageFull,
    StorageUnavailable,
)
from server.backends.memory import MemoryFanout
from server.backends.redis import RedisLink, RedisMailbox
from server.backends.sqlite import SqliteMailbox
from server.config import RelayConfig

ROOM = b"r" * 32
OTHER_ROOM = b"o" * 32
ALICE = b"a" * 32
BOB = b"b" * 32
CAROL = b"c" * 32


class Clock:
    """A settable clock for expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


Make = Callable[[MailboxBounds], Awaitable[Mailbox]]
"""Opens a mailbox with the given bounds on the test's one store."""

SMALL = MailboxBounds(ttl=100, max_frames=3, max_bytes=10)
"""Bounds of `mailbox`: caps of one mailbox only."""

BOUNDED = MailboxBounds(
    ttl=1000,
    max_frames=10,
    max_bytes=100,
    sender_frames=2,
    sender_bytes=10,
    total_frames=5,
    total_bytes=30,
    probation=60,
)
"""Bounds of `bounded` (and of tests/test_redis_backends.py): every cap of its own."""


@pytest.fixture(params=["sqlite", "redis"])
async def make(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Make]:
    """Open mailboxes of one backend sharing one store (a file or a prefix).

    Mailboxes opened one after the other stand for a relay restarting on
    the same store, or (Redis) for several relays sharing it.
    """
    server = (
        request.getfixturevalue("redis_server") if request.param == "redis" else None
    )
    prefix = "test-" + os.urandom(6).hex()
    opened: list[Mailbox] = []

    async def open_mailbox(bounds: MailboxBounds) -> Mailbox:
        store: Mailbox
        if server is None:
            sqlite = SqliteMailbox(tmp_path / "mail.sqlite3", bounds, clock=clock)
            await sqlite.open()
            store = sqlite
        else:
            link = RedisLink.open(server.url, prefix=prefix, timeout=2, connections=4)
            store = RedisMailbox(link, bounds, clock=clock)
        opened.append(store)
        return store

    yield open_mailbox
    for store in opened:
        await store.close()


@pytest.fixture
async def mailbox(make: Make) -> Mailbox:
    return await make(SMALL)


@pytest.fixture
async def bounded(make: Make) -> Mailbox:
    return await make(BOUNDED)


# The bounds every mailbox takes.


def test_bounds_left_out_take_their_defaults() -> None:
    bounds = MailboxBounds(ttl=100, max_frames=3, max_bytes=10)
    assert (bounds.sender_frames, bounds.sender_bytes) == (3, 10)
    assert (bounds.total_frames, bounds.total_bytes) == (None, None)
    assert bounds.probation == 100


def test_probation_never_exceeds_the_ttl() -> None:
    bounds = MailboxBounds(ttl=100, max_frames=3, max_bytes=10, probation=500)
    assert bounds.probation == 100


def test_bounds_from_config_take_each_setting() -> None:
    config = RelayConfig(
        mailbox_ttl=1000,
        mailbox_max_frames=11,
        mailbox_max_bytes=12,
        mailbox_sender_frames=13,
        mailbox_sender_bytes=14,
        store_max_frames=15,
        store_max_bytes=16,
        membership_probation=17,
    )
    assert MailboxBounds.from_config(config) == MailboxBounds(
        ttl=1000,
        max_frames=11,
        max_bytes=12,
        sender_frames=13,
        sender_bytes=14,
        total_frames=15,
        total_bytes=16,
        probation=17,
    )


# The mailbox on either backend.


async def test_store_then_fetch_oldest_first(mailbox: Mailbox) -> None:
    first = await mailbox.store(ROOM, BOB, ALICE, b"one")
    second = await mailbox.store(ROOM, BOB, ALICE, b"two")
    frames = await mailbox.fetch(ROOM, BOB, 0, 10)
    assert [(f.frame_id, f.payload, f.sender) for f in frames] == [
        (first, b"one", ALICE),
        (second, b"two", ALICE),
    ]
    assert 0 < first < second


async def test_fetch_after_and_limit(mailbox: Mailbox) -> None:
    ids = [await mailbox.store(ROOM, BOB, ALICE, b"%d" % n) for n in range(3)]
    frames = await mailbox.fetch(ROOM, BOB, ids[0], 1)
    assert [f.frame_id for f in frames] == [ids[1]]


async def test_mailboxes_are_per_room_and_recipient(mailbox: Mailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"bob")
    assert await mailbox.fetch(ROOM, ALICE, 0, 10) == []
    assert await mailbox.fetch(OTHER_ROOM, BOB, 0, 10) == []


async def test_ack_deletes_only_the_owners_frame(mailbox: Mailbox) -> None:
    frame_id = await mailbox.store(ROOM, BOB, ALICE, b"x")
    assert not await mailbox.ack(ROOM, ALICE, frame_id)
    assert not await mailbox.ack(OTHER_ROOM, BOB, frame_id)
    assert await mailbox.ack(ROOM, BOB, frame_id)
    assert await mailbox.fetch(ROOM, BOB, 0, 10) == []
    assert not await mailbox.ack(ROOM, BOB, frame_id)


async def test_ack_of_any_64_bit_id_is_harmless(mailbox: Mailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"x")
    for frame_id in (1 << 40, 2**64 - 1, 2**63):
        assert not await mailbox.ack(ROOM, BOB, frame_id)
    assert len(await mailbox.fetch(ROOM, BOB, 0, 10)) == 1


async def test_frame_ids_are_never_reused(mailbox: Mailbox) -> None:
    frame_id = await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.ack(ROOM, BOB, frame_id)
    assert await mailbox.store(ROOM, BOB, ALICE, b"y") > frame_id


async def test_cap_in_frames_refuses(mailbox: Mailbox) -> None:
    for _ in range(3):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    with pytest.raises(MailboxFull, match="maximum of 3 frames"):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.store(ROOM, ALICE, BOB, b"x")


async def test_cap_in_bytes_refuses(mailbox: Mailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"123456")
    with pytest.raises(MailboxFull):
        await mailbox.store(ROOM, BOB, ALICE, b"12345")
    await mailbox.store(ROOM, BOB, ALICE, b"1234")


async def test_acked_frames_free_the_caps(mailbox: Mailbox) -> None:
    first = await mailbox.store(ROOM, BOB, ALICE, b"1234567890")
    await mailbox.ack(ROOM, BOB, first)
    await mailbox.store(ROOM, BOB, ALICE, b"1234567890")


async def test_expired_frames_vanish_and_are_purged(
    mailbox: Mailbox, clock: Clock
) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"old")
    clock.now += 50
    await mailbox.store(ROOM, BOB, ALICE, b"new")
    clock.now += 51
    assert [f.payload for f in await mailbox.fetch(ROOM, BOB, 0, 10)] == [b"new"]
    assert await mailbox.purge_expired() == 1
    assert await mailbox.depth() == MailboxDepth(frames=1, bytes=3)


async def test_expired_frames_free_the_cap(mailbox: Mailbox, clock: Clock) -> None:
    for _ in range(3):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    clock.now += 101
    await mailbox.store(ROOM, BOB, ALICE, b"x")


async def test_membership_expires_after_ttl_since_last_seen(
    mailbox: Mailbox, clock: Clock
) -> None:
    assert not await mailbox.is_member(ROOM, BOB)
    await mailbox.remember(ROOM, BOB)
    clock.now += 99
    assert await mailbox.is_member(ROOM, BOB)
    await mailbox.remember(ROOM, BOB)
    clock.now += 99
    assert await mailbox.is_member(ROOM, BOB)
    clock.now += 2
    assert not await mailbox.is_member(ROOM, BOB)
    assert not await mailbox.is_member(OTHER_ROOM, BOB)


async def test_depth_counts_frames_and_bytes(mailbox: Mailbox) -> None:
    first = await mailbox.store(ROOM, BOB, ALICE, b"123")
    await mailbox.store(ROOM, ALICE, BOB, b"45")
    depth = await mailbox.depth()
    assert (depth.frames, depth.bytes) == (2, 5)
    await mailbox.ack(ROOM, BOB, first)
    assert await mailbox.depth() == MailboxDepth(frames=1, bytes=2)


async def test_committed_frames_survive_reopening(make: Make) -> None:
    first = await make(SMALL)
    await first.store(ROOM, BOB, ALICE, b"kept")
    await first.close()

    second = await make(SMALL)
    assert [f.payload for f in await second.fetch(ROOM, BOB, 0, 10)] == [b"kept"]


async def test_one_sender_holds_only_its_share_in_frames(bounded: Mailbox) -> None:
    for _ in range(2):
        await bounded.store(ROOM, BOB, ALICE, b"x")
    with pytest.raises(MailboxFull, match="this sender holds its maximum of 2"):
        await bounded.store(ROOM, BOB, ALICE, b"x")

    # Others can still leave mail in that mailbox, and the sender elsewhere.
    await bounded.store(ROOM, BOB, CAROL, b"x")
    await bounded.store(ROOM, CAROL, ALICE, b"x")


async def test_one_sender_holds_only_its_share_in_bytes(bounded: Mailbox) -> None:
    await bounded.store(ROOM, BOB, ALICE, b"123456")
    with pytest.raises(MailboxFull, match="10 bytes in that mailbox"):
        await bounded.store(ROOM, BOB, ALICE, b"12345")
    await bounded.store(ROOM, BOB, ALICE, b"1234")


async def test_acknowledged_frames_free_the_senders_share(bounded: Mailbox) -> None:
    first = await bounded.store(ROOM, BOB, ALICE, b"x")
    await bounded.store(ROOM, BOB, ALICE, b"x")
    assert await bounded.ack(ROOM, BOB, first)
    await bounded.store(ROOM, BOB, ALICE, b"x")


async def test_expired_frames_free_the_senders_share(
    bounded: Mailbox, clock: Clock
) -> None:
    for _ in range(2):
        await bounded.store(ROOM, BOB, ALICE, b"x")
    clock.now += 1001
    await bounded.purge_expired()
    await bounded.store(ROOM, BOB, ALICE, b"x")


async def test_overall_cap_in_frames_refuses_every_mailbox(bounded: Mailbox) -> None:
    recipients = [bytes([n]) * 32 for n in range(5)]
    ids = [await bounded.store(ROOM, r, ALICE, b"x") for r in recipients]
    with pytest.raises(StorageFull, match="overall maximum"):
        await bounded.store(ROOM, CAROL, BOB, b"x")

    # An acknowledged frame makes room again; the store stays healthy.
    await bounded.check()
    assert await bounded.ack(ROOM, recipients[0], ids[0])
    await bounded.store(ROOM, CAROL, BOB, b"x")


async def test_overall_cap_in_bytes_refuses(bounded: Mailbox) -> None:
    for recipient in (ALICE, BOB, CAROL):
        await bounded.store(ROOM, recipient, b"s" * 32, b"123456789")
    with pytest.raises(StorageFull):
        await bounded.store(ROOM, b"d" * 32, b"s" * 32, b"1234")
    await bounded.store(ROOM, b"d" * 32, b"s" * 32, b"123")


async def test_purge_frees_the_overall_cap(bounded: Mailbox, clock: Clock) -> None:
    for n in range(5):
        await bounded.store(ROOM, bytes([n]) * 32, ALICE, b"x")
    clock.now += 1001
    assert await bounded.purge_expired() == 5
    assert (await bounded.depth()).frames == 0
    await bounded.store(ROOM, BOB, ALICE, b"x")


async def test_overall_cap_counts_frames_kept_before_reopening(make: Make) -> None:
    first = await make(BOUNDED)
    for n in range(5):
        await first.store(ROOM, bytes([n]) * 32, ALICE, b"x")
    await first.close()

    second = await make(BOUNDED)
    with pytest.raises(StorageFull):
        await second.store(ROOM, BOB, ALICE, b"x")
    assert await second.depth() == MailboxDepth(frames=5, bytes=5)


async def test_unused_membership_expires_after_probation(
    bounded: Mailbox, clock: Clock
) -> None:
    await bounded.remember(ROOM, BOB)
    clock.now += 59
    assert await bounded.is_member(ROOM, BOB)
    clock.now += 2
    assert not await bounded.is_member(ROOM, BOB)


async def test_membership_used_by_sending_lasts_the_ttl(
    bounded: Mailbox, clock: Clock
) -> None:
    await bounded.remember(ROOM, BOB)
    await bounded.remember(ROOM, BOB, used=True)
    await bounded.remember(ROOM, BOB)
    clock.now += 999
    assert await bounded.is_member(ROOM, BOB)
    clock.now += 2
    assert not await bounded.is_member(ROOM, BOB)


async def test_membership_used_by_a_stored_frame_lasts_the_ttl(
    bounded: Mailbox, clock: Clock
) -> None:
    await bounded.remember(ROOM, BOB)
    await bounded.store(ROOM, BOB, ALICE, b"x")
    clock.now += 999
    assert await bounded.is_member(ROOM, BOB)


async def test_expired_membership_comes_back_unused(
    bounded: Mailbox, clock: Clock
) -> None:
    await bounded.remember(ROOM, BOB, used=True)
    clock.now += 1001
    await bounded.remember(ROOM, BOB)
    clock.now += 61
    assert not await bounded.is_member(ROOM, BOB)


# The SQLite file itself.


def _sqlite(tmp_path: Path, clock: Clock) -> SqliteMailbox:
    return SqliteMailbox(tmp_path / "bounded.sqlite3", BOUNDED, clock=clock)


async def test_purge_removes_unused_memberships_after_probation(
    clock: Clock, tmp_path: Path
) -> None:
    store = _sqlite(tmp_path, clock)
    await store.open()
    await store.remember(ROOM, ALICE)
    await store.remember(ROOM, BOB, used=True)
    clock.now += 61
    await store.purge_expired()
    await store.close()
    with sqlite3.connect(tmp_path / "bounded.sqlite3") as db:
        rows = db.execute("SELECT address FROM members").fetchall()
    assert rows == [(BOB,)]


async def test_memberships_of_an_older_file_keep_the_ttl(
    tmp_path: Path, clock: Clock
) -> None:
    # A file written before memberships could be unused: no "used" column.
    path = tmp_path / "bounded.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE members (room BLOB NOT NULL, address BLOB NOT NULL,"
            " seen REAL NOT NULL, PRIMARY KEY (room, address)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO members VALUES (?, ?, ?)", (ROOM, BOB, clock.now))
    db.close()

    store = _sqlite(tmp_path, clock)
    await store.open()
    clock.now += 999
    assert await store.is_member(ROOM, BOB)
    await store.close()


async def test_closed_store_raises_storage_unavailable(
    tmp_path: Path, clock: Clock
) -> None:
    store = _sqlite(tmp_path, clock)
    await store.open()
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.check()
    with pytest.raises(StorageUnavailable):
        await store.store(ROOM, BOB, ALICE, b"x")


async def test_unopenable_store_raises_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    bounds = MailboxBounds(ttl=1, max_frames=1, max_bytes=1)
    store = SqliteMailbox(blocker / "mail.sqlite3", bounds)
    with pytest.raises(StorageUnavailable):
        await store.open()
    await store.close()


class Recorder:
    """A `Member` that records what the fan-out hands it."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.events: list[tuple[PresenceKind, bytes]] = []
        self.displaced_from: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def presence(self, room_id: bytes, kind: PresenceKind, address: bytes) -> None:
        self.events.append((kind, address))

    def displaced(self, room_id: bytes) -> None:
        self.displaced_from.append(room_id)


async def test_fanout_join_lists_others_and_announces() -> None:
    fanout = MemoryFanout()
    alice, bob = Recorder(), Recorder()
    assert await fanout.join(ROOM, ALICE, alice, 10) == ()
    assert await fanout.join(ROOM, BOB, bob, 10) == (ALICE,)
    assert alice.events == [(PresenceKind.JOINED, BOB)]
    assert bob.events == []
    assert await fanout.is_online(ROOM, BOB)
    assert fanout.room_count() == 1


async def test_fanout_leave_announces_and_forgets_empty_rooms() -> None:
    fanout = MemoryFanout()
    alice, bob = Recorder(), Recorder()
    await fanout.join(ROOM, ALICE, alice, 10)
    await fanout.join(ROOM, BOB, bob, 10)
    await fanout.leave(ROOM, BOB, bob)
    assert alice.events[-1] == (PresenceKind.LEFT, BOB)
    assert not await fanout.is_online(ROOM, BOB)
    await fanout.leave(ROOM, ALICE, alice)
    assert fanout.room_count() == 0


async def test_fanout_room_full() -> None:
    fanout = MemoryFanout()
    await fanout.join(ROOM, ALICE, Recorder(), 1)
    with pytest.raises(RoomFull):
        await fanout.join(ROOM, BOB, Recorder(), 1)


async def test_fanout_send_to_and_send_room() -> None:
    fanout = MemoryFanout()
    alice, bob = Recorder(), Recorder()
    await fanout.join(ROOM, ALICE, alice, 10)
    await fanout.join(ROOM, BOB, bob, 10)
    assert await fanout.send_to(ROOM, BOB, b"one")
    assert not await fanout.send_to(ROOM, b"z" * 32, b"two")
    assert await fanout.send_room(ROOM, ALICE, b"all") == 1
    assert bob.frames == [b"one", b"all"]
    assert alice.frames == []


async def test_fanout_newer_member_displaces_older_silently() -> None:
    fanout = MemoryFanout()
    alice, old, new = Recorder(), Recorder(), Recorder()
    await fanout.join(ROOM, ALICE, alice, 2)
    await fanout.join(ROOM, BOB, old, 2)
    assert await fanout.join(ROOM, BOB, new, 2) == (ALICE,)
    assert old.displaced_from == [ROOM]
    assert alice.events == [(PresenceKind.JOINED, BOB)]

    # The displaced member leaving changes nothing.
    await fanout.leave(ROOM, BOB, old)
    assert await fanout.send_to(ROOM, BOB, b"x")
    assert new.frames == [b"x"]
