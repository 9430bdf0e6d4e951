"""The docker-compose topology run as processes: Redis, two relays, nginx.

The relays run the compose file's relay command and environment (only the
address, port, data directory and Redis URL change on a test machine); nginx
is Debian's, in the foreground, with deploy/nginx.conf templated only for
ports and paths. Clients connect through nginx, as users would.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat.envelope import BROADCAST, PresenceKind, Status
from tests.redis_helpers import Nginx, Peer, RedisServer, need_binary
from tests.relay_helpers import (
    ROOT,
    RelayProcess,
    compose_command,
    compose_environment,
    http_get,
)

COMPOSE = ROOT / "docker-compose.yml"


class Stack:
    """The processes of one topology, stopped together."""

    def __init__(self) -> None:
        self.relays: list[RelayProcess] = []
        self.nginx: Nginx | None = None

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for relay in self.relays:
            relay.stop()


@pytest.fixture
def stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    """Two relays from the compose file on Redis, nginx in front."""
    nginx_binary = need_binary("nginx")
    running = Stack()
    env = compose_environment(COMPOSE)
    assert env["SALTCHAT_RELAY_REDIS"].startswith("redis://redis:")
    env["SALTCHAT_RELAY_REDIS"] = redis_server.url
    env["SALTCHAT_RELAY_REDIS_PREFIX"] = "test-" + os.urandom(6).hex()
    try:
        for number in (1, 2):
            argv = compose_command(COMPOSE)[1:]
            argv[argv.index("--host") + 1] = "127.0.0.1"
            argv[argv.index("--port") + 1] = "0"
            argv[argv.index("--data-dir") + 1] = str(tmp_path / f"data-{number}")
            relay = RelayProcess(
                argv,
                tmp_path / f"relay-{number}.log",
                env=env,
                command=[sys.executable, "-m", "server"],
            )
            running.relays.append(relay)
            relay.wait_serving()
        upstreams = [relay.url.removeprefix("ws://") for relay in running.relays]
        running.nginx = Nginx(nginx_binary, tmp_path / "nginx", upstreams)
        running.nginx.start()
        yield running
    finally:
        running.stop()


def _connections(relay: RelayProcess) -> int:
    _, body = http_get(relay.url, "/metrics")
    found = re.search(r"^saltchat_relay_connections (\S+)$", body, re.MULTILINE)
    assert found is not None
    return int(float(found.group(1)))


async def test_a_conversation_end_to_end_through_nginx(stack: Stack) -> None:
    assert stack.nginx is not None
    url = stack.nginx.url
    assert http_get(url, "/healthz") == (200, "ok\n")

    # least_conn puts the two members on different relays.
    room_id = os.urandom(32)
    alice = await Peer.join(url, room_id)
    bob = await Peer.join(url, room_id)
    assert [_connections(relay) for relay in stack.relays] == [1, 1]
    await alice.wait(
        lambda: alice.presence == [(PresenceKind.JOINED, bob.address)], "bob joined"
    )

    lines = [b"hello bob", b"hello alice", b"how are you", b"fine"]
    for number, line in enumerate(lines):
        sender, recipient = (alice, bob) if number % 2 == 0 else (bob, alice)
        assert await sender.send(recipient.address, line, number) == Status.STORED
    await bob.wait(lambda: bob.payloads() == lines[0::2], "alice's lines")
    await alice.wait(lambda: alice.payloads() == lines[1::2], "bob's lines")

    assert await bob.send(BROADCAST, b"bye all", 9) == Status.DELIVERED
    await alice.wait(lambda: alice.live == [b"bye all"], "the room frame")
    await alice.close()
    await bob.close()


async def test_clients_of_a_killed_relay_reconnect_through_nginx(
    stack: Stack,
) -> None:
    assert stack.nginx is not None
    url = stack.nginx.url
    room_id = os.urandom(32)
    alice = await Peer.join(url, room_id)
    alice_relay = next(relay for relay in stack.relays if _connections(relay))
    bob = await Peer.join(url, room_id)
    await alice.wait(lambda: len(alice.presence) == 1, "bob joined")

    # Bob's relay dies; nginx sends his next connection to the other one,
    # where the frame kept for him meanwhile waits.
    bob_relay = next(relay for relay in stack.relays if relay is not alice_relay)
    bob_relay.stop()
    assert await alice.send(bob.address, b"while away", 1) == Status.STORED
    back = await Peer.join(url, room_id, bob.client.token)
    await back.wait(lambda: back.payloads() == [b"while away"], "the stored frame")
    assert await back.send(alice.address, b"back", 2) == Status.DELIVERED
    await alice.wait(lambda: alice.live == [b"back"], "bob's live frame")
    await alice.close()
    await back.close()
