"""Bounds on what clients can make the relay store, with real clients.

The share of one sender in a mailbox, the overall cap of the store, the
memberships a connection or a client address may create, the rate of JOIN
and LEAVE, and the shorter life of memberships never used (docs/relay.md,
"Memberships" and "Storage bounds").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from chat.envelope import (
    BROADCAST,
    Join,
    Joined,
    Leave,
    Presence,
    PresenceKind,
    Status,
    encode,
)
from server.relay import Relay
from tests.relay_helpers import Client, http_get, running_relay


def room() -> bytes:
    return os.urandom(32)


async def absent_member(relay: Relay, room_id: bytes) -> tuple[Client, bytes]:
    """A client in `room_id`, and the address of a member who left it."""
    sender = await Client.open(relay.url)
    await sender.join(room_id)
    away = await Client.open(relay.url)
    await away.join(room_id)
    await sender.expect(Presence)
    await away.close()
    assert (await sender.expect(Presence)).kind == PresenceKind.LEFT
    return sender, away.address


async def statuses(
    client: Client, room_id: bytes, to: bytes, count: int
) -> list[Status]:
    """SEND `count` frames to `to`; the status of each RESULT."""
    found = []
    for number in range(count):
        await client.send_to(room_id, to, b"frame", number)
        found.append((await client.result()).status)
    return found


async def join_as(client: Client, room_id: bytes, token: bytes) -> None:
    """JOIN `room_id` with `token` instead of the client's own."""
    await client.send(encode(Join(room_id, token)))


# Storage bounds.


async def test_one_sender_fills_only_its_share_of_a_mailbox(tmp_path: Path) -> None:
    async with running_relay(tmp_path, mailbox_sender_frames=2) as relay:
        room_id = room()
        sender, away = await absent_member(relay, room_id)
        assert await statuses(sender, room_id, away, 3) == [
            Status.STORED,
            Status.STORED,
            Status.MAILBOX_FULL,
        ]

        # Another sender can still leave mail for the same member.
        other = await Client.open(relay.url)
        await other.join(room_id)
        assert await statuses(other, room_id, away, 1) == [Status.STORED]


async def test_overall_cap_refuses_as_storage_unavailable(tmp_path: Path) -> None:
    async with running_relay(tmp_path, store_max_frames=2) as relay:
        room_id = room()
        sender, away = await absent_member(relay, room_id)
        assert await statuses(sender, room_id, away, 3) == [
            Status.STORED,
            Status.STORED,
            Status.STORAGE_UNAVAILABLE,
        ]

        # A full store is not a failed one: still healthy, counted apart.
        assert await asyncio.to_thread(http_get, relay.url, "/healthz") == (200, "ok\n")
        _, body = await asyncio.to_thread(http_get, relay.url, "/metrics")
        assert 'saltchat_relay_drops_total{reason="storage_full"} 1.0' in body


# Memberships.


async def test_join_and_leave_have_a_rate_of_their_own(tmp_path: Path) -> None:
    async with running_relay(tmp_path, join_rate=0.001, join_burst=3) as relay:
        client = await Client.open(relay.url)
        room_id = room()
        await client.join(room_id)
        await client.leave(room_id)
        await client.join(room_id)

        # Frames still flow on the frame rate.
        await client.send_to(room_id, BROADCAST, b"x")
        assert (await client.result()).status == Status.DELIVERED
        await client.leave(room_id)
        assert await client.closed() == (
            1008,
            "JOIN/LEAVE rate limit exceeded; slow down",
        )


async def test_new_memberships_per_connection_close_1008(tmp_path: Path) -> None:
    async with running_relay(tmp_path, new_memberships_per_connection=2) as relay:
        client = await Client.open(relay.url)
        room_id = room()
        for _ in range(2):
            await join_as(client, room_id, os.urandom(32))
            await client.expect(Joined)
            await client.send(encode(Leave(room_id)))
        await join_as(client, room_id, os.urandom(32))
        assert await client.closed() == (
            1008,
            "too many new memberships on one connection",
        )


async def test_returning_member_creates_no_membership(tmp_path: Path) -> None:
    async with running_relay(tmp_path, new_memberships_per_connection=1) as relay:
        client = await Client.open(relay.url)
        first, second = room(), room()
        await client.join(first)
        await client.leave(first)
        await client.join(first)

        # The bound still holds for a membership that is new.
        await join_as(client, second, client.token)
        code, _ = await client.closed()
        assert code == 1008


async def test_new_memberships_per_address_close_1013(tmp_path: Path) -> None:
    async with running_relay(tmp_path, new_memberships_per_address=2) as relay:
        room_id = room()
        members = [await Client.open(relay.url) for _ in range(2)]
        for member in members:
            await member.join(room_id)
        late = await Client.open(relay.url)
        await join_as(late, room_id, os.urandom(32))
        assert await late.closed() == (
            1013,
            "too many new memberships from this address; try later",
        )

        # A member coming back needs no new membership.
        back = await Client.open(relay.url)
        back.token, back.address = members[0].token, members[0].address
        await members[0].close()
        await back.join(room_id)


async def test_minting_mailboxes_on_one_connection_is_stopped(tmp_path: Path) -> None:
    # The defaults, apart from the frame rate: JOIN then LEAVE with a fresh
    # token each time, as someone filling the store would.
    async with running_relay(tmp_path) as relay:
        client = await Client.open(relay.url)
        room_id = room()
        minted = 0
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):
                await join_as(client, room_id, os.urandom(32))
                await client.expect(Joined)
                await client.send(encode(Leave(room_id)))
                minted += 1
        assert minted < 40
        code, _ = await client.closed()
        assert code == 1008
        assert relay.stats.closes["join_rate"] + relay.stats.closes["memberships"]


async def test_unused_membership_expires_after_probation(tmp_path: Path) -> None:
    now = [1000.0]
    async with running_relay(
        tmp_path, clock=lambda: now[0], membership_probation=60
    ) as relay:
        room_id = room()
        sender, idle = await absent_member(relay, room_id)

        # A member who sent once keeps its membership for the TTL.
        talker = await Client.open(relay.url)
        await talker.join(room_id)
        await sender.expect(Presence)
        await talker.send_to(room_id, BROADCAST, b"hello")
        assert (await talker.result()).status == Status.DELIVERED
        await sender.deliver()
        await talker.close()
        await sender.expect(Presence)

        now[0] += 61
        assert await statuses(sender, room_id, idle, 1) == [Status.UNKNOWN_RECIPIENT]
        assert await statuses(sender, room_id, talker.address, 1) == [Status.STORED]
