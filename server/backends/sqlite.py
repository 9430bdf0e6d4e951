"""SQLite mailbox: the embedded, durable `Mailbox` in the relay's data dir.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and
every write is its own transaction, committed before the coroutine returns;
the relay tells a sender "stored" only after that. A relay killed at any
moment therefore loses no frame it acknowledged.

Threading: sqlite3 calls block, so they all run on one dedicated worker
thread (one connection, used by that thread only), never on the event loop.
Each call is one short transaction; calls queue on the worker in order.

Frame ids come from an AUTOINCREMENT key, so an id is never reused, even
after deletion: a late ACK can never delete a newer frame.

The overall cap is checked against running totals of the frames and bytes
held, counted once when the file is opened and kept up to date by every
write; they are exact because this process is the only writer of the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from server.backends.base import (
    BackendError,
    Mailbox,
    MailboxBounds,
    MailboxDepth,
    MailboxFull,
    StorageFull,
    StorageUnavailable,
    StoredFrame,
)

__all__ = ["SqliteMailbox"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    room BLOB NOT NULL,
    address BLOB NOT NULL,
    seen REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room BLOB NOT NULL,
    recipient BLOB NOT NULL,
    sender BLOB NOT NULL,
    payload BLOB NOT NULL,
    stored REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_by_mailbox ON frames (room, recipient, id);
CREATE INDEX IF NOT EXISTS frames_by_age ON frames (stored);
CREATE INDEX IF NOT EXISTS frames_by_sender ON frames (room, recipient, sender);
"""

_ADD_USED = "ALTER TABLE members ADD COLUMN used INTEGER NOT NULL DEFAULT 1"
"""Files made before memberships could be unused: keep theirs for the TTL."""


class SqliteMailbox(Mailbox):
    """Mailboxes in one SQLite file.

    Args:
        path: the database file; its directory is created if missing.
        bounds: how long records are kept and how much the mailboxes hold.
        clock: returns the time in seconds; injected by tests.
    """

    def __init__(
        self,
        path: Path,
        bounds: MailboxBounds,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._bounds = bounds
        self._held = MailboxDepth(frames=0, bytes=0)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailbox")

    async def open(self) -> None:
        """Create or open the database.

        Raises:
            StorageUnavailable: the file cannot be created or opened.
        """
        await self._run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(members)")}
        if "used" not in columns:
            db.execute(_ADD_USED)
        self._held = _count(db)
        self._db = db

    async def _run(self, call: Callable[[], T]) -> T:
        """Run one blocking call on the worker; map sqlite errors at one seam."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, call)
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"mailbox store failed: {exc}") from exc
        except RuntimeError as exc:
            # The worker was shut down by close().
            raise StorageUnavailable("mailbox store is closed") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("mailbox store is not open")
        return self._db

    def _cutoff(self) -> float:
        return self._clock() - self._bounds.ttl

    def _probation_cutoff(self) -> float:
        return self._clock() - self._bounds.probation

    async def remember(
        self, room_id: bytes, address: bytes, *, used: bool = False
    ) -> None:
        """See `Mailbox.remember`."""
        now = self._clock()

        # A record that expired but was not purged yet starts afresh: it
        # must not bring back a "used" mark older than the TTL.
        cutoff = self._cutoff()
        await self._run(
            lambda: self._conn.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?)"
                " ON CONFLICT (room, address) DO UPDATE SET"
                " used = excluded.used OR (used AND seen > ?),"
                " seen = excluded.seen",
                (room_id, address, now, int(used), cutoff),
            )
        )

    async def is_member(self, room_id: bytes, address: bytes) -> bool:
        """See `Mailbox.is_member`: used for `ttl`, unused for `probation`."""
        cutoff, probation = self._cutoff(), self._probation_cutoff()
        row = await self._run(
            lambda: self._conn.execute(
                "SELECT 1 FROM members WHERE room = ? AND address = ?"
                " AND seen > ? AND (used OR seen > ?)",
                (room_id, address, cutoff, probation),
            ).fetchone()
        )
        return row is not None

    async def store(
        self, room_id: bytes, recipient: bytes, sender: bytes, payload: bytes
    ) -> int:
        """See `Mailbox.store`."""
        now = self._clock()
        frame_id = await self._run(
            lambda: self._store(room_id, recipient, sender, payload, now)
        )
        if isinstance(frame_id, BackendError):
            raise frame_id
        return frame_id

    def _store(
        self,
        room_id: bytes,
        recipient: bytes,
        sender: bytes,
        payload: bytes,
        now: float,
    ) -> int | BackendError:
        """Check the caps and insert in one immediate transaction.

        Returns:
            The new frame's id, or the refusal to raise on the event loop.
        """
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            refusal = self._refusal(
                db, room_id, recipient, sender, size=len(payload), now=now
            )
            if refusal is not None:
                db.execute("ROLLBACK")
                return refusal
            cursor = db.execute(
                "INSERT INTO frames (room, recipient, sender, payload, stored)"
                " VALUES (?, ?, ?, ?, ?)",
                (room_id, recipient, sender, payload, now),
            )

            # A frame waiting for the recipient makes its membership used.
            db.execute(
                "UPDATE members SET used = 1"
                " WHERE room = ? AND address = ? AND NOT used",
                (room_id, recipient),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._held = MailboxDepth(
            self._held.frames + 1, self._held.bytes + len(payload)
        )
        frame_id = cursor.lastrowid
        assert frame_id is not None
        return frame_id

    def _refusal(
        self,
        db: sqlite3.Connection,
        room_id: bytes,
        recipient: bytes,
        sender: bytes,
        *,
        size: int,
        now: float,
    ) -> BackendError | None:
        """Why a frame of `size` bytes may not be stored now, if it may not."""
        # The overall cap first: it costs no query.
        bounds, held = self._bounds, self._held
        if (bounds.total_frames is not None and held.frames >= bounds.total_frames) or (
            bounds.total_bytes is not None and held.bytes + size > bounds.total_bytes
        ):
            return StorageFull(
                "the relay's store holds its overall maximum of frames or bytes;"
                " try again once recipients have fetched their mail"
            )

        cutoff = now - bounds.ttl
        frames, total = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
            " WHERE room = ? AND recipient = ? AND stored > ?",
            (room_id, recipient, cutoff),
        ).fetchone()
        if frames + 1 > bounds.max_frames or total + size > bounds.max_bytes:
            return MailboxFull(
                f"mailbox holds its maximum of {bounds.max_frames} frames"
                f" or {bounds.max_bytes} bytes; the recipient must fetch first"
            )

        # One sender may take only its share, so others can still leave mail.
        frames, total = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
            " WHERE room = ? AND recipient = ? AND sender = ? AND stored > ?",
            (room_id, recipient, sender, cutoff),
        ).fetchone()
        if frames + 1 > bounds.sender_frames or total + size > bounds.sender_bytes:
            return MailboxFull(
                f"this sender holds its maximum of {bounds.sender_frames} frames"
                f" or {bounds.sender_bytes} bytes in that mailbox;"
                " the recipient must fetch first"
            )
        return None

    async def fetch(
        self, room_id: bytes, address: bytes, after: int, limit: int
    ) -> Sequence[StoredFrame]:
        """See `Mailbox.fetch`."""
        cutoff = self._cutoff()
        rows = await self._run(
            lambda: self._conn.execute(
                "SELECT id, sender, payload FROM frames"
                " WHERE room = ? AND recipient = ? AND id > ? AND stored > ?"
                " ORDER BY id LIMIT ?",
                (room_id, address, after, cutoff, limit),
            ).fetchall()
        )
        return [StoredFrame(row[0], room_id, row[1], row[2]) for row in rows]

    async def ack(self, room_id: bytes, address: bytes, frame_id: int) -> bool:
        """See `Mailbox.ack`."""
        # SQLite integers are signed: no stored id is that large, and binding
        # one would fail outside the errors mapped to StorageUnavailable.
        if frame_id >= 1 << 63:
            return False
        return await self._run(lambda: self._ack(room_id, address, frame_id))

    def _ack(self, room_id: bytes, address: bytes, frame_id: int) -> bool:
        row = self._conn.execute(
            "DELETE FROM frames WHERE id = ? AND room = ? AND recipient = ?"
            " RETURNING length(payload)",
            (frame_id, room_id, address),
        ).fetchone()
        if row is None:
            return False
        self._held = MailboxDepth(self._held.frames - 1, self._held.bytes - row[0])
        return True

    async def purge_expired(self) -> int:
        """See `Mailbox.purge_expired`."""
        cutoff, probation = self._cutoff(), self._probation_cutoff()
        return await self._run(lambda: self._purge(cutoff, probation))

    def _purge(self, cutoff: float, probation: float) -> int:
        db = self._conn
        with db:
            db.execute("BEGIN IMMEDIATE")
            removed = db.execute("DELETE FROM frames WHERE stored <= ?", (cutoff,))
            db.execute(
                "DELETE FROM members WHERE seen <= ? OR (NOT used AND seen <= ?)",
                (cutoff, probation),
            )
        self._held = _count(db)
        return removed.rowcount

    async def depth(self) -> MailboxDepth:
        """See `Mailbox.depth`: the running totals, read on the worker."""
        return await self._run(lambda: self._held)

    async def check(self) -> None:
        """See `Mailbox.check`."""
        await self._run(lambda: self._conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """See `Mailbox.close`: waits for queued writes, then closes the file."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._worker, self._close)
        self._worker.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _count(db: sqlite3.Connection) -> MailboxDepth:
    """Count every frame and payload byte held (at open and after a purge)."""
    frames, size = db.execute(
        "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
    ).fetchone()
    return MailboxDepth(frames=frames, bytes=size)
