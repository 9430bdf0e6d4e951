"""The relay's connection to Redis: one client, the key names, one error seam.

Every Redis call of the backends goes through `RedisLink.call`, which turns
any failure of Redis (refused, reset, timed out, a script error) into
`StorageUnavailable`, so the relay refuses instead of dropping (see
`server.backends.base`).

The client never retries on its own: a failed command fails at once, within
``--redis-timeout``. Command connections are re-opened by the next command;
the pub/sub connection is re-opened by the fan-out with bounded backoff.

Key layout (``P`` is ``--redis-prefix``; ``{R}`` the room id in hex inside
braces, so that every key and channel of one room hashes to one slot)::

    P:room:{R}:present      sorted set: address -> presence deadline (ms)
    P:room:{R}:owner        hash: address -> instance of the member's join
    P:room:{R}:version      presence version (microseconds, increasing)
    P:room:{R}:events       sharded pub/sub channel of the room
    P:member:{R}:A          membership record of address A (seen:used)
    P:mailbox:{R}:A         stream: the mailbox of address A
    P:mailbox:{R}:A:bytes   payload bytes held in that mailbox
    P:mailbox:{R}:A:senders hash: frames and bytes of each sender in it
    P:mailboxes             sorted set: mailbox key -> oldest frame (ms)
    P:depth                 hash: frames and bytes held in all mailboxes
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from server.backends.base import StorageUnavailable

__all__ = ["RedisLink", "RoomKeys", "redacted"]

logger = logging.getLogger("server.relay")

T = TypeVar("T")

BATCH_COMMANDS = 256
"""Most commands sent to Redis in one pipeline by `RedisLink.batched`."""

PIPELINES = 4
"""Most pipelines `RedisLink.batched` has in flight at once."""


@dataclass(slots=True)
class _Queued:
    """A command waiting for the next pipeline, and who waits for it."""

    command: tuple[Any, ...]
    future: asyncio.Future[Any]
    retry: Callable[[], Awaitable[Any]] | None


def redacted(url: str) -> str:
    """The Redis URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


@dataclass(frozen=True, slots=True)
class RoomKeys:
    """The presence keys and the channel of one room."""

    present: bytes
    owner: bytes
    version: bytes
    channel: bytes


class RedisLink:
    """One Redis client shared by the mailbox and the fan-out.

    Args:
        client: a redis-py asyncio client (see `open`).
        prefix: prefix of every key and channel.
    """

    def __init__(
        self, client: aioredis.Redis, listener: aioredis.Redis, prefix: str
    ) -> None:
        self.client = client
        self.listener = listener
        self._prefix = prefix.encode()
        self.index = self._prefix + b":mailboxes"
        self.depth = self._prefix + b":depth"
        self._closed = False
        self._queue: list[_Queued] = []
        self._flushers: set[asyncio.Task[None]] = set()

    @classmethod
    def open(
        cls, url: str, *, prefix: str, timeout: float, connections: int
    ) -> RedisLink:
        """Make a client for `url`; connects lazily, on the first command.

        Raises:
            StorageUnavailable: `url` is not a Redis URL.
        """
        # Pub/sub gets a pool of its own: a connection in subscribed mode
        # must never be handed to a command.
        pools = []
        for size in (connections - 1, 1):
            try:
                pool = aioredis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=size,
                    timeout=timeout,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),
                    protocol=2,
                )
            except ValueError as exc:
                raise StorageUnavailable(
                    f"--redis {redacted(url)!r} is not a Redis URL ({exc});"
                    " use redis://host:port/db"
                ) from exc
            pools.append(aioredis.Redis(connection_pool=pool))
        return cls(pools[0], pools[1], prefix)

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await one Redis operation; map its failures to `StorageUnavailable`."""
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(
                f"Redis failed: {exc or type(exc).__name__}"
            ) from exc

    async def batched(
        self, *command: Any, retry: Callable[[], Awaitable[Any]] | None = None
    ) -> Any:
        """Run one command in a pipeline with those issued meanwhile.

        The forwarding path sends one or two commands per frame; each alone
        costs a system call and a wake-up on both sides. Commands issued
        while `PIPELINES` pipelines are in flight go together in the next
        one, so under load many frames share one round trip, as in
        server.outbound.

        Args:
            command: the command and its arguments.
            retry: run instead if Redis answers NOSCRIPT (it restarted and
                forgot a script); it loads the script and runs it.

        Raises:
            StorageUnavailable: the command or the pipeline failed.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Queued(command, future, retry))
        if len(self._flushers) < PIPELINES:
            flusher = loop.create_task(self._flush())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await self.call(future)

    async def run_script(
        self, script: AsyncScript, keys: Sequence[bytes], args: Sequence[Any]
    ) -> Any:
        """Run a registered script through `batched` (EVALSHA)."""
        return await self.batched(
            "EVALSHA",
            script.sha,
            len(keys),
            *keys,
            *args,
            retry=lambda: script(keys=list(keys), args=list(args)),
        )

    async def _flush(self) -> None:
        """Send queued commands, one pipeline at a time, until none is left."""
        while self._queue:
            batch = self._queue[:BATCH_COMMANDS]
            del self._queue[:BATCH_COMMANDS]
            pipeline = self.client.pipeline(transaction=False)
            for item in batch:
                pipeline.execute_command(*item.command)
            try:
                results = await pipeline.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                for item in batch:
                    _settle(item.future, exc)
                continue
            except BaseException as exc:
                for item in batch:
                    _settle(
                        item.future, StorageUnavailable(f"pipeline stopped: {exc!r}")
                    )
                raise
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, NoScriptError) and item.retry is not None:
                    self._retry(item)
                else:
                    _settle(item.future, result)

    def _retry(self, item: _Queued) -> None:
        """Run a script Redis forgot on its own (it is loaded again)."""
        assert item.retry is not None
        retry = item.retry

        async def again() -> None:
            try:
                _settle(item.future, await retry())
            except (RedisError, OSError) as exc:
                _settle(item.future, exc)

        asyncio.get_running_loop().create_task(again())

    async def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            StorageUnavailable: it does not.
        """
        await self.call(self.client.ping())

    async def close(self) -> None:
        """Close every connection to Redis. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose(close_connection_pool=True)
        await self.listener.aclose(close_connection_pool=True)

    # Key names.

    def _tag(self, room_id: bytes) -> bytes:
        return b"{" + room_id.hex().encode() + b"}"

    def room(self, room_id: bytes) -> RoomKeys:
        """The presence keys and the channel of `room_id`."""
        base = self._prefix + b":room:" + self._tag(room_id)
        return RoomKeys(
            base + b":present", base + b":owner", base + b":version", base + b":events"
        )

    def member(self, room_id: bytes, address: bytes) -> bytes:
        """The membership record of `address` in `room_id`."""
        return (
            self._prefix
            + b":member:"
            + self._tag(room_id)
            + b":"
            + address.hex().encode()
        )

    def mailbox(self, room_id: bytes, address: bytes) -> tuple[bytes, bytes]:
        """The mailbox stream of `address` in `room_id` and its byte count."""
        key = (
            self._prefix
            + b":mailbox:"
            + self._tag(room_id)
            + b":"
            + address.hex().encode()
        )
        return key, key + b":bytes"

    def script(self, source: str) -> Any:
        """Register a Lua script (sent with EVALSHA, re-loaded if Redis forgot it)."""
        return self.client.register_script(source)


def _settle(future: asyncio.Future[Any], outcome: object) -> None:
    """Resolve `future` with a result or an exception, unless it is done."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
