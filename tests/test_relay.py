"""The relay in this process on 127.0.0.1 port 0, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chat.envelope import (
    BROADCAST,
    MAX_PAYLOAD,
    Ack,
    Deliver,
    Join,
    Presence,
    PresenceKind,
    Result,
    Status,
    encode,
)
from server.relay import Relay
from tests.relay_helpers import Client, http_get, make_config, running_relay


def room() -> bytes:
    return os.urandom(32)


async def pair(relay: Relay, room_id: bytes) -> tuple[Client, Client]:
    """Two clients in `room_id`; the first has seen the second join."""
    first = await Client.open(relay.url)
    await first.join(room_id)
    second = await Client.open(relay.url)
    joined = await second.join(room_id)
    assert joined.members == (first.address,)
    presence = await first.expect(Presence)
    assert (presence.kind, presence.address) == (PresenceKind.JOINED, second.address)
    return first, second


# Rooms and presence.


async def test_welcome_tells_peer_id_and_max_payload(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        client = await Client.open(relay.url)
        assert len(client.welcome.peer_id) == 8
        assert client.welcome.max_payload == MAX_PAYLOAD


async def test_members_are_told_of_joins_and_leaves(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.leave(room_id)
        presence = await first.expect(Presence)
        assert (presence.kind, presence.address) == (PresenceKind.LEFT, second.address)


async def test_a_dropped_connection_is_announced_as_left(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        presence = await first.expect(Presence)
        assert (presence.kind, presence.address) == (PresenceKind.LEFT, second.address)


async def test_same_address_from_a_newer_connection_replaces_the_older(
    tmp_path: Path,
) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        again = await Client.open(relay.url)
        again.token, again.address = second.token, second.address
        await again.join(room_id)
        assert await second.closed() == (4002, "address joined from a newer connection")
        await first.send_to(room_id, second.address, b"to the newer one")
        assert (await again.deliver()).payload == b"to the newer one"


# Forwarding.


async def test_unicast_is_forwarded_byte_for_byte(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await first.send_to(room_id, second.address, payload, send_id=42)
        result = await first.result()
        assert (result.send_id, result.status) == (42, Status.DELIVERED)
        deliver = await second.deliver()
        assert deliver == Deliver(room_id, first.address, 0, payload)


async def test_broadcast_reaches_every_other_member_only(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        third = await Client.open(relay.url)
        await third.join(room_id)
        await first.expect(Presence)
        await second.expect(Presence)

        await first.send_to(room_id, BROADCAST, b"\x00all\xff", send_id=7)
        assert (await first.result()).status == Status.DELIVERED
        for other in (second, third):
            assert (await other.deliver()).payload == b"\x00all\xff"

        # The sender gets nothing but its RESULT: its next message is the
        # answer to a later SEND.
        await first.send_to(room_id, room(), b"x", send_id=8)
        assert (await first.result()).send_id == 8


async def test_send_outside_a_joined_room_is_refused(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        client = await Client.open(relay.url)
        await client.join(room())
        await client.send_to(room(), BROADCAST, b"x", send_id=3)
        result = await client.result()
        assert (result.send_id, result.status) == (3, Status.NOT_A_MEMBER)


async def test_payload_over_the_bound_is_refused_not_closed(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_message=4096) as relay:
        room_id = room()
        client = await Client.open(relay.url)
        await client.join(room_id)
        too_big = client.welcome.max_payload + 1
        await client.send_to(room_id, BROADCAST, b"p" * too_big, send_id=9)
        assert (await client.result()).status == Status.PAYLOAD_TOO_LARGE
        await client.send_to(room_id, BROADCAST, b"p", send_id=10)
        assert (await client.result()).status == Status.DELIVERED


async def test_payloads_never_appear_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="server")
    marker = b"PAYLOAD-MARKER-7f3a"
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await first.send_to(room_id, second.address, marker)
        await second.deliver()
        await first.result()
        await second.close()
        await first.expect(Presence)
        await first.send_to(room_id, second.address, marker)
        assert (await first.result()).status == Status.STORED
        await first.send(b"\x01\x03" + marker)
        await first.closed()

    text = caplog.text
    assert "opened peer=" in text and "closed peer=" in text
    assert marker.decode() not in text
    assert marker.hex() not in text
    assert room_id.hex() not in text
    assert first.token.hex() not in text


# The mailbox through the relay.


async def test_absent_member_gets_stored_frames_on_return_and_ack_deletes(
    tmp_path: Path,
) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        for number in range(3):
            await first.send_to(room_id, second.address, b"m%d" % number, number)
            assert (await first.result()).status == Status.STORED

        # Back: JOINED, then the stored frames oldest first.
        back = await Client.open(relay.url)
        back.token, back.address = second.token, second.address
        await back.join(room_id)
        delivered = [await back.deliver() for _ in range(3)]
        assert [d.payload for d in delivered] == [b"m0", b"m1", b"m2"]
        assert all(d.frame_id and d.sender == first.address for d in delivered)

        # Acknowledged frames are gone on the next return; the other stays.
        for frame in delivered[:2]:
            await back.send(encode(Ack(room_id, frame.frame_id)))

        # A connection's messages are handled in order: once a later SEND is
        # answered, the ACKs before it are committed.
        await back.send_to(room_id, BROADCAST, b"sync", send_id=99)
        assert (await back.result()).send_id == 99
        await back.close()
        third = await Client.open(relay.url)
        third.token, third.address = second.token, second.address
        await third.join(room_id)
        assert (await third.deliver()).payload == b"m2"


async def test_mailbox_larger_than_the_outbound_queue_is_streamed(
    tmp_path: Path,
) -> None:
    payload = b"q" * 8192
    async with running_relay(tmp_path, outbound_bytes=32 * 1024) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        for number in range(40):
            await first.send_to(room_id, second.address, payload, number)
            assert (await first.result()).status == Status.STORED

        # The owner comes back on a connection with tiny socket buffers (set
        # on the listening socket, which accepted sockets inherit) and reads
        # nothing until the relay's queue for it has filled up.
        assert relay._server is not None
        for listener in relay._server.sockets:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = relay.url.removeprefix("ws://").split(":")
        sock.connect((host, int(port)))
        back = await Client.open(relay.url, sock=sock, max_queue=1)
        back.token, back.address = second.token, second.address
        await back.join(room_id)
        session = next(s for s in relay._sessions if back.address in s.rooms.values())
        async with asyncio.timeout(10):
            while session.outbound.queued_bytes < 16 * 1024:
                await asyncio.sleep(0.01)  # polling a condition, with a deadline

        # 320 KiB stored, 32 KiB of queue: all of it arrives, nothing dropped.
        delivered = [await back.deliver() for _ in range(40)]
        assert all(d.payload == payload for d in delivered)
        assert len({d.frame_id for d in delivered}) == 40
        assert relay.stats.drops["slow_consumer"] == 0


async def test_ack_of_someone_elses_frame_deletes_nothing(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        await first.send_to(room_id, second.address, b"mine")
        assert (await first.result()).status == Status.STORED

        # The owner reads the frame and leaves without acknowledging it.
        back = await Client.open(relay.url)
        back.token, back.address = second.token, second.address
        await back.join(room_id)
        read = await back.deliver()
        assert read.payload == b"mine"
        await back.close()
        assert [(await first.expect(Presence)).kind for _ in range(2)] == [
            PresenceKind.JOINED,
            PresenceKind.LEFT,
        ]

        # The other member acknowledges that very frame id: nothing happens.
        await first.send(encode(Ack(room_id, read.frame_id)))
        await first.send_to(room_id, BROADCAST, b"sync", send_id=99)
        assert (await first.result()).send_id == 99
        again = await Client.open(relay.url)
        again.token, again.address = second.token, second.address
        await again.join(room_id)
        assert await again.deliver() == read


async def test_ack_of_the_largest_frame_id_keeps_the_connection(
    tmp_path: Path,
) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        client = await Client.open(relay.url)
        await client.join(room_id)
        await client.send(encode(Ack(room_id, 2**64 - 1)))
        await client.send_to(room_id, BROADCAST, b"sync", send_id=7)
        assert (await client.result()).send_id == 7


async def test_unknown_recipient_is_refused(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        client = await Client.open(relay.url)
        await client.join(room_id)
        await client.send_to(room_id, os.urandom(32), b"x")
        assert (await client.result()).status == Status.UNKNOWN_RECIPIENT


async def test_full_mailbox_refuses_the_sender(tmp_path: Path) -> None:
    async with running_relay(tmp_path, mailbox_max_frames=2) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        statuses = []
        for number in range(3):
            await first.send_to(room_id, second.address, b"x", number)
            statuses.append((await first.result()).status)
        assert statuses == [Status.STORED, Status.STORED, Status.MAILBOX_FULL]


async def test_expired_membership_is_no_longer_a_recipient(tmp_path: Path) -> None:
    now = [1000.0]
    async with running_relay(tmp_path, clock=lambda: now[0], mailbox_ttl=60) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        now[0] += 61
        await first.send_to(room_id, second.address, b"late")
        assert (await first.result()).status == Status.UNKNOWN_RECIPIENT


async def test_storage_failure_refuses_and_fails_health(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await second.close()
        await first.expect(Presence)
        await relay.mailbox.close()

        await first.send_to(room_id, second.address, b"x")
        assert (await first.result()).status == Status.STORAGE_UNAVAILABLE
        status, _ = await asyncio.to_thread(http_get, relay.url, "/healthz")
        assert status == 503


# Limits: each closes with its code.


async def test_message_over_max_size_closes_1009(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_message=1024) as relay:
        client = await Client.open(relay.url)
        await client.send(b"\x01\x03" + bytes(1023))
        code, _ = await client.closed()
        assert code == 1009


async def test_rate_limit_closes_1008(tmp_path: Path) -> None:
    async with running_relay(tmp_path, rate=0.001, burst=3) as relay:
        client = await Client.open(relay.url)
        room_id = room()
        await client.join(room_id)
        for _ in range(3):
            await client.send_to(room_id, BROADCAST, b"x")
        assert await client.closed() == (1008, "rate limit exceeded; slow down")


async def test_connections_per_address_close_1013(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_connections_per_address=2) as relay:
        kept = [await Client.open(relay.url) for _ in range(2)]
        extra = await connect(relay.url, compression=None)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(extra.recv(), 10)
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 1013
        await kept[0].close()


async def test_connections_in_all_close_1013(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_connections=1) as relay:
        kept = await Client.open(relay.url)
        extra = await connect(relay.url, compression=None)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(extra.recv(), 10)
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 1013
        await kept.close()


async def test_rooms_per_connection_close_1008(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_rooms_per_connection=1) as relay:
        client = await Client.open(relay.url)
        await client.join(room())
        await client.send(encode(Join(room(), client.token)))
        assert await client.closed() == (1008, "too many rooms on one connection")


async def test_members_per_room_close_1008(tmp_path: Path) -> None:
    async with running_relay(tmp_path, max_members_per_room=2) as relay:
        room_id = room()
        await pair(relay, room_id)
        third = await Client.open(relay.url)
        await third.send(encode(Join(room_id, third.token)))
        assert await third.closed() == (1008, "room is full")


async def test_no_join_in_time_closes_1008(tmp_path: Path) -> None:
    async with running_relay(tmp_path, join_timeout=0.1) as relay:
        client = await Client.open(relay.url)
        assert await client.closed() == (1008, "no JOIN in time after connecting")


async def test_idle_connection_closes_4001(tmp_path: Path) -> None:
    async with running_relay(tmp_path, idle_timeout=0.2) as relay:
        client = await Client.open(relay.url)
        await client.join(room())
        assert await client.closed() == (4001, "idle timeout")


async def test_unanswered_keepalive_pings_close_1011(tmp_path: Path) -> None:
    async with running_relay(tmp_path, ping_interval=0.05, ping_timeout=0.05) as relay:
        # A raw client that completes the handshake and never answers a ping.
        host, port = relay.url.removeprefix("ws://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await reader.readuntil(b"\r\n\r\n")
        stream = await asyncio.wait_for(reader.read(), 10)
        writer.close()

    # Server frames are unmasked: walk them to the close frame.
    codes = []
    while len(stream) >= 2:
        opcode, size = stream[0] & 0x0F, stream[1] & 0x7F
        if opcode == 0x8:
            codes.append(int.from_bytes(stream[2:4], "big"))
        stream = stream[2 + size :]
    assert codes == [1011]
    assert relay.stats.closes["keepalive"] == 1


async def test_text_message_closes_1003(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        client = await Client.open(relay.url)
        await client.send("hello")
        code, _ = await client.closed()
        assert code == 1003


async def test_malformed_envelope_closes_1002_and_others_go_on(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        bad = await Client.open(relay.url)
        await bad.send(b"\x07\x01")
        assert await bad.closed() == (1002, "unknown envelope version 0x07")
        await first.send_to(room_id, second.address, b"still here")
        assert (await second.deliver()).payload == b"still here"


async def test_slow_consumer_is_closed_4000_and_the_room_keeps_going(
    tmp_path: Path,
) -> None:
    payload = b"s" * 16384
    window = 8
    async with running_relay(tmp_path, outbound_bytes=512 * 1024) as relay:
        room_id = room()
        sender, fast = await pair(relay, room_id)
        slow = await Client.open(relay.url, max_queue=1)
        await slow.join(room_id)
        await sender.expect(Presence)
        await fast.expect(Presence)

        # The slow member never reads; the fast one reads each window before
        # the next is sent, until the relay gives up on the slow one (its
        # socket buffers are finite, so this ends; the cap is a safety net).
        left: list[Presence] = []
        sent = 0
        while not left and sent < 4000:
            for _ in range(window):
                await sender.send_to(room_id, BROADCAST, payload, sent)
                sent += 1
            delivered = 0
            while delivered < window:
                message = await fast.receive()
                if isinstance(message, Presence):
                    left.append(message)
                else:
                    assert message == Deliver(room_id, sender.address, 0, payload)
                    delivered += 1

        assert [(m.kind, m.address) for m in left] == [
            (PresenceKind.LEFT, slow.address)
        ]
        assert relay.stats.drops["slow_consumer"] == 1
        results = [await sender.receive() for _ in range(sent + 1)]
        statuses = [r.status for r in results if isinstance(r, Result)]
        assert statuses == [Status.DELIVERED] * sent
        assert await slow.closed() == (4000, "slow consumer: outbound buffer full")


# Operations.


async def test_healthz_is_200_while_serving(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        assert await asyncio.to_thread(http_get, relay.url, "/healthz") == (200, "ok\n")


async def _silent_websocket(url: str) -> asyncio.StreamWriter:
    """Open a WebSocket by hand and never read from it again.

    A peer that never answers the relay's close frame holds the relay's
    closing handshake open until the shutdown timeout.
    """
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return writer


async def test_stopping_relay_answers_503_while_it_closes_connections(
    tmp_path: Path,
) -> None:
    relay = Relay(make_config(tmp_path, shutdown_timeout=2.0))
    await relay.start()
    silent = await _silent_websocket(relay.url)
    # stop() takes its first step (stopping, then waiting on the silent
    # peer) before the loop can accept the requests below: its task is
    # ready first, and new connections are only seen on a later iteration.
    stopping = asyncio.create_task(relay.stop())
    try:
        health = await asyncio.to_thread(http_get, relay.url, "/healthz")
        upgrade = await asyncio.to_thread(http_get, relay.url, "/")
    finally:
        await stopping
        silent.close()
    assert health == (503, "unavailable\n")
    assert upgrade == (503, "relay stopping\n")


async def test_metrics_report_traffic_and_closes(tmp_path: Path) -> None:
    async with running_relay(tmp_path) as relay:
        room_id = room()
        first, second = await pair(relay, room_id)
        await first.send_to(room_id, second.address, b"12345")
        await second.deliver()
        await first.send("text")
        await first.closed()
        await second.close()
        await second.websocket.wait_closed()

        status, body = await asyncio.to_thread(http_get, relay.url, "/metrics")
    assert status == 200
    lines = set(body.splitlines())
    assert 'saltchat_relay_closes_total{reason="text"} 1.0' in lines
    assert "saltchat_relay_send_seconds_count 1.0" in lines
    assert "saltchat_relay_mailbox_frames 0.0" in lines
    assert any(
        line.startswith("saltchat_relay_frames_received_total ") for line in lines
    )
    assert any(line.startswith("saltchat_relay_connections ") for line in lines)
    assert any(line.startswith("saltchat_relay_rooms ") for line in lines)


async def test_tls_serves_wss(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await made.wait() == 0
    async with running_relay(tmp_path, tls_cert=str(cert), tls_key=str(key)) as relay:
        assert relay.url.startswith("wss://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        client = await Client.open(relay.url, ssl=context)
        await client.join(room())
        await client.close()
