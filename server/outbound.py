"""The outbound side of a connection: a bounded queue and its writer task.

Nothing on the forwarding path ever waits for a client to read. Frames for a
connection go into its queue (a plain deque, bounded in frames and bytes);
the connection's own writer task takes everything queued and writes it in
one batch: one WebSocket frame per message, but one write to the socket for
the whole batch. A consumer that cannot keep up fills its queue and is
disconnected with close code 4000; the sender and the rest of the room are
never slowed down (see protocol.md, "Envelope (relay protocol)", close codes).

Batching is also why the relay can forward faster than a naive forwarder that
awaits each send: under load, many frames share one system call.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

__all__ = ["BATCH_BYTES", "BatchingConnection", "Outbound"]

BATCH_BYTES = 64 * 1024
"""Most bytes written to the socket in one batch."""


class BatchingConnection(ServerConnection):
    """A server connection that writes a batch of messages in one write.

    websockets serializes and writes each outgoing frame on its own; with an
    empty transport buffer each write is a system call. `send_batch` frames
    the whole batch itself (server frames are unmasked and unfragmented:
    RFC 6455 section 5.2) and hands it to the transport in one write, inside
    websockets' own send context, which checks that the connection is open
    and applies its flow control (drain) afterwards. Control frames
    (pings, pongs, close) are still written by websockets, whole, between
    batches.
    """

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        """Send each of `messages` as one binary message, in one write.

        Raises:
            websockets.exceptions.ConnectionClosed: the connection is closed.
        """
        async with self.send_context():
            self.transport.write(b"".join(_framed(messages)))

    def send_now(self, message: bytes) -> bool:
        """Write one message at once if nothing else is waiting to be written.

        Returns:
            False, having written nothing, if the connection is not open or
            the transport still holds unwritten data (the caller queues the
            message for the writer, which respects flow control).
        """
        if (
            self.protocol.state is not State.OPEN
            or self.transport.get_write_buffer_size()
        ):
            return False
        self.transport.write(b"".join(_framed((message,))))
        return True


_SHORT = struct.Struct(">BB")
_MEDIUM = struct.Struct(">BBH")
_LONG = struct.Struct(">BBQ")
_BINARY_FIN = 0x82


def _framed(messages: Sequence[bytes]) -> Iterator[bytes]:
    """Header and payload of one final binary frame per message."""
    for message in messages:
        size = len(message)
        if size < 126:
            yield _SHORT.pack(_BINARY_FIN, size)
        elif size < 65536:
            yield _MEDIUM.pack(_BINARY_FIN, 126, size)
        else:
            yield _LONG.pack(_BINARY_FIN, 127, size)
        yield message


class Outbound:
    """Bounded queue of messages for one connection, and its writer task.

    The writer task runs only while messages are queued, so an idle
    connection costs no task. A message put while nothing is queued or being
    written goes out at once (`BatchingConnection.send_now`), once per turn
    of the event loop; the rest of a burst is queued, and the writer sends it
    in one batch on the next turn.

    Args:
        connection: where messages go.
        max_frames: most messages queued.
        max_bytes: most bytes queued (including a batch being written).
        on_overflow: called once when a message does not fit; the caller
            then closes the connection as a slow consumer.
        on_sent: called after each write with (messages, bytes) sent.
        spawn: starts the writer task (the relay keeps a reference to it).
    """

    __slots__ = (
        "_bytes",
        "_connection",
        "_hot",
        "_max_bytes",
        "_max_frames",
        "_messages",
        "_on_overflow",
        "_on_sent",
        "_overflowed",
        "_space",
        "_spawn",
        "_writer",
    )

    def __init__(
        self,
        connection: BatchingConnection,
        *,
        max_frames: int,
        max_bytes: int,
        on_overflow: Callable[[], None],
        on_sent: Callable[[int, int], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._connection = connection
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._on_sent = on_sent
        self._spawn = spawn
        self._messages: deque[bytes] = deque()
        self._bytes = 0
        self._overflowed = False
        self._hot = False
        self._writer: asyncio.Task[None] | None = None
        self._space: asyncio.Future[None] | None = None

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._bytes

    def put(self, message: bytes) -> bool:
        """Send or queue `message` without waiting.

        Returns:
            False if the queue is full (the message is dropped and
            `on_overflow` has been called) or overflowed before.
        """
        if self._overflowed:
            return False
        size = len(message)
        if (
            len(self._messages) >= self._max_frames
            or self._bytes + size > self._max_bytes
        ):
            self._overflowed = True
            self._on_overflow()
            return False

        # A lone message goes out at once, saving a turn of the event loop.
        if (
            self._writer is None
            and not self._hot
            and self._connection.send_now(message)
        ):
            self._hot = True
            asyncio.get_running_loop().call_soon(self._cool)
            self._on_sent(1, size)
            return True

        self._messages.append(message)
        self._bytes += size
        if self._writer is None:
            self._writer = self._spawn(self._write())
        return True

    def _cool(self) -> None:
        self._hot = False

    async def wait_for_space(self) -> None:
        """Wait until at most half of the byte bound is queued.

        Used to stream stored frames without filling the queue: a mailbox is
        larger than an outbound queue.
        """
        while self._bytes > self._max_bytes // 2 and not self._overflowed:
            self._space = asyncio.get_running_loop().create_future()
            await self._space

    def close(self) -> None:
        """Stop writing: the connection is gone. Queued messages are dropped."""
        if self._writer is not None:
            self._writer.cancel()

    async def _write(self) -> None:
        """Write queued messages in batches until none is left."""
        messages = self._messages
        try:
            while messages:
                # Take whatever is queued, up to a bounded batch.
                batch = [messages.popleft()]
                size = len(batch[0])
                while messages and size < BATCH_BYTES:
                    message = messages.popleft()
                    batch.append(message)
                    size += len(message)

                await self._connection.send_batch(batch)
                self._bytes -= size
                self._on_sent(len(batch), size)
                space = self._space
                if space is not None and not space.done():
                    space.set_result(None)
        except ConnectionClosed:
            # The connection's handler reports the close; nothing to send to.
            messages.clear()
        finally:
            self._writer = None
