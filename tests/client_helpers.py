"""Fixtures for the client's tests: real relay and client subprocesses.

Everything runs on 127.0.0.1 with port 0. Synchronisation is by readiness
lines and awaited events with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chat.transport import (
    Inbound,
    Link,
    LinkError,
    LinkEvent,
    LinkUp,
    PeerArrived,
    PeerGone,
)

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 30.0
_SERVING = re.compile(r"serving (ws://[0-9.]+:\d+)")

Event = dict[str, Any]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that imports this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTCHAT_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class RelayProcess:
    """A `python -m server` subprocess; `url` is parsed from its log line."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self._drain = asyncio.create_task(self._read_rest())
        self.log: list[str] = []

    @classmethod
    async def start(cls, data_dir: Path, port: int = 0) -> RelayProcess:
        """Start a relay and wait for its "serving ws://..." line."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        assert process.stderr is not None
        seen: list[str] = []
        async with asyncio.timeout(DEADLINE):
            while True:
                line = (await process.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("relay exited before serving:\n" + "".join(seen))
                seen.append(line)
                match = _SERVING.search(line)
                if match:
                    return cls(process, match.group(1))

    async def _read_rest(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    async def kill(self) -> None:
        """SIGKILL: the relay gets no chance to say goodbye."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await self._drain

    async def stop(self) -> None:
        """SIGTERM and wait."""
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        await self.process.wait()
        await self._drain


class JsonClient:
    """A `python -m chat --json` subprocess, its events parsed as they come."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self.bad_lines: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def start(cls, home: Path, name: str, *args: str) -> JsonClient:
        """Start a client in --json mode with its own home directory."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chat",
            "--json",
            "--home",
            str(home),
            "--name",
            name,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
            limit=1 << 20,
        )
        return cls(process, name)

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.bad_lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line.decode(errors="replace"))

    async def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the client's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def say(self, line: str) -> None:
        """Type one line (a message or a command)."""
        await self.send_raw(line.encode() + b"\n")

    def find(self, event: str, **fields: Any) -> list[Event]:
        """Events so far named `event` whose fields equal `fields`."""
        return [
            e
            for e in self.events
            if e.get("event") == event
            and all(e.get(key) == value for key, value in fields.items())
        ]

    async def wait_for(
        self,
        event: str,
        count: int = 1,
        where: Callable[[Event], bool] = lambda _e: True,
        **fields: Any,
    ) -> Event:
        """Wait (with a deadline) until `count` matching events have arrived."""
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    found = [e for e in self.find(event, **fields) if where(e)]
                    if len(found) >= count:
                        return found[count - 1]
                    if self.process.returncode is not None and self._readers[0].done():
                        raise AssertionError(f"{self.name} exited")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {event} {fields} within {DEADLINE}s; events: "
                f"{self.events[-15:]}; stderr: {''.join(self.stderr[-20:])}"
            ) from None

    async def quit(self) -> Event:
        """/quit and wait for the process to exit; return the closed event."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.say("/quit")
        async with asyncio.timeout(DEADLINE):
            await self.process.wait()
            await asyncio.gather(*self._readers)
        return self.find("closed")[-1]

    async def kill(self) -> None:
        """SIGKILL (cleanup after a failed test)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            reader.cancel()


async def run_chat(home: Path, *args: str) -> tuple[int, str, str]:
    """Run `python -m chat --home HOME ARGS...` to completion (stdin empty).

    Returns:
        The exit status, stdout and stderr.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chat",
        "--home",
        str(home),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    async with asyncio.timeout(DEADLINE):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class Cluster:
    """Starts relays and clients for one test and kills them all at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clients: list[JsonClient] = []
        self.relays: list[RelayProcess] = []

    async def relay(self, port: int = 0) -> RelayProcess:
        """Start a relay with its data in this test's directory."""
        relay = await RelayProcess.start(self.tmp / "relay-data", port)
        self.relays.append(relay)
        return relay

    async def client(
        self, name: str, *args: str, home: str | None = None
    ) -> JsonClient:
        """Start a JSON client with the home `tmp/<home or name>`."""
        client = await JsonClient.start(self.tmp / (home or name), name, *args)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        """Kill whatever is still running."""
        for client in self.clients:
            await client.kill()
        for relay in self.relays:
            if relay.process.returncode is None:
                await relay.kill()


@pytest.fixture(name="cluster")
async def cluster_fixture(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Relays and clients for one test, all killed at its end."""
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        await running.close()


class MemoryLink:
    """One in-memory connection to a `MemoryHub`."""

    def __init__(self, hub: MemoryHub, address: bytes) -> None:
        self.hub = hub
        self.address = address
        self.max_payload = 65460
        self.queue: asyncio.Queue[LinkEvent | None] = asyncio.Queue()

    async def events(self) -> AsyncIterator[LinkEvent]:
        while True:
            item = await self.queue.get()
            if item is None:
                raise LinkError("dropped")
            yield item

    async def send(self, recipient: bytes, payload: bytes) -> None:
        self.hub.route(self.address, recipient, payload)

    async def ack(self, frame_id: int) -> None:
        self.hub.acked.append((self.address, frame_id))
        box = self.hub.mailbox.get(self.address, [])
        self.hub.mailbox[self.address] = [m for m in box if m[0] != frame_id]

    async def close(self) -> None:
        self.hub.leave(self.address)


async def stop_client_task(task: asyncio.Task[Any]) -> None:
    """Wait for a closed client's task to end, and fail if it crashed.

    After `close()` the task ends by itself; it is cancelled only if it has
    not within DEADLINE. Teardown must not hide a crash: a task that ended
    with any exception but its cancellation fails the test that ran it.

    Raises:
        AssertionError: the task ended with an exception.
    """
    done, _ = await asyncio.wait([task], timeout=DEADLINE)
    if not done:
        task.cancel()
        await asyncio.wait([task])
    if not task.cancelled() and (crash := task.exception()) is not None:
        raise AssertionError(f"client task crashed: {crash!r}") from crash


class MemoryHub:
    """A relay in memory with the envelope's semantics (no sockets).

    Members are routed by address; a frame for a known but absent address is
    stored with a frame id until that member comes back and ACKs it.
    """

    def __init__(self) -> None:
        self.links: dict[bytes, MemoryLink] = {}
        self.known: set[bytes] = set()
        self.mailbox: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
        self.acked: list[tuple[bytes, int]] = []
        self.routed = 0
        self._frame_ids = itertools.count(1)
        self.tap: Callable[[bytes, bytes, bytes], bytes | None] | None = None
        self.refused: set[bytes] = set()

    def connector(self, address: bytes) -> Callable[[], Awaitable[Link]]:
        async def connect() -> Link:
            if address in self.refused:
                raise LinkError("refused by the test")
            return self.join(address)

        return connect

    def join(self, address: bytes) -> MemoryLink:
        link = MemoryLink(self, address)
        members = tuple(a for a in self.links if a != address)
        for other in self.links.values():
            other.queue.put_nowait(PeerArrived(address))
        self.links[address] = link
        self.known.add(address)
        link.queue.put_nowait(LinkUp(address, members))
        for frame_id, sender, payload in self.mailbox.get(address, []):
            link.queue.put_nowait(Inbound(sender, frame_id, payload))
        return link

    def leave(self, address: bytes) -> None:
        link = self.links.pop(address, None)
        if link is None:
            return
        link.queue.put_nowait(None)
        for other in self.links.values():
            other.queue.put_nowait(PeerGone(address))

    def route(self, sender: bytes, recipient: bytes, payload: bytes) -> None:
        if self.tap is not None:
            tapped = self.tap(sender, recipient, payload)
            if tapped is None:
                return
            payload = tapped
        self.routed += 1
        if recipient in self.links:
            self.links[recipient].queue.put_nowait(Inbound(sender, 0, payload))
        elif recipient in self.known:
            frame_id = next(self._frame_ids)
            self.mailbox.setdefault(recipient, []).append((frame_id, sender, payload))

    async def settle(self, rounds: int = 2000) -> None:
        """Let every client process what is queued (no timers involved)."""
        quiet = 0
        for _ in range(rounds):
            routed = self.routed
            await asyncio.sleep(0)
            busy = any(not link.queue.empty() for link in self.links.values())
            quiet = 0 if busy or routed != self.routed else quiet + 1
            if quiet > 50:
                return
        raise AssertionError("the hub did not settle")
