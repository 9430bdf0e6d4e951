"""Relay benchmark: saltchat-relay against a bare websockets forwarder.

Both servers run as subprocesses on 127.0.0.1 in the same invocation and are
driven by the same load generator, so the figures that matter are the ratios
saltchat/bare (machines are shared and noisy; absolute figures are not).

    python bench/relay_bench.py               # full run, prints a table
    python bench/relay_bench.py --quick       # shorter, for a smoke test

Measured for each server:

- forwarded messages per second for 100 B and 16 KiB payloads: several
  pairs of connections, each sender keeping a bounded window of messages in
  flight to its partner;
- hop latency p50 and p99: one message in flight, sender to receiver, on one
  pair (same process clock on both ends);
- memory per idle connection: growth of the server's resident memory over
  1,000 open connections (saltchat: each joined to a room), divided by 1,000.

The load generator speaks WebSocket over raw sockets with prebuilt frames
(client frames masked with a zero key, which RFC 6455 allows), so that it
costs almost nothing per message and the servers, not the generator, set the
pace. The bare forwarder is the few lines in `bare_forwarder`: it forwards
each message to the other connection of a pair with `await send()`,
compression off, keepalive off.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.server import ServerConnection, serve  # noqa: E402

from chat.envelope import (  # noqa: E402 (after the path set-up above)
    Join,
    Send,
    encode,
    mailbox_address,
)

SERVING = re.compile(rb"serving (ws://[^\s\"]+)")


# The bare forwarder, run as `relay_bench.py bare`.


async def bare_forwarder() -> None:
    """Pair connections in arrival order; forward each message to the partner."""
    waiting: list[tuple[ServerConnection, asyncio.Future[ServerConnection]]] = []

    async def handler(websocket: ServerConnection) -> None:
        if waiting:
            partner, future = waiting.pop()
            future.set_result(websocket)
        else:
            future = asyncio.get_running_loop().create_future()
            waiting.append((websocket, future))
            partner = await future
        async for message in websocket:
            await partner.send(message)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=2**16, ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"serving ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


# Raw WebSocket client pieces.


def client_frame(payload: bytes) -> bytes:
    """A masked binary client frame with a zero mask (payload unchanged)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    else:
        head = bytes([0x82, 0xFE]) + struct.pack(">H", size)
    return head + b"\x00\x00\x00\x00" + payload


def server_frame_size(payload_size: int) -> int:
    """Size on the wire of an unmasked server frame of `payload_size`."""
    return payload_size + (2 if payload_size < 126 else 4)


class Leftover(dict[socket.socket, bytes]):
    """Bytes read past what set-up needed, per socket."""


LEFTOVER = Leftover()


def open_socket(url: str) -> socket.socket:
    """Connect and complete the opening handshake on a blocking socket."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed during the handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(response.split(b"\r\n", 1)[0].decode())
    LEFTOVER[sock] = response[response.index(b"\r\n\r\n") + 4 :]
    return sock


def read_frame(sock: socket.socket) -> bytes:
    """Read one unmasked server frame's payload (set-up only)."""

    def exactly(count: int) -> bytes:
        data = LEFTOVER.pop(sock, b"")
        if len(data) > count:
            LEFTOVER[sock] = data[count:]
            return data[:count]
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("server closed")
            data += chunk
        return data

    head = exactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack(">H", exactly(2))[0]
    elif size == 127:
        size = struct.unpack(">Q", exactly(8))[0]
    return exactly(size)


# The two kinds of server, as the generator sees them.


@dataclass
class Pair:
    """Two connected sockets and what the sender sends."""

    sender: socket.socket
    receiver: socket.socket
    frame: bytes
    """What the sender writes for one message."""
    received_size: int
    """What the receiver gets for one message."""


class Target:
    """A server under test: how to start it and how to pair connections."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.workdir / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = SERVING.search((self.workdir / f"{self.name}.log").read_bytes())
            if found:
                self.url = found.group(1).decode()
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)

    def rss_kib(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found is not None
        return int(found.group(1))

    def cpu_seconds(self) -> float:
        """User and system CPU time the server has used so far."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pair(self, payload_size: int) -> Pair:
        raise NotImplementedError


class Bare(Target):
    """The bare forwarder."""

    name = "bare"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "bare"]

    def pair(self, payload_size: int) -> Pair:
        sender = open_socket(self.url)
        receiver = open_socket(self.url)
        payload = os.urandom(payload_size)
        return Pair(
            sender, receiver, client_frame(payload), server_frame_size(payload_size)
        )


class Saltchat(Target):
    """saltchat-relay with limits opened up for a load test."""

    name = "saltchat"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "server",
            "--port",
            "0",
            "--data-dir",
            str(self.workdir / "data"),
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--max-connections-per-address",
            "5000",
            "--ping-interval",
            "3600",
            "--log-level",
            "info",
        ]

    def pair(self, payload_size: int) -> Pair:
        room_id = os.urandom(32)
        tokens = os.urandom(32), os.urandom(32)
        sender, receiver = open_socket(self.url), open_socket(self.url)
        for sock, token in ((sender, tokens[0]), (receiver, tokens[1])):
            read_frame(sock)  # WELCOME
            sock.sendall(client_frame(encode(Join(room_id, token))))
            read_frame(sock)  # JOINED
        read_frame(sender)  # PRESENCE: the receiver joined
        payload = os.urandom(payload_size)
        send = encode(Send(room_id, mailbox_address(tokens[1]), 1, payload))
        assert not LEFTOVER.get(sender) and not LEFTOVER.get(receiver)
        return Pair(
            sender, receiver, client_frame(send), server_frame_size(payload_size + 74)
        )


# Throughput: many pairs, a bounded window in flight per pair.


class Counter(asyncio.Protocol):
    """Counts bytes received; calls `on_data` after each chunk."""

    def __init__(self, on_data: Callable[[], None] = lambda: None) -> None:
        self.received = 0
        self.on_data = on_data

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.on_data()


class Flow:
    """One pair under load: keep at most `window` messages in flight."""

    def __init__(self, pair: Pair, window: int) -> None:
        self.pair = pair
        self.window = window
        self.sent = 0
        self.sender: asyncio.BaseTransport | None = None
        self.counter = Counter(self.pump)

    def receiving(self) -> Counter:
        """The protocol for the receiver's socket."""
        return self.counter

    @property
    def delivered(self) -> int:
        return self.counter.received // self.pair.received_size

    def pump(self) -> None:
        in_flight = self.sent - self.delivered
        if (
            isinstance(self.sender, asyncio.WriteTransport)
            and in_flight <= self.window // 2
        ):
            count = self.window - in_flight
            self.sender.write(self.pair.frame * count)
            self.sent += count


async def throughput(pairs: list[Pair], window: int, seconds: float) -> float:
    """Messages delivered per second over all pairs, after a warm-up."""
    loop = asyncio.get_running_loop()
    flows = [Flow(pair, window) for pair in pairs]
    for flow in flows:
        flow.pair.sender.setblocking(False)
        flow.pair.receiver.setblocking(False)
        transport, _ = await loop.create_connection(Counter, sock=flow.pair.sender)
        await loop.create_connection(flow.receiving, sock=flow.pair.receiver)
        flow.sender = transport
    for flow in flows:
        flow.pump()

    await asyncio.sleep(seconds / 4)  # warm-up
    start, before = time.perf_counter(), sum(flow.delivered for flow in flows)
    await asyncio.sleep(seconds)
    after, elapsed = sum(flow.delivered for flow in flows), time.perf_counter() - start
    for flow in flows:
        assert flow.sender is not None
        flow.sender.close()
    return (after - before) / elapsed


# Latency: one message in flight.


def latency(pair: Pair, count: int) -> tuple[float, float]:
    """Hop latency p50 and p99 in microseconds, sender to receiver."""
    receiver = pair.receiver
    receiver.setblocking(True)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        pair.sender.sendall(pair.frame)
        remaining = pair.received_size
        while remaining:
            remaining -= len(receiver.recv(remaining))
        samples.append((time.perf_counter() - started) * 1e6)

        # The relay answers the sender with a RESULT; keep its buffer empty.
        pair.sender.setblocking(False)
        try:
            while pair.sender.recv(65536):
                pass
        except BlockingIOError:
            pass
        pair.sender.setblocking(True)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


# Memory per idle connection.


def memory_per_connection(target: Target, count: int) -> float:
    """KiB of server resident memory per idle connection."""
    before = target.rss_kib()
    pairs = [target.pair(100) for _ in range(count // 2)]
    time.sleep(1.0)  # let the server settle: no event tells when it has
    after = target.rss_kib()
    for pair in pairs:
        pair.sender.close()
        pair.receiver.close()
    return (after - before) / (2 * len(pairs))


@dataclass
class Figures:
    small: float = 0.0
    large: float = 0.0
    small_cpu: float = 0.0
    large_cpu: float = 0.0
    p50: float = float("inf")
    p99: float = float("inf")
    memory: float = 0.0


def loaded(target: Target, size: int, args: argparse.Namespace) -> tuple[float, float]:
    """Messages per second, and per second of the server's CPU time."""
    window = 128 if size < 1024 else 16
    pairs = [target.pair(size) for _ in range(args.pairs)]
    cpu_before = target.cpu_seconds()
    wall_before = time.perf_counter()
    rate = asyncio.run(throughput(pairs, window, args.seconds))
    wall = time.perf_counter() - wall_before
    cpu = target.cpu_seconds() - cpu_before
    return rate, rate * wall / cpu if cpu else 0.0


def measure(targets: list[Target], args: argparse.Namespace) -> list[Figures]:
    """All figures for each server, rounds interleaved, best of the rounds.

    Interleaving puts every server through the same spells of noise from
    other work on a shared machine; the best round is the least disturbed.
    """
    figures = [Figures() for _ in targets]
    for _ in range(args.rounds):
        for size, name in ((100, "small"), (16384, "large")):
            for target, figure in zip(targets, figures, strict=True):
                rate, per_cpu = loaded(target, size, args)
                setattr(figure, name, max(getattr(figure, name), rate))
                cpu_name = f"{name}_cpu"
                setattr(figure, cpu_name, max(getattr(figure, cpu_name), per_cpu))
        for target, figure in zip(targets, figures, strict=True):
            p50, p99 = latency(target.pair(100), args.latency_count)
            figure.p50, figure.p99 = min(figure.p50, p50), min(figure.p99, p99)
    for target, figure in zip(targets, figures, strict=True):
        figure.memory = memory_per_connection(target, args.connections)
    return figures


def report(bare: Figures, salt: Figures) -> None:
    """Print the table of figures and ratios."""
    rows = [
        ("msgs/s, 100 B", bare.small, salt.small, "{:,.0f}"),
        ("msgs/s, 16 KiB", bare.large, salt.large, "{:,.0f}"),
        ("msgs per CPU-s, 100 B", bare.small_cpu, salt.small_cpu, "{:,.0f}"),
        ("msgs per CPU-s, 16 KiB", bare.large_cpu, salt.large_cpu, "{:,.0f}"),
        ("hop latency p50 (us)", bare.p50, salt.p50, "{:,.0f}"),
        ("hop latency p99 (us)", bare.p99, salt.p99, "{:,.0f}"),
        ("KiB per idle connection", bare.memory, salt.memory, "{:,.1f}"),
    ]
    print(f"{'figure':26} {'bare':>12} {'saltchat':>12} {'saltchat/bare':>14}")
    for name, base, ours, fmt in rows:
        ratio = ours / base if base else float("nan")
        print(f"{name:26} {fmt.format(base):>12} {fmt.format(ours):>12} {ratio:>14.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "bare"])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-count", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    if args.mode == "bare":
        asyncio.run(bare_forwarder())
        return 0
    if args.quick:
        args.seconds, args.rounds, args.latency_count = 0.5, 1, 200
        args.pairs = min(args.pairs, 4)
        args.connections = min(args.connections, 200)

    with tempfile.TemporaryDirectory() as workdir:
        targets: list[Target] = [Bare(Path(workdir)), Saltchat(Path(workdir))]
        try:
            for target in targets:
                target.start()
            bare, salt = measure(targets, args)
        finally:
            for target in targets:
                target.stop()
    print(
        f"{args.pairs} pairs; windows of 128 (100 B) and 16 (16 KiB) messages in"
        f" flight per pair; {args.seconds:g} s per measure, best of {args.rounds}"
    )
    report(bare, salt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
