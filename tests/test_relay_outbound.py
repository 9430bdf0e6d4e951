"""The relay's outbound queue: each of its two bounds on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from server.outbound import BatchingConnection, Outbound


class StuckConnection:
    """A connection whose writes never finish, so everything put stays queued."""

    def __init__(self) -> None:
        self._never = asyncio.Event()

    def send_now(self, message: bytes) -> bool:
        return False

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        await self._never.wait()


@asynccontextmanager
async def stuck_queue(
    max_frames: int, max_bytes: int, overflows: list[None]
) -> AsyncIterator[Outbound]:
    """An Outbound on a stuck connection; its writer is cancelled on exit."""
    tasks: list[asyncio.Task[None]] = []

    def spawn(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.append(task)
        return task

    outbound = Outbound(
        cast(BatchingConnection, StuckConnection()),
        max_frames=max_frames,
        max_bytes=max_bytes,
        on_overflow=lambda: overflows.append(None),
        on_sent=lambda messages, size: None,
        spawn=spawn,
    )
    try:
        yield outbound
    finally:
        outbound.close()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_byte_bound_alone_overflows_the_queue() -> None:
    overflows: list[None] = []
    async with stuck_queue(10**6, 4096, overflows) as outbound:
        # Four 1000-byte messages fit in 4096 bytes; the fifth does not.
        assert [outbound.put(b"b" * 1000) for _ in range(5)] == [True] * 4 + [False]
        assert outbound.queued_bytes == 4000
        assert overflows == [None]
        assert not outbound.put(b"b")


async def test_frame_bound_alone_overflows_the_queue() -> None:
    overflows: list[None] = []
    async with stuck_queue(3, 10**9, overflows) as outbound:
        # No await between puts, so the writer has taken none of them yet.
        assert [outbound.put(b"f") for _ in range(4)] == [True] * 3 + [False]
        assert overflows == [None]
        assert not outbound.put(b"f")
