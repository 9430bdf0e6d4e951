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
    Mailbox,
    MailboxDepth,
    MailboxFull,
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
"""


class SqliteMailbox(Mailbox):
    """Mailboxes in one SQLite file.

    Args:
        path: the database file; its directory is created if missing.
        ttl: seconds a frame or a membership is kept (see `Mailbox`).
        max_frames: most frames one mailbox holds.
        max_bytes: most payload bytes one mailbox holds.
        clock: returns the time in seconds; injected by tests.
    """

    def __init__(
        self,
        path: Path,
        *,
        ttl: float,
        max_frames: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._ttl = ttl
        self._max_frames = max_frames
        self._max_bytes = max_bytes
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
        return self._clock() - self._ttl

    async def remember(self, room_id: bytes, address: bytes) -> None:
        """See `Mailbox.remember`."""
        now = self._clock()
        await self._run(
            lambda: self._conn.execute(
                "INSERT INTO members VALUES (?, ?, ?)"
                " ON CONFLICT (room, address) DO UPDATE SET seen = excluded.seen",
                (room_id, address, now),
            )
        )

    async def is_member(self, room_id: bytes, address: bytes) -> bool:
        """See `Mailbox.is_member`."""
        cutoff = self._cutoff()
        row = await self._run(
            lambda: self._conn.execute(
                "SELECT 1 FROM members WHERE room = ? AND address = ? AND seen > ?",
                (room_id, address, cutoff),
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
        if frame_id is None:
            raise MailboxFull(
                f"mailbox holds its maximum of {self._max_frames} frames"
                f" or {self._max_bytes} bytes; the recipient must fetch first"
            )
        return frame_id

    def _store(
        self,
        room_id: bytes,
        recipient: bytes,
        sender: bytes,
        payload: bytes,
        now: float,
    ) -> int | None:
        """Check the caps and insert in one immediate transaction."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            frames, size = db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
                " WHERE room = ? AND recipient = ? AND stored > ?",
                (room_id, recipient, now - self._ttl),
            ).fetchone()
            if frames + 1 > self._max_frames or size + len(payload) > self._max_bytes:
                db.execute("ROLLBACK")
                return None
            cursor = db.execute(
                "INSERT INTO frames (room, recipient, sender, payload, stored)"
                " VALUES (?, ?, ?, ?, ?)",
                (room_id, recipient, sender, payload, now),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        frame_id = cursor.lastrowid
        assert frame_id is not None
        return frame_id

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
        count = await self._run(
            lambda: (
                self._conn.execute(
                    "DELETE FROM frames WHERE id = ? AND room = ? AND recipient = ?",
                    (frame_id, room_id, address),
                ).rowcount
            )
        )
        return count > 0

    async def purge_expired(self) -> int:
        """See `Mailbox.purge_expired`."""
        cutoff = self._cutoff()
        return await self._run(lambda: self._purge(cutoff))

    def _purge(self, cutoff: float) -> int:
        db = self._conn
        with db:
            db.execute("BEGIN IMMEDIATE")
            removed = db.execute("DELETE FROM frames WHERE stored <= ?", (cutoff,))
            db.execute("DELETE FROM members WHERE seen <= ?", (cutoff,))
        return removed.rowcount

    async def depth(self) -> MailboxDepth:
        """See `Mailbox.depth`."""
        frames, size = await self._run(
            lambda: self._conn.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
            ).fetchone()
        )
        return MailboxDepth(frames=frames, bytes=size)

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
