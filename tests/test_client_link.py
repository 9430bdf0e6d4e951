"""The client's link: disconnect notices, send pacing, direct-mode reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from chat.client import ChatClient, ClientEvent
from chat.core.identity import Identity
from chat.core.rooms import RoomKeys
from chat.limits import SEND_BURST, SEND_RATE
from chat.transport import DirectLink, DirectListener, Link, connect_direct
from chat.trust import TrustStore
from server.config import RelayConfig
from tests.client_helpers import MemoryHub, stop_client_task

ROOM = RoomKeys.from_name("link-room")
A, B = b"A" * 32, b"B" * 32
DEADLINE = 30.0


def _no_wait() -> Iterator[float]:
    return itertools.repeat(0.0)


class Changes:
    """Set whenever something a test waits on happens (an event, an attempt)."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait, with a deadline, until `condition` holds."""
        async with asyncio.timeout(DEADLINE):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Person:
    client: ChatClient
    events: list[ClientEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def named(self, event: str, **fields: object) -> list[ClientEvent]:
        return [
            e
            for e in self.events
            if e.event == event and all(e.fields.get(k) == v for k, v in fields.items())
        ]


class People:
    """Clients started in one test, all closed at its end."""

    def __init__(self) -> None:
        self.people: list[Person] = []
        self.changes = Changes()
        self.until = self.changes.until

    def start(
        self,
        nick: str,
        connect: Callable[[], Awaitable[Link]],
        **options: Any,
    ) -> Person:
        events: list[ClientEvent] = []

        def emit(event: ClientEvent) -> None:
            events.append(event)
            self.changes.changed.set()

        client = ChatClient(
            identity=Identity.generate(),
            room=ROOM,
            nick=nick,
            trust=TrustStore(None),
            connect=connect,
            emit=emit,
            **options,
        )
        person = Person(client, events, asyncio.create_task(client.run()))
        self.people.append(person)
        return person

    async def close(self) -> None:
        for person in self.people:
            with contextlib.suppress(Exception):
                await person.client.close()
            if person.task is not None:
                await stop_client_task(person.task)


@pytest.fixture
async def people() -> AsyncIterator[People]:
    running = People()
    try:
        yield running
    finally:
        await running.close()


async def test_disconnected_is_said_once_per_loss_of_the_link(people: People) -> None:
    hub = MemoryHub()
    hub.refused.add(A)
    attempts = 0
    connect = hub.connector(A)

    async def counted() -> Link:
        nonlocal attempts
        attempts += 1
        people.changes.changed.set()
        return await connect()

    alice = people.start("alice", counted, backoff=_no_wait)
    await people.until(lambda: attempts >= 5)
    hub.refused.discard(A)
    await people.until(lambda: bool(alice.named("ready")))
    first_loss = attempts

    # The link drops; the relay refuses a few reconnects, then lets it in.
    hub.refused.add(A)
    hub.leave(A)
    await people.until(lambda: attempts >= first_loss + 5)
    hub.refused.discard(A)
    await people.until(lambda: bool(alice.named("reconnected")))

    assert len(alice.named("disconnected")) == 2
    assert alice.events[0].event == "disconnected"


class VirtualTime:
    """A clock that moves only when the client waits to pace its sending."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_a_burst_of_messages_stays_within_the_relays_allowance(
    people: People,
) -> None:
    hub, time = MemoryHub(), VirtualTime()
    sent_at: list[float] = []

    def tap(sender: bytes, _to: bytes, payload: bytes) -> bytes:
        if sender == A:
            sent_at.append(time())
        return payload

    hub.tap = tap
    options = {"backoff": _no_wait, "clock": time, "sleep": time.sleep}
    alice = people.start("alice", hub.connector(A), **options)
    bob = people.start("bob", hub.connector(B), **options)
    await people.until(
        lambda: bool(alice.named("secure")) and bool(bob.named("secure"))
    )
    count = 3 * SEND_BURST
    for number in range(count):
        alice.client.send_message(f"message {number}")
    await people.until(lambda: len(bob.named("message")) == count)

    # The relay's token bucket (server.config defaults) never runs dry; the
    # JOIN took one token before any frame.
    relay = RelayConfig()
    tokens, last = float(relay.burst) - 1.0, sent_at[0]
    for moment in sent_at:
        tokens = min(float(relay.burst), tokens + (moment - last) * relay.rate)
        last = moment
        tokens -= 1.0
        assert tokens >= 0.0
    assert sent_at[-1] - sent_at[0] >= (len(sent_at) - SEND_BURST) / SEND_RATE * 0.99


async def test_direct_mode_reconnects_and_delivers_once(people: People) -> None:
    listener = DirectListener()
    url = await listener.start("127.0.0.1", 0)
    accepted: list[DirectLink] = []
    allowed = asyncio.Event()
    allowed.set()

    async def accept() -> Link:
        link = await listener.accept()
        accepted.append(link)
        return link

    async def dial() -> Link:
        await allowed.wait()
        return await connect_direct(url)

    try:
        alice = people.start("alice", accept, backoff=_no_wait)
        bob = people.start("bob", dial, backoff=_no_wait)
        await people.until(
            lambda: bool(alice.named("secure")) and bool(bob.named("secure"))
        )

        # The connection breaks; Bob cannot dial back until allowed to.
        allowed.clear()
        await accepted[0].close()
        await people.until(lambda: bool(bob.named("disconnected")))
        alice.client.send_message("sent while apart")
        allowed.set()
        await people.until(lambda: bool(bob.named("message", text="sent while apart")))
        bob.client.send_message("back again")
        await people.until(lambda: bool(alice.named("message", text="back again")))
        await people.until(lambda: bool(alice.named("delivered", complete=True)))
    finally:
        await listener.close()

    assert bob.named("reconnected") and alice.named("reconnected")
    assert len(bob.named("message", text="sent while apart")) == 1
    assert len(accepted) == 2
