"""Helpers for the relay tests: relays on 127.0.0.1 port 0, real clients.

`running_relay` runs a relay in the test's event loop; `RelayProcess` runs
`python -m server` as a real subprocess and waits for its readiness line.
`Client` is a thin real WebSocket client speaking the envelope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chat.envelope import (
    Deliver,
    Join,
    Joined,
    Leave,
    RelayMessage,
    Result,
    Send,
    Welcome,
    decode_relay,
    encode,
    mailbox_address,
)
from server.config import RelayConfig
from server.relay import Relay

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10.0
"""Seconds any single wait in these tests may take before failing."""

M = TypeVar("M", bound=RelayMessage)

SERVING = re.compile(r"serving (wss?://[^\s\"]+)")


def make_config(data_dir: Path, **overrides: Any) -> RelayConfig:
    """A config for tests: port 0, data in `data_dir`, generous rate."""
    base = RelayConfig(port=0, data_dir=str(data_dir), rate=10000.0, burst=10000)
    return dataclasses.replace(base, **overrides).check()


@asynccontextmanager
async def running_relay(
    data_dir: Path, clock: Callable[[], float] = time.time, **overrides: Any
) -> AsyncIterator[Relay]:
    """Run a relay in this event loop for the duration of the block."""
    relay = Relay(make_config(data_dir, **overrides), clock=clock)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


class Client:
    """A real WebSocket client speaking envelopes to a relay."""

    def __init__(self, websocket: ClientConnection, welcome: Welcome) -> None:
        self.websocket = websocket
        self.welcome = welcome
        self.token = os.urandom(32)
        self.address = mailbox_address(self.token)

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Client:
        """Connect and read the WELCOME."""
        websocket = await connect(url, compression=None, max_size=None, **kwargs)
        welcome = decode_relay(await asyncio.wait_for(websocket.recv(), DEADLINE))
        assert isinstance(welcome, Welcome)
        return cls(websocket, welcome)

    async def send(self, data: bytes | str) -> None:
        """Send one raw message."""
        await self.websocket.send(data)

    async def receive(self) -> RelayMessage:
        """Read and decode the next message, within the deadline."""
        data = await asyncio.wait_for(self.websocket.recv(), DEADLINE)
        assert isinstance(data, bytes)
        return decode_relay(data)

    async def expect(self, kind: type[M]) -> M:
        """Read the next message and check its type."""
        message = await self.receive()
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    async def join(self, room_id: bytes) -> Joined:
        """JOIN `room_id` with this client's token; return the JOINED."""
        await self.send(encode(Join(room_id, self.token)))
        joined = await self.expect(Joined)
        assert joined.address == self.address
        return joined

    async def leave(self, room_id: bytes) -> None:
        """LEAVE `room_id`."""
        await self.send(encode(Leave(room_id)))

    async def send_to(
        self, room_id: bytes, recipient: bytes, payload: bytes, send_id: int = 1
    ) -> None:
        """SEND `payload` to `recipient`."""
        await self.send(encode(Send(room_id, recipient, send_id, payload)))

    async def result(self) -> Result:
        """Read the next message, which must be a RESULT."""
        return await self.expect(Result)

    async def deliver(self) -> Deliver:
        """Read the next message, which must be a DELIVER."""
        return await self.expect(Deliver)

    async def closed(self) -> tuple[int, str]:
        """Read until the relay closes; return its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.websocket.recv(), DEADLINE)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason

    async def close(self) -> None:
        """Close politely."""
        await self.websocket.close()


def http_get(url: str, path: str) -> tuple[int, str]:
    """GET `path` on the relay at WebSocket `url`; return status and body."""
    http = url.replace("ws://", "http://", 1) + path
    try:
        with urllib.request.urlopen(http, timeout=DEADLINE) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class RelayProcess:
    """`python -m server` as a real subprocess, logs to a file.

    Args:
        argv: extra command-line arguments.
        log_path: where its stderr goes.
        env: extra environment variables.
        command: the command to run instead of ``python -m server``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.log_path = log_path
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "server"]), *argv],
            cwd=ROOT,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""

    def wait_serving(self) -> str:
        """Wait for the readiness line; return the URL it names."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = SERVING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.url = found.group(1)
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.02)  # polling a log file: no event to wait on
        raise AssertionError(f"relay never served; log:\n{self.log_text()}")

    def log_text(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the process if it still runs, and close the log."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE)
        self._log.close()


def compose_command(compose_file: Path) -> list[str]:
    """The relay service's command from docker-compose.yml.

    The compose file writes it as a JSON-style flow list on one line
    (``command: ["saltchat-relay", ...]``), which is valid YAML and JSON alike,
    so no YAML library is needed to read it.
    """
    for line in compose_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("command:"):
            value = json.loads(stripped.removeprefix("command:").strip())
            assert isinstance(value, list)
            return [str(item) for item in value]
    raise AssertionError("no command: line in the compose file")


def compose_environment(compose_file: Path) -> dict[str, str]:
    """The relay service's ``KEY: "value"`` environment lines."""
    env: dict[str, str] = {}
    for line in compose_file.read_text().splitlines():
        found = re.match(r'\s+(SALTCHAT_RELAY_[A-Z_]+):\s*"?([^"]*)"?\s*$', line)
        if found:
            env[found.group(1)] = found.group(2)
    return env
