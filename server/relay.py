"""The relay server: WebSocket serving, HTTP health and metrics, lifecycle.

`Relay` binds a websockets asyncio server (per-message compression off:
ciphertext does not compress, and compression costs about three times the
memory per connection), runs one `Session` per connection, and owns the
storage backends, the metrics and the background tasks (expiry of
connections that never joined or went idle, purge of expired mail).

Plain HTTP requests on the same port answer ``GET /healthz`` (200 while
serving, 503 while stopping or when storage fails) and ``GET /metrics``
(Prometheus text format).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from server.backends.base import Fanout, Mailbox, MailboxBounds, StorageUnavailable
from server.backends.memory import MemoryFanout
from server.backends.sqlite import SqliteMailbox
from server.config import RelayConfig
from server.limits import AddressBudget
from server.metrics import CONTENT_TYPE, RelayStats, StatsCollector, render
from server.outbound import BatchingConnection
from server.session import CLOSE_CONNECTIONS, CLOSE_GOING_AWAY, Close, Session

__all__ = ["BackendMissing", "Relay", "open_backends"]

logger = logging.getLogger("server.relay")

HEALTH_TIMEOUT = 2.0
"""Seconds /healthz waits for the storage to answer before saying 503."""


class BackendMissing(RuntimeError):  # noqa: N818 (names the condition)
    """A configured storage backend is not installed."""


async def open_backends(
    config: RelayConfig, clock: Callable[[], float] = time.time
) -> tuple[Mailbox, Fanout]:
    """Open the storage the configuration asks for.

    With ``--redis`` the backends come from ``server.backends.redis``, whose
    ``open_backends(config, clock)`` coroutine returns ``(mailbox, fanout)``;
    otherwise the embedded SQLite mailbox and in-process fan-out.

    Raises:
        BackendMissing: ``--redis`` was given but that module is absent.
        StorageUnavailable: the store cannot be opened.
    """
    if config.redis is not None:
        try:
            module = importlib.import_module("server.backends.redis")
        except ModuleNotFoundError as exc:
            if exc.name not in ("server.backends.redis", "redis"):
                raise
            raise BackendMissing(
                "--redis was given but the Redis backend (server.backends.redis"
                " with the 'redis' package) is not installed; install"
                " saltchat[redis] or run without --redis to use SQLite"
            ) from exc
        backends: tuple[Mailbox, Fanout] = await module.open_backends(config, clock)
        return backends

    mailbox = SqliteMailbox(
        config.mailbox_path,
        MailboxBounds.from_config(config),
        clock=clock,
    )
    await mailbox.open()
    return mailbox, MemoryFanout()


class Relay:
    """One relay: serve with `start`, stop gracefully with `stop`.

    Args:
        config: settings and bounds.
        clock: wall-clock time for the mailbox's time to live; tests inject it.
    """

    def __init__(
        self, config: RelayConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.stats = RelayStats()
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._sessions: set[Session] = set()
        self._per_address: Counter[str] = Counter()
        self.memberships = AddressBudget(config.new_memberships_per_address)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._mailbox: Mailbox | None = None
        self._fanout: Fanout | None = None
        self.stopping = False
        self.url = ""
        self.registry.register(
            StatsCollector(self.stats, lambda: len(self._sessions), self._room_count)
        )

    @property
    def mailbox(self) -> Mailbox:
        """The mailbox store (open once `start` returned)."""
        assert self._mailbox is not None, "relay not started"
        return self._mailbox

    @property
    def fanout(self) -> Fanout:
        """The fan-out (open once `start` returned)."""
        assert self._fanout is not None, "relay not started"
        return self._fanout

    def _room_count(self) -> int:
        return 0 if self._fanout is None else self._fanout.room_count()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coroutine` as a task the relay keeps a reference to."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    # Lifecycle.

    async def start(self) -> None:
        """Open storage, bind, and log the URL served.

        Raises:
            BackendMissing: a configured backend is not installed.
            StorageUnavailable: the store cannot be opened.
            OSError: the address cannot be bound.
        """
        config = self.config
        self._mailbox, self._fanout = await open_backends(config, self._clock)
        backend_metrics = getattr(self._fanout, "collector", None)
        if backend_metrics is not None:
            self.registry.register(backend_metrics)
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            compression=None,
            max_size=config.max_message,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            process_request=self._http,
            create_connection=BatchingConnection,
            ssl=self._tls(),
            logger=logging.getLogger("websockets.server"),
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        scheme = "wss" if config.tls_cert else "ws"
        host = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{host}:{port}"
        self.spawn(self._sweep())
        self.spawn(self._purge())
        logger.info("serving %s", self.url)

    def _tls(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    async def stop(self) -> None:
        """Stop accepting, close connections with 1001, finish storage writes.

        Bounded by ``shutdown_timeout``; idempotent.
        """
        if self.stopping:
            return
        self.stopping = True
        logger.info("stopping: closing %d connections", len(self._sessions))
        deadline = asyncio.get_running_loop().time() + self.config.shutdown_timeout

        # The open connections are closed first, while the port still
        # answers: meanwhile /healthz says 503 and a new connection is turned
        # away (see _http), so that a load balancer drains this relay.
        closes = [
            session.websocket.close(CLOSE_GOING_AWAY.code, CLOSE_GOING_AWAY.reason)
            for session in self._sessions
        ]
        if closes and not await _within(deadline, asyncio.gather(*closes)):
            logger.warning("connections still open after the shutdown timeout")
        if self._server is not None:
            self._server.close(close_connections=True)
            await _within(deadline, self._server.wait_closed())

        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._fanout is not None:
            await self._fanout.close()
        if self._mailbox is not None:
            await self._mailbox.close()
        logger.info("stopped")

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # Connections.

    async def _handle(self, websocket: ServerConnection) -> None:
        """Serve one WebSocket connection from greeting to close."""
        assert isinstance(websocket, BatchingConnection)
        remote = websocket.remote_address
        client = str(remote[0]) if remote else "unknown"

        # Bounds on connections come before any work for this one.
        config = self.config
        if (
            self._per_address[client] >= config.max_connections_per_address
            or len(self._sessions) >= config.max_connections
        ):
            self.stats.closes[CLOSE_CONNECTIONS.label] += 1
            logger.warning("refused connection from %s: too many connections", client)
            await websocket.close(CLOSE_CONNECTIONS.code, CLOSE_CONNECTIONS.reason)
            return

        session = Session(self, websocket, client)
        self._sessions.add(session)
        self._per_address[client] += 1
        logger.info("opened peer=%s from %s", session.name, client)
        try:
            await session.run()
            if session.closing is not None:
                await websocket.close(session.closing.code, session.closing.reason)
        finally:
            session.outbound.close()
            rooms = len(session.rooms)
            await session.leave_all()
            self._sessions.discard(session)
            self._per_address[client] -= 1
            if not self._per_address[client]:
                del self._per_address[client]
            self._log_close(session, websocket, rooms)

    def _log_close(
        self, session: Session, websocket: BatchingConnection, rooms: int
    ) -> None:
        """Count and log a closed connection with its code and reason."""
        close = session.closing
        if close is None:
            close = _close_of(websocket, self.stopping)
        self.stats.closes[close.label] += 1
        logger.info(
            "closed peer=%s code=%d reason=%r rooms=%d",
            session.name,
            close.code,
            close.reason or "-",
            rooms,
        )

    # Background tasks.

    async def _sweep(self) -> None:
        """Close connections that never joined in time or went idle.

        Also forgets the membership budgets of client addresses that have
        their whole budget again, so that they take no memory.
        """
        config = self.config
        interval = max(0.05, min(config.join_timeout, config.idle_timeout, 20.0) / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self._sessions):
                close = session.expired(now)
                if close is not None:
                    session.close(close)
            self.memberships.forget_full(now)

    async def _purge(self) -> None:
        """Remove expired mail now and then, and refresh the depth gauges."""
        while True:
            try:
                removed = await self.mailbox.purge_expired()
                if removed:
                    logger.info("purged %d expired frames", removed)
                await self._refresh_depth()
            except StorageUnavailable as exc:
                logger.error("mailbox purge failed: %s", exc)
            await asyncio.sleep(self.config.purge_interval)

    async def _refresh_depth(self) -> None:
        depth = await self.mailbox.depth()
        self.stats.mailbox_frames = depth.frames
        self.stats.mailbox_bytes = depth.bytes

    # HTTP on the same port.

    async def _http(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Answer /healthz and /metrics; let anything else go on to WebSocket.

        While stopping, a new WebSocket connection is refused with 503.
        """
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            if await self.healthy():
                return connection.respond(200, "ok\n")
            return connection.respond(503, "unavailable\n")
        if path == "/metrics":
            with contextlib.suppress(StorageUnavailable):
                await self._refresh_depth()
            response = connection.respond(200, render(self.registry).decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE
            return response
        if self.stopping:
            return connection.respond(503, "relay stopping\n")
        return None

    async def healthy(self) -> bool:
        """True while serving with storage that answers in time."""
        if self.stopping:
            return False
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.mailbox.check()
                await self.fanout.check()
        except (StorageUnavailable, TimeoutError) as exc:
            logger.warning("health check failed: %s", exc or "timeout")
            return False
        return True


async def _within(deadline: float, awaitable: Awaitable[object]) -> bool:
    """Await `awaitable` until the loop's clock reaches `deadline`.

    Returns:
        False if the deadline passed first (the awaitable is cancelled).
    """
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        await asyncio.wait_for(awaitable, max(remaining, 0))
    except TimeoutError:
        return False
    return True


def _close_of(websocket: BatchingConnection, stopping: bool) -> Close:
    """Describe a close the relay did not ask for by name."""
    protocol = websocket.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and sent.code == 1009:
        return Close("too_big", 1009, "message too big")
    if sent is not None and sent.code == 1011 and received is None:
        return Close("keepalive", 1011, sent.reason)
    if stopping:
        return CLOSE_GOING_AWAY
    if received is not None:
        return Close("client", received.code, received.reason)
    return Close("lost", 1006, "connection lost")
