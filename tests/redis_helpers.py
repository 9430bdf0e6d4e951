"""Helpers for the Redis tests: a real redis-server, real nginx, free ports.

`RedisServer` runs ``redis-server`` on a free loopback port with append-only
persistence in a test directory, and waits for its readiness line. `Nginx`
runs Debian's nginx in the foreground with the repository's
``deploy/nginx.conf``, changed only for ports and paths. `need_binary`
finds a program on PATH or in /usr/sbin; when it is missing the test is
skipped, except when the environment variable CI is set: then it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from chat.envelope import (
    Ack,
    Deliver,
    Joined,
    Presence,
    PresenceKind,
    RelayMessage,
    Result,
    Status,
    decode_relay,
    encode,
    mailbox_address,
)
from tests.relay_helpers import DEADLINE, ROOT, Client

__all__ = [
    "NGINX_CONF",
    "Nginx",
    "Peer",
    "RedisServer",
    "free_port",
    "need_binary",
    "redis_relay_argv",
    "redis_server",
    "template_nginx",
    "wait_until",
]

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def need_binary(name: str) -> str:
    """The path of program `name`; skip the test (fail under CI) if missing."""
    found = shutil.which(name)
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin"):
        candidate = Path(directory) / name
        if found is None and candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    if found is not None:
        return found
    message = f"{name} is not installed (looked on PATH and in /usr/sbin)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it (apt-get install {name})")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: object, what: str, deadline: float = DEADLINE) -> None:
    """Poll `condition` (a callable) until true; fail naming `what` after a deadline."""
    assert callable(condition)
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a process or a file: no event to wait on


class RedisServer:
    """A redis-server subprocess on 127.0.0.1 with append-only persistence.

    Args:
        binary: path of redis-server.
        directory: where its data and log go.
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """Its URL for ``--redis``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        """Start on a free port (the same port again after `stop`)."""
        for _ in range(5):
            if self._start_once(self.port or free_port()):
                return
        raise AssertionError(f"redis-server never started:\n{self.log_text()}")

    def _start_once(self, port: int) -> bool:
        self.log_path.write_text("")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if "Ready to accept connections" in self.log_text():
                self.port = port
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.02)  # polling its log file: no event to wait on
        return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the append-only file is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(DEADLINE)


class Nginx:
    """nginx in the foreground with a templated copy of deploy/nginx.conf.

    Args:
        binary: path of nginx.
        directory: where the config, temp files and logs go.
        relays: the ``host:port`` of each relay, in the config's order.
    """

    def __init__(self, binary: str, directory: Path, relays: list[str]) -> None:
        self.binary = binary
        self.directory = directory
        self.relays = relays
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "nginx.conf"
        self.log_path = directory / "nginx.log"
        self.pid_path = directory / "nginx.pid"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port, trying another if that one was taken meanwhile."""
        for _ in range(5):
            if self._start_once(free_port()):
                return
        raise AssertionError(f"nginx never started:\n{self.log_text()}")

    def _start_once(self, port: int) -> bool:
        self.config.write_text(
            template_nginx(NGINX_CONF.read_text(), port, self.relays, self.directory)
        )
        self.pid_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "-p",
                    str(self.directory),
                    "-e",
                    "stderr",
                    "-c",
                    str(self.config),
                    "-g",
                    "daemon off;",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        # nginx writes its pid file only once its listening sockets are bound;
        # if the port was taken meanwhile, it exits instead.
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                return False
            if self._pid_written() == str(self.process.pid):
                self.port = port
                return True
            time.sleep(0.02)  # polling a process and a file: no event to wait on
        self.process.kill()
        self.process.wait(DEADLINE)
        return False

    def _pid_written(self) -> str:
        try:
            return self.pid_path.read_text().strip()
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(DEADLINE)


def template_nginx(text: str, port: int, relays: list[str], directory: Path) -> str:
    """deploy/nginx.conf with test ports and paths; nothing else changes.

    The upstream servers become `relays`, the listening port `port` on
    loopback, and the pid file and temporary directories move under
    `directory` (nginx runs as this user, not as root's worker user).
    """
    servers = iter(relays)
    text, count = re.subn(
        r"server relay-\d+:8765", lambda _: f"server {next(servers)}", text
    )
    assert count == len(relays), "deploy/nginx.conf must list one server per relay"
    text, count = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", text)
    assert count == 1, "deploy/nginx.conf must listen on 8080"
    text, count = re.subn(
        r"^pid [^;]+;", f"pid {directory}/nginx.pid;", text, flags=re.MULTILINE
    )
    assert count == 1, "deploy/nginx.conf must name its pid file"
    text = re.sub(r"^user [^;]+;\n", "", text, flags=re.MULTILINE)
    temp = "".join(
        f"    {kind}_temp_path {directory}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", "http {\n" + temp, 1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(need_binary("redis-server"), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class Peer:
    """A member speaking envelopes, reading in the background.

    It ACKs each stored frame (non-zero frame id) once and drops repeats of
    an id, as a client does, and records everything: stored frames by id,
    ACKs per id, live payloads, presence events and RESULTs.
    """

    def __init__(self, client: Client, room_id: bytes, joined: Joined) -> None:
        self.client = client
        self.room_id = room_id
        self.joined = joined
        self.stored: dict[int, bytes] = {}
        self.acks: Counter[int] = Counter()
        self.live: list[bytes] = []
        self.presence: list[tuple[PresenceKind, bytes]] = []
        self.results: asyncio.Queue[Result] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def join(cls, url: str, room_id: bytes, token: bytes | None = None) -> Peer:
        """Connect to `url` and join `room_id` (with `token`, or a new one)."""
        client = await Client.open(url)
        if token is not None:
            client.token, client.address = token, mailbox_address(token)
        return cls(client, room_id, await client.join(room_id))

    @property
    def address(self) -> bytes:
        return self.client.address

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in self.client.websocket:
                assert isinstance(data, bytes)
                await self._on(decode_relay(data))
                self._changed.set()

    async def _on(self, message: RelayMessage) -> None:
        if isinstance(message, Result):
            self.results.put_nowait(message)
        elif isinstance(message, Presence):
            self.presence.append((message.kind, message.address))
        elif isinstance(message, Deliver) and message.frame_id == 0:
            self.live.append(message.payload)
        elif isinstance(message, Deliver) and message.frame_id not in self.stored:
            self.stored[message.frame_id] = message.payload
            await self.client.send(encode(Ack(self.room_id, message.frame_id)))
            self.acks[message.frame_id] += 1

    async def send(self, recipient: bytes, payload: bytes, send_id: int = 1) -> Status:
        """SEND and return the status of its RESULT."""
        await self.client.send_to(self.room_id, recipient, payload, send_id)
        result = await asyncio.wait_for(self.results.get(), DEADLINE)
        assert result.send_id == send_id
        return result.status

    def payloads(self) -> list[bytes]:
        """Every payload received, stored ones in frame id order, then live."""
        return [self.stored[key] for key in sorted(self.stored)] + self.live

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until `condition()` holds; fail naming `what` after the deadline."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def close(self) -> None:
        await self.client.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def redis_relay_argv(url: str, prefix: str, data_dir: Path) -> list[str]:
    """Command-line flags of a test relay on Redis: fast heartbeats, port 0."""
    return [
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--redis",
        url,
        "--redis-prefix",
        prefix,
        "--redis-timeout",
        "0.5",
        "--redis-backoff",
        "0.3",
        "--presence-ttl",
        "0.6",
        "--rate",
        "10000",
        "--burst",
        "10000",
    ]
