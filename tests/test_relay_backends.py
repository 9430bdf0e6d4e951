"""The embedded backends: SQLite mailbox and in-process fan-out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat.envelope import PresenceKind
from server.backends.base import MailboxFull, RoomFull, StorageUnavailable
from server.backends.memory import MemoryFanout
from server.backends.sqlite import SqliteMailbox

ROOM = b"r" * 32
OTHER_ROOM = b"o" * 32
ALICE = b"a" * 32
BOB = b"b" * 32


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
async def mailbox(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteMailbox]:
    store = SqliteMailbox(
        tmp_path / "mail.sqlite3", ttl=100, max_frames=3, max_bytes=10, clock=clock
    )
    await store.open()
    yield store
    await store.close()


async def test_store_then_fetch_oldest_first(mailbox: SqliteMailbox) -> None:
    first = await mailbox.store(ROOM, BOB, ALICE, b"one")
    second = await mailbox.store(ROOM, BOB, ALICE, b"two")
    frames = await mailbox.fetch(ROOM, BOB, 0, 10)
    assert [(f.frame_id, f.payload, f.sender) for f in frames] == [
        (first, b"one", ALICE),
        (second, b"two", ALICE),
    ]
    assert 0 < first < second


async def test_fetch_after_and_limit(mailbox: SqliteMailbox) -> None:
    ids = [await mailbox.store(ROOM, BOB, ALICE, b"%d" % n) for n in range(3)]
    frames = await mailbox.fetch(ROOM, BOB, ids[0], 1)
    assert [f.frame_id for f in frames] == [ids[1]]


async def test_mailboxes_are_per_room_and_recipient(mailbox: SqliteMailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"bob")
    assert await mailbox.fetch(ROOM, ALICE, 0, 10) == []
    assert await mailbox.fetch(OTHER_ROOM, BOB, 0, 10) == []


async def test_ack_deletes_only_the_owners_frame(mailbox: SqliteMailbox) -> None:
    frame_id = await mailbox.store(ROOM, BOB, ALICE, b"x")
    assert not await mailbox.ack(ROOM, ALICE, frame_id)
    assert not await mailbox.ack(OTHER_ROOM, BOB, frame_id)
    assert await mailbox.ack(ROOM, BOB, frame_id)
    assert await mailbox.fetch(ROOM, BOB, 0, 10) == []
    assert not await mailbox.ack(ROOM, BOB, frame_id)


async def test_frame_ids_are_never_reused(mailbox: SqliteMailbox) -> None:
    frame_id = await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.ack(ROOM, BOB, frame_id)
    assert await mailbox.store(ROOM, BOB, ALICE, b"y") > frame_id


async def test_cap_in_frames_refuses(mailbox: SqliteMailbox) -> None:
    for _ in range(3):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    with pytest.raises(MailboxFull, match="maximum of 3 frames"):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    await mailbox.store(ROOM, ALICE, BOB, b"x")


async def test_cap_in_bytes_refuses(mailbox: SqliteMailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"123456")
    with pytest.raises(MailboxFull):
        await mailbox.store(ROOM, BOB, ALICE, b"12345")
    await mailbox.store(ROOM, BOB, ALICE, b"1234")


async def test_expired_frames_vanish_and_are_purged(
    mailbox: SqliteMailbox, clock: Clock
) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"old")
    clock.now += 50
    await mailbox.store(ROOM, BOB, ALICE, b"new")
    clock.now += 51
    assert [f.payload for f in await mailbox.fetch(ROOM, BOB, 0, 10)] == [b"new"]
    assert await mailbox.purge_expired() == 1
    assert (await mailbox.depth()).frames == 1


async def test_expired_frames_free_the_cap(
    mailbox: SqliteMailbox, clock: Clock
) -> None:
    for _ in range(3):
        await mailbox.store(ROOM, BOB, ALICE, b"x")
    clock.now += 101
    await mailbox.store(ROOM, BOB, ALICE, b"x")


async def test_membership_expires_after_ttl_since_last_seen(
    mailbox: SqliteMailbox, clock: Clock
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


async def test_depth_counts_frames_and_bytes(mailbox: SqliteMailbox) -> None:
    await mailbox.store(ROOM, BOB, ALICE, b"123")
    await mailbox.store(ROOM, ALICE, BOB, b"45")
    depth = await mailbox.depth()
    assert (depth.frames, depth.bytes) == (2, 5)


async def test_committed_frames_survive_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "mail.sqlite3"
    first = SqliteMailbox(path, ttl=100, max_frames=3, max_bytes=10, clock=clock)
    await first.open()
    await first.store(ROOM, BOB, ALICE, b"kept")
    await first.close()

    second = SqliteMailbox(path, ttl=100, max_frames=3, max_bytes=10, clock=clock)
    await second.open()
    assert [f.payload for f in await second.fetch(ROOM, BOB, 0, 10)] == [b"kept"]
    await second.close()


async def test_closed_store_raises_storage_unavailable(mailbox: SqliteMailbox) -> None:
    await mailbox.close()
    with pytest.raises(StorageUnavailable):
        await mailbox.check()
    with pytest.raises(StorageUnavailable):
        await mailbox.store(ROOM, BOB, ALICE, b"x")


async def test_unopenable_store_raises_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SqliteMailbox(blocker / "mail.sqlite3", ttl=1, max_frames=1, max_bytes=1)
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
