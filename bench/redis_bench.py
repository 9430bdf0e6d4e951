"""Scale-out benchmark: saltchat-relay on Redis against the embedded relay.

Everything runs in one invocation on 127.0.0.1, driven by the load generator
of `relay_bench` (raw sockets, prebuilt frames): a redis-server of its own
(append-only, fsync on every write, as in docker-compose.yml), one embedded
relay, and two relays sharing that Redis. Figures are printed with their
ratio to the embedded relay measured in the same run (machines are shared
and noisy; absolute figures are not what matters).

    python bench/redis_bench.py               # full run, prints two tables
    python bench/redis_bench.py --quick       # shorter, for a smoke test

Paths measured, each with 100 B payloads:

- embedded: both members on one embedded relay (the baseline);
- redis, same relay: both members on one Redis relay (direct delivery,
  no Redis call per frame);
- redis, across relays, unicast: sender and recipient on different relays;
  the frame is stored, then handed over through pub/sub (store, then
  notify), and the recipient's relay delivers it with its frame id (the
  generator does not ACK; the ACK's cost is not counted);
- redis, across relays, room: a room frame published once for the other
  relay, delivered live there.

For each: messages per second (several pairs, a bounded window in flight),
CPU time per message of the relays and of Redis (from /proc), and hop
latency p50 and p99 of a lone message. Then the aggregate rate of two relays
against one: the same number of pairs all on one relay, or half on each
(every pair on one relay, as least_conn places a room's members when they
connect at once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay_bench import (
    LEFTOVER,
    Pair,
    Saltchat,
    client_frame,
    latency,
    open_socket,
    read_frame,
    server_frame_size,
    throughput,
)

from chat.envelope import (
    BROADCAST,
    Join,
    Send,
    encode,
    mailbox_address,
)

DELIVER_HEADER = 74


class RedisServerProcess:
    """A redis-server for the benchmark, with the compose file's persistence."""

    def __init__(self, workdir: Path, fsync: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                open_probe(self.port)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu_seconds(self) -> float:
        return _cpu_of(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def open_probe(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _cpu_of(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Relay(Saltchat):
    """saltchat-relay, embedded or on Redis, limits opened up for load."""

    def __init__(self, workdir: Path, name: str, redis: str | None = None) -> None:
        super().__init__(workdir)
        self.name = name
        self.redis = redis

    def command(self) -> list[str]:
        command = [
            *super().command(),
            "--data-dir",
            str(self.workdir / f"data-{self.name}"),
            "--mailbox-max-frames",
            "100000000",
            "--mailbox-max-bytes",
            str(10**12),
            "--mailbox-sender-frames",
            "100000000",
            "--mailbox-sender-bytes",
            str(10**12),
            "--store-max-frames",
            "100000000",
            "--store-max-bytes",
            str(10**12),
        ]
        if self.redis is not None:
            command += ["--redis", self.redis, "--redis-prefix", "bench"]
        return command


def cross_pair(sender_relay: Relay, receiver_relay: Relay, room: bool) -> Pair:
    """A sender on one relay, its recipient on another (or the same)."""
    room_id = os.urandom(32)
    tokens = os.urandom(32), os.urandom(32)
    sender = open_socket(sender_relay.url)
    receiver = open_socket(receiver_relay.url)
    for sock, token in ((sender, tokens[0]), (receiver, tokens[1])):
        read_frame(sock)  # WELCOME
        sock.sendall(client_frame(encode(Join(room_id, token))))
        read_frame(sock)  # JOINED
    read_frame(sender)  # PRESENCE: the receiver joined
    payload = os.urandom(100)
    recipient = BROADCAST if room else mailbox_address(tokens[1])
    send = encode(Send(room_id, recipient, 1, payload))
    assert not LEFTOVER.get(sender) and not LEFTOVER.get(receiver)
    return Pair(
        sender, receiver, client_frame(send), server_frame_size(100 + DELIVER_HEADER)
    )


@dataclass
class Route:
    """One measured route: where the two ends of each pair connect."""

    name: str
    sender: Relay
    receiver: Relay
    room: bool = False


@dataclass
class Figures:
    rate: float = 0.0
    relay_us: float = float("inf")
    redis_us: float = float("inf")
    p50: float = float("inf")
    p99: float = float("inf")


def run_load(
    pairs: list[Pair], relays: list[Relay], redis: RedisServerProcess, seconds: float
) -> tuple[float, float, float]:
    """Messages per second, relay and Redis CPU microseconds per message."""
    relay_before = sum(relay.cpu_seconds() for relay in relays)
    redis_before = redis.cpu_seconds()
    started = time.perf_counter()
    rate = asyncio.run(throughput(pairs, 128, seconds))
    wall = time.perf_counter() - started
    messages = rate * wall
    relay_cpu = sum(relay.cpu_seconds() for relay in relays) - relay_before
    redis_cpu = redis.cpu_seconds() - redis_before
    return rate, relay_cpu / messages * 1e6, redis_cpu / messages * 1e6


def measure_paths(
    paths: list[Route], redis: RedisServerProcess, args: argparse.Namespace
) -> list[Figures]:
    """Best of the rounds for each path, rounds interleaved."""
    figures = [Figures() for _ in paths]
    for _ in range(args.rounds):
        for path, figure in zip(paths, figures, strict=True):
            relays = list({id(r): r for r in (path.sender, path.receiver)}.values())
            pairs = [
                cross_pair(path.sender, path.receiver, path.room)
                for _ in range(args.pairs)
            ]
            rate, relay_us, redis_us = run_load(pairs, relays, redis, args.seconds)
            figure.rate = max(figure.rate, rate)
            figure.relay_us = min(figure.relay_us, relay_us)
            figure.redis_us = min(figure.redis_us, redis_us)
            p50, p99 = latency(
                cross_pair(path.sender, path.receiver, path.room), args.latency_count
            )
            figure.p50, figure.p99 = min(figure.p50, p50), min(figure.p99, p99)
    return figures


def aggregate(
    single: Relay,
    pair_of: list[Relay],
    redis: RedisServerProcess,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """Messages per second: all pairs on one relay, then half on each of two."""
    one = two = 0.0
    for _ in range(args.rounds):
        pairs = [cross_pair(single, single, False) for _ in range(args.pairs)]
        one = max(one, run_load(pairs, [single], redis, args.seconds)[0])
        pairs = [
            cross_pair(relay, relay, False)
            for relay in pair_of
            for _ in range(args.pairs // 2)
        ]
        two = max(two, run_load(pairs, pair_of, redis, args.seconds)[0])
    return one, two


def report(paths: list[Route], figures: list[Figures]) -> None:
    base = figures[0]
    print(
        f"{'path (100 B)':34} {'msgs/s':>9} {'relay us/msg':>13} {'redis us/msg':>13}"
        f" {'p50 us':>8} {'p99 us':>8}   ratios to embedded: rate, relay CPU, p50"
    )
    for path, figure in zip(paths, figures, strict=True):
        redis_us = "-" if path.sender.redis is None else f"{figure.redis_us:,.1f}"
        print(
            f"{path.name:34} {figure.rate:>9,.0f} {figure.relay_us:>13,.1f}"
            f" {redis_us:>13} {figure.p50:>8,.0f} {figure.p99:>8,.0f}"
            f"   {figure.rate / base.rate:5.2f} {figure.relay_us / base.relay_us:5.2f}"
            f" {figure.p50 / base.p50:5.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-count", type=int, default=2000)
    parser.add_argument(
        "--fsync",
        default="always",
        choices=["always", "everysec"],
        help="Redis appendfsync (always: as docker-compose.yml)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.latency_count = 0.5, 1, 200

    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        redis = RedisServerProcess(workdir, args.fsync)
        embedded = Relay(workdir, "embedded")
        first = Relay(workdir, "redis-1", redis.url)
        second = Relay(workdir, "redis-2", redis.url)
        relays = [embedded, first, second]
        try:
            for relay in relays:
                relay.start()
            paths = [
                Route("embedded (baseline)", embedded, embedded),
                Route("redis, same relay", first, first),
                Route("redis, across relays, unicast", first, second),
                Route("redis, across relays, room", first, second, room=True),
            ]
            report(paths, measure_paths(paths, redis, args))
            one, two = aggregate(first, [first, second], redis, args)
            print()
            print(f"{'aggregate (100 B, redis)':34} {'msgs/s':>9}")
            print(f"{'one relay':34} {one:>9,.0f}")
            print(f"{'two relays':34} {two:>9,.0f}   two/one: {two / one:.2f}")
        finally:
            for relay in relays:
                relay.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
