"""Several relay processes on one real redis-server, real WebSocket clients.

Relays run as subprocesses (`python -m server --redis ...`) with a presence
ttl of 1 s and heartbeats every 0.2 s, so that a dead relay's members
disappear quickly; every wait has a deadline and none is a timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chat.envelope import BROADCAST, Join, PresenceKind, Status, encode
from tests.redis_helpers import (
    Peer,
    RedisServer,
    need_binary,
    redis_relay_argv,
    wait_until,
)
from tests.relay_helpers import DEADLINE, Client, RelayProcess, http_get

Start = Callable[..., RelayProcess]


@pytest.fixture
def start_relay(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., RelayProcess]]:
    """Start relay subprocesses on Redis (one key prefix per test)."""
    prefix = "test-" + os.urandom(6).hex()
    started: list[RelayProcess] = []

    def start(server: RedisServer = redis_server, *extra: str) -> RelayProcess:
        number = len(started)
        argv = redis_relay_argv(server.url, prefix, tmp_path / f"data-{number}")
        argv.extend(extra)
        process = RelayProcess(argv, tmp_path / f"relay-{number}.log")
        started.append(process)
        process.wait_serving()
        return process

    yield start
    for process in started:
        process.stop()


def kill(relay: RelayProcess) -> None:
    relay.process.send_signal(signal.SIGKILL)
    relay.process.wait(DEADLINE)


async def test_two_clients_on_two_relays_exchange_frames(start_relay: Start) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(second.url, room_id)
    assert bob.joined.members == (alice.address,)

    # Unicast across relays is stored, then handed over at once.
    assert await alice.send(bob.address, b"to bob") == Status.STORED
    assert await bob.send(alice.address, b"to alice") == Status.STORED
    await bob.wait(lambda: bob.payloads() == [b"to bob"], "bob's frame")
    await alice.wait(lambda: alice.payloads() == [b"to alice"], "alice's frame")

    # A room frame is live on every relay.
    assert await alice.send(BROADCAST, b"everyone") == Status.DELIVERED
    await bob.wait(lambda: bob.live == [b"everyone"], "the room frame")
    await alice.close()
    await bob.close()


async def test_presence_across_relays(start_relay: Start) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(second.url, room_id)
    await alice.wait(
        lambda: alice.presence == [(PresenceKind.JOINED, bob.address)], "bob joined"
    )
    await bob.close()
    await alice.wait(
        lambda: alice.presence[-1:] == [(PresenceKind.LEFT, bob.address)], "bob left"
    )
    await alice.close()


async def test_members_of_a_killed_relay_disappear_from_presence(
    start_relay: Start,
) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(second.url, room_id)
    await alice.wait(lambda: len(alice.presence) == 1, "bob joined")

    # No LEAVE reaches Redis from a killed relay: its heartbeats stop.
    kill(second)
    await alice.wait(
        lambda: alice.presence[-1:] == [(PresenceKind.LEFT, bob.address)],
        "bob to expire",
    )
    await alice.close()


async def test_relay_killed_mid_conversation_loses_and_repeats_nothing(
    start_relay: Start,
) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(second.url, room_id)
    to_alice = [b"to alice %d" % n for n in range(20)]
    to_bob = [b"to bob %d" % n for n in range(10)]

    for number in range(10):
        assert await alice.send(bob.address, to_bob[number], number) == Status.STORED
        assert await bob.send(alice.address, to_alice[number], number) == Status.STORED
    await alice.wait(lambda: len(alice.stored) == 10, "the first frames")
    await bob.wait(lambda: len(bob.stored) == 10, "the first frames")

    # A relay that dies may take unprocessed ACKs with it (those frames then
    # come again, same ids); here every ACK has landed first.
    wait_until(lambda: _mailbox_frames(second) == 0, "the first ACKs to land")

    # Alice's relay dies; Bob goes on writing while she is away.
    kill(first)
    for number in range(10, 20):
        assert await bob.send(alice.address, to_alice[number], number) == Status.STORED

    # Alice comes back through the other relay with the same token.
    again = await Peer.join(second.url, room_id, alice.client.token)
    await again.wait(lambda: len(again.stored) == 10, "the frames kept for alice")

    # Every frame was stored once (one frame id per payload, in order) and
    # ACKed once, and nothing is left stored. A frame stored while its
    # recipient joins may be handed over twice with the same frame id (the
    # mailbox read and the notice race); clients drop such repeats by id,
    # as Peer does, so repeats of an id are allowed and counted nowhere.
    assert list(alice.stored.values()) + list(again.stored.values()) == to_alice
    await bob.wait(lambda: bob.payloads() == to_bob, "every frame for bob")
    for peer in (alice, again, bob):
        assert set(peer.acks.values()) == {1}
    wait_until(lambda: _mailbox_frames(second) == 0, "the mailboxes to empty")
    await again.close()
    await bob.close()


def _mailbox_frames(relay: RelayProcess) -> int:
    _, body = http_get(relay.url, "/metrics")
    found = re.search(r"^saltchat_relay_mailbox_frames (\S+)$", body, re.MULTILINE)
    assert found is not None
    return int(float(found.group(1)))


async def test_frames_stored_through_one_relay_are_fetched_through_another(
    start_relay: Start,
) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(first.url, room_id)
    token = bob.client.token
    await bob.close()
    await alice.wait(lambda: len(alice.presence) == 2, "bob to come and go")

    payloads = [os.urandom(64) for _ in range(5)]
    for number, payload in enumerate(payloads):
        assert await alice.send(bob.address, payload, number) == Status.STORED

    back = await Peer.join(second.url, room_id, token)
    await back.wait(lambda: back.payloads() == payloads, "the stored frames")
    await back.close()

    # ACKed through the second relay: the first has nothing left to give.
    wait_until(lambda: _mailbox_frames(first) == 0, "the ACKs to land")
    again = await Peer.join(first.url, room_id, token)
    assert await again.send(alice.address, b"done") == Status.DELIVERED
    assert again.stored == {}
    await again.close()
    await alice.close()


async def test_a_full_store_refuses_through_every_relay_and_stays_healthy(
    start_relay: Start, redis_server: RedisServer
) -> None:
    # The overall cap is one frame across both relays.
    cap = ("--store-max-frames", "1")
    first, second = start_relay(redis_server, *cap), start_relay(redis_server, *cap)
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    carol = await Peer.join(second.url, room_id)
    bob = await Peer.join(first.url, room_id)
    await bob.close()
    await alice.wait(lambda: len(alice.presence) == 3, "carol, and bob come and go")

    assert await alice.send(bob.address, b"kept") == Status.STORED
    assert await carol.send(bob.address, b"refused") == Status.STORAGE_UNAVAILABLE
    for relay in (first, second):
        assert http_get(relay.url, "/healthz")[0] == 200
    _, body = http_get(second.url, "/metrics")
    assert 'saltchat_relay_drops_total{reason="storage_full"} 1.0' in body
    await alice.close()
    await carol.close()


async def test_redis_stopped_and_restarted(start_relay: Start, tmp_path: Path) -> None:
    server = RedisServer(need_binary("redis-server"), tmp_path / "redis")
    server.start()
    try:
        await _outage_and_recovery(start_relay(server), server)
    finally:
        server.stop()


async def _outage_and_recovery(relay: RelayProcess, server: RedisServer) -> None:
    room_id = os.urandom(32)
    alice = await Peer.join(relay.url, room_id)
    bob = await Peer.join(relay.url, room_id)
    token = bob.client.token
    await bob.close()
    await alice.wait(lambda: len(alice.presence) == 2, "bob to come and go")
    assert await alice.send(bob.address, b"before", 1) == Status.STORED
    assert http_get(relay.url, "/healthz")[0] == 200
    assert "saltchat_relay_redis_connected 1.0" in http_get(relay.url, "/metrics")[1]

    # Redis goes away: unhealthy, and senders are refused, never dropped.
    server.stop()
    wait_until(lambda: http_get(relay.url, "/healthz")[0] == 503, "/healthz 503")
    assert await alice.send(bob.address, b"refused", 2) == Status.STORAGE_UNAVAILABLE

    # Redis comes back: the relay reconnects by itself.
    server.start()
    wait_until(lambda: http_get(relay.url, "/healthz")[0] == 200, "/healthz 200")
    metrics = http_get(relay.url, "/metrics")[1]
    found = re.search(r"^saltchat_relay_redis_reconnects_total (\S+)$", metrics, re.M)
    assert found is not None and float(found.group(1)) >= 1
    assert await alice.send(bob.address, b"after", 3) == Status.STORED
    back = await Peer.join(relay.url, room_id, token)
    await back.wait(lambda: back.payloads() == [b"before", b"after"], "stored frames")
    await alice.close()
    await back.close()
    assert "reconnected to Redis" in relay.log_text()


async def test_relay_starts_without_redis_and_serves_once_it_comes(
    start_relay: Start, tmp_path: Path
) -> None:
    server = RedisServer(need_binary("redis-server"), tmp_path / "redis")
    server.start()
    server.stop()
    relay = start_relay(server)
    assert http_get(relay.url, "/healthz")[0] == 503
    server.start()
    try:
        wait_until(lambda: http_get(relay.url, "/healthz")[0] == 200, "/healthz 200")
        peer = await Peer.join(relay.url, os.urandom(32))
        await peer.close()
    finally:
        server.stop()


async def test_join_while_redis_is_down_is_refused_with_1011(
    start_relay: Start, tmp_path: Path
) -> None:
    server = RedisServer(need_binary("redis-server"), tmp_path / "redis")
    server.start()
    relay = start_relay(server)
    server.stop()
    wait_until(lambda: http_get(relay.url, "/healthz")[0] == 503, "/healthz 503")

    client = await Client.open(relay.url)
    await client.send(encode(Join(os.urandom(32), client.token)))
    code, reason = await asyncio.wait_for(client.closed(), DEADLINE)
    assert (code, reason) == (1011, "relay storage unavailable; try later")


async def test_notices_lost_while_a_relay_reconnects_are_made_good(
    start_relay: Start, redis_server: RedisServer
) -> None:
    first, second = start_relay(), start_relay()
    room_id = os.urandom(32)
    alice = await Peer.join(first.url, room_id)
    bob = await Peer.join(second.url, room_id)
    await alice.wait(lambda: len(alice.presence) == 1, "bob joined")

    # Bob's relay reads his mailbox right after his JOIN; a SEND it answers
    # later (several Redis round trips) comes after that read.
    assert await bob.send(alice.address, b"ready", 9) == Status.STORED

    # Bob's relay is frozen while Redis drops every pub/sub connection: the
    # notices of frames stored meanwhile reach nobody.
    second.process.send_signal(signal.SIGSTOP)
    try:
        client = Redis.from_url(redis_server.url)
        assert await client.client_kill_filter(_type="pubsub") >= 1
        await client.aclose()
        for number in range(3):
            status = await alice.send(bob.address, b"%d" % number, number)
            assert status == Status.STORED
    finally:
        second.process.send_signal(signal.SIGCONT)

    # Reconnected, the relay reads the mailbox again: no JOIN is needed.
    await bob.wait(lambda: bob.payloads() == [b"0", b"1", b"2"], "the frames")
    await alice.close()
    await bob.close()
