"""End to end: a real relay subprocess and real `saltchat --json` clients."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import nacl.public
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chat import envelope
from tests.client_helpers import (  # noqa: F401 (cluster is a fixture)
    Cluster,
    JsonClient,
    cluster_fixture,
    run_chat,
)


async def _pair(
    cluster: Cluster, relay_url: str, room: str = "test-room"
) -> tuple[JsonClient, JsonClient]:
    alice = await cluster.client("alice", "--relay", relay_url, "--room", room)
    await alice.wait_for("ready")
    bob = await cluster.client("bob", "--relay", relay_url, "--room", room)
    await bob.wait_for("secure", peer="alice")
    await alice.wait_for("secure", peer="bob")
    return alice, bob


def _texts(client: JsonClient) -> list[str]:
    return [e["text"] for e in client.find("message")]


async def test_two_clients_chat_both_ways(cluster: Cluster) -> None:
    relay = await cluster.relay()
    alice, bob = await _pair(cluster, relay.url)

    await alice.say("hello bob")
    sent = await alice.wait_for("sent", text="hello bob")
    got = await bob.wait_for("message", text="hello bob")
    await alice.wait_for("delivered", id=sent["id"], to="bob")
    await bob.say("hello alice")
    got_back = await alice.wait_for("message", text="hello alice")

    assert got["from"] == "alice"
    assert got_back["from"] == "bob"
    assert got["id"] == sent["id"]
    secure = alice.find("secure", peer="bob")[0]
    assert (
        secure["safety_number"] == bob.find("secure", peer="alice")[0]["safety_number"]
    )
    assert secure["verified"] is False


async def test_relay_killed_and_restarted_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    relay = await cluster.relay()
    alice, bob = await _pair(cluster, relay.url)
    await alice.say("before")
    await bob.wait_for("message", text="before")

    # The relay dies mid-conversation; alice keeps typing into the outbox.
    await relay.kill()
    await alice.wait_for("disconnected")
    await bob.wait_for("disconnected")
    for n in range(3):
        await alice.say(f"during {n}")
        await alice.wait_for("sent", text=f"during {n}")

    # Same port, same data directory: both reconnect on their own.
    await cluster.relay(port=relay.port)
    await alice.wait_for("reconnected")
    await bob.wait_for("reconnected")
    for n in range(3):
        await bob.wait_for("message", text=f"during {n}")
        sent = alice.find("sent", text=f"during {n}")[0]
        await alice.wait_for("delivered", id=sent["id"])
    await bob.say("after")
    await alice.wait_for("message", text="after")
    await alice.say("last")
    await bob.wait_for("message", text="last")

    # Exactly once each; the order of stored and live frames is not promised.
    expected = ["before", "during 0", "during 1", "during 2", "last"]
    assert sorted(_texts(bob)) == expected
    assert _texts(alice) == ["after"]


async def test_message_to_offline_peer_arrives_when_it_returns(
    cluster: Cluster,
) -> None:
    relay = await cluster.relay()
    alice, bob = await _pair(cluster, relay.url)
    await bob.quit()
    await alice.wait_for("peer-left", peer="bob")

    await alice.say("while you were away")
    sent = await alice.wait_for("sent", text="while you were away")
    bob_again = await cluster.client("bob", "--relay", relay.url, "--room", "test-room")
    got = await bob_again.wait_for("message", text="while you were away")
    await alice.wait_for("delivered", id=sent["id"], to="bob")

    assert got["id"] == sent["id"]
    assert _texts(bob_again) == ["while you were away"]


async def test_group_of_three_fans_out_to_each(cluster: Cluster) -> None:
    relay = await cluster.relay()
    alice, bob = await _pair(cluster, relay.url)
    carol = await cluster.client("carol", "--relay", relay.url, "--room", "test-room")
    await carol.wait_for("secure", peer="alice")
    await carol.wait_for("secure", peer="bob")
    await alice.wait_for("secure", peer="carol")

    await alice.say("hello both")
    sent = await alice.wait_for("sent", text="hello both")
    await bob.wait_for("message", text="hello both")
    await carol.wait_for("message", text="hello both")
    done = await alice.wait_for("delivered", id=sent["id"], complete=True)
    await carol.say("carol here")
    await alice.wait_for("message", text="carol here")
    await bob.wait_for("message", text="carol here")

    receivers = {e["to"] for e in alice.find("delivered", id=sent["id"])}
    assert receivers == {"bob", "carol"}
    assert done["complete"] is True


def _copy_mailbox_token(cluster: Cluster, source: str, target: str) -> None:
    """Give home `target` the mailbox tokens (room addresses) of `source`."""
    rooms = cluster.tmp / target / "rooms"
    rooms.mkdir(mode=0o700, parents=True)
    for token in (cluster.tmp / source / "rooms").iterdir():
        copy = rooms / token.name
        copy.write_bytes(token.read_bytes())
        copy.chmod(0o600)


async def test_identity_change_raises_alert_and_holds_messages(
    cluster: Cluster,
) -> None:
    relay = await cluster.relay()
    alice, bob = await _pair(cluster, relay.url)
    await bob.quit()
    await alice.wait_for("peer-left", peer="bob")
    await alice.say("for bob only")
    await alice.wait_for("sent", text="for bob only")

    # Someone else (a new identity) answers at bob's address, with his name:
    # what a relay that lies about senders, or a stolen token, looks like.
    _copy_mailbox_token(cluster, "bob", "other-bob")
    impostor = await cluster.client(
        "bob", "--relay", relay.url, "--room", "test-room", home="other-bob"
    )
    alert = await alice.wait_for("alert", kind="identity-changed")
    await impostor.say("trust me")
    await impostor.wait_for("sent", text="trust me")
    await impostor.say("/who")
    who = await impostor.wait_for("who")

    # Refused before CONFIRM (protocol.md section 5.2): the impostor never
    # got a session, a message, or alice's name.
    assert alert["peer"] == "bob"
    assert who["peers"] and not any(peer["secure"] for peer in who["peers"])
    assert not impostor.find("secure")
    assert not impostor.find("message")
    assert not alice.find("message", text="trust me")

    await alice.say("/trust bob")
    await alice.wait_for("secure", count=2, peer="bob")
    await alice.wait_for("message", text="trust me")
    await impostor.wait_for("delivered")
    await impostor.wait_for("message", text="for bob only")

    secure_at = alice.events.index(alice.find("secure", peer="bob")[1])
    message_at = alice.events.index(alice.find("message", text="trust me")[0])
    assert message_at > secure_at
    assert len(alice.find("message", text="trust me")) == 1
    assert len(alice.find("alert")) == 1


async def _meddler(relay_url: str) -> tuple[str, asyncio.AbstractServer]:
    """A relay in the middle that swaps every HELLO's ephemeral key for its own."""

    def swap(payload: bytes) -> bytes:
        if len(payload) == 66 and payload[:2] == b"\x01\x01":
            mine = bytes(nacl.public.PrivateKey.generate().public_key)
            return payload[:2] + mine + payload[34:]
        return payload

    def to_relay(data: bytes) -> bytes:
        message = envelope.decode_client(data)
        if isinstance(message, envelope.Send):
            message = envelope.Send(
                message.room_id,
                message.recipient,
                message.send_id,
                swap(message.payload),
            )
        return envelope.encode(message)

    def to_client(data: bytes) -> bytes:
        message = envelope.decode_relay(data)
        if isinstance(message, envelope.Deliver):
            message = envelope.Deliver(
                message.room_id, message.sender, message.frame_id, swap(message.payload)
            )
        return envelope.encode(message)

    async def handle(client: ServerConnection) -> None:
        async with connect(relay_url, compression=None) as upstream:

            async def pump(source, sink, rewrite) -> None:  # type: ignore[no-untyped-def]
                with contextlib.suppress(ConnectionClosed):
                    async for data in source:
                        await sink.send(rewrite(data))
                await sink.close()

            await asyncio.gather(
                pump(client, upstream, to_relay), pump(upstream, client, to_client)
            )

    server = await serve(handle, "127.0.0.1", 0, compression=None)
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}", server  # type: ignore[return-value]


async def test_invite_join_verifies_the_inviter(cluster: Cluster) -> None:
    relay = await cluster.relay()
    alice = await cluster.client("alice", "invite", "--relay", relay.url)
    code = (await alice.wait_for("invite"))["code"]
    await alice.wait_for("ready")
    bob = await cluster.client("bob", "join", code)

    secure = await bob.wait_for("secure", peer="alice")

    assert secure["verified"] is True
    assert secure["trust"] == "verified"


async def test_one_invite_code_makes_a_group_secure_without_trust(
    cluster: Cluster,
) -> None:
    relay = await cluster.relay()
    alice = await cluster.client("alice", "invite", "--relay", relay.url)
    code = (await alice.wait_for("invite"))["code"]
    await alice.wait_for("ready")
    bob = await cluster.client("bob", "join", code)
    carol = await cluster.client("carol", "join", code)

    for joiner, other in ((bob, "carol"), (carol, "bob")):
        by_inviter = await joiner.wait_for("secure", peer="alice")
        by_other = await joiner.wait_for("secure", peer=other)
        assert by_inviter["verified"] is True
        assert by_other["verified"] is False
        assert by_other["trust"] == "unverified"
    await bob.say("hello both")
    await carol.wait_for("message", text="hello both")

    assert not bob.find("alert")
    assert not carol.find("alert")


async def test_invite_join_never_verifies_someone_else_with_the_code(
    cluster: Cluster,
) -> None:
    relay = await cluster.relay()
    alice = await cluster.client("alice", "invite", "--relay", relay.url)
    code = (await alice.wait_for("invite"))["code"]
    await alice.wait_for("ready")
    bob = await cluster.client("bob", "join", code)
    await bob.wait_for("secure", peer="alice", verified=True)

    # Mallory holds the code too, and answers as alice from her own address.
    mallory = await cluster.client("alice", "join", code, home="mallory")
    alert = await bob.wait_for("alert", kind="identity-changed")
    await mallory.say("I am alice")
    await mallory.say("/who")
    await mallory.wait_for("who")
    await bob.say("/who")
    who = await bob.wait_for("who")

    digits = alert["fingerprint"].replace(" ", "")[:5]
    assert alert["peer"] == f"alice#{digits}"
    assert not bob.find("secure", fingerprint=alert["fingerprint"])
    assert not bob.find("message", text="I am alice")
    verified = [peer["peer"] for peer in who["peers"] if peer["trust"] == "verified"]
    assert verified == ["alice"]


async def test_invite_join_catches_a_key_substituting_relay(cluster: Cluster) -> None:
    relay = await cluster.relay()
    alice = await cluster.client("alice", "invite", "--relay", relay.url)
    code = (await alice.wait_for("invite"))["code"]
    await alice.wait_for("ready")
    meddler_url, meddler = await _meddler(relay.url)
    try:
        bob = await cluster.client("bob", "join", code, "--relay", meddler_url)
        # The swapped key breaks the AUTH that the room secret keys
        # (protocol.md section 5.2): it does not authenticate on either side.
        await bob.say("secret plan")
        alert = await bob.wait_for("alert", kind="handshake-failed")
        await alice.wait_for("alert", kind="handshake-failed")
        await bob.say("/who")
        who = await bob.wait_for("who")
        await alice.say("/who")
        await alice.wait_for("who")
    finally:
        meddler.close()

    assert "relay" in alert["detail"]
    assert "/verify" in alert["detail"]
    assert not bob.find("alert", kind="forgery")
    assert not alice.find("alert", kind="forgery")
    assert not bob.find("secure")
    assert not alice.find("secure")
    assert not alice.find("message")
    assert all(not peer["secure"] for peer in who["peers"])


async def test_direct_mode_without_relay(cluster: Cluster) -> None:
    alice = await cluster.client("alice", "--listen", "127.0.0.1:0")
    url = (await alice.wait_for("ready"))["listening"]
    bob = await cluster.client("bob", "--connect", url)
    await bob.wait_for("secure", peer="alice")
    await alice.wait_for("secure", peer="bob")

    await bob.say("direct hello")
    await alice.wait_for("message", text="direct hello")
    await alice.say("direct reply")
    await bob.wait_for("message", text="direct reply")

    assert url.startswith("ws://127.0.0.1:")


async def test_direct_mode_invite_verifies_the_inviter(cluster: Cluster) -> None:
    alice = await cluster.client("alice", "invite", "--listen", "127.0.0.1:0")
    code = (await alice.wait_for("invite"))["code"]
    url = (await alice.wait_for("ready"))["listening"]
    # Over a direct link the inviter is the one peer at the other end.
    bob = await cluster.client("bob", "join", code, "--connect", url)

    secure = await bob.wait_for("secure", peer="alice")

    assert secure["verified"] is True


async def test_bad_stdin_gets_clear_errors_and_the_client_stays_up(
    cluster: Cluster,
) -> None:
    # No relay: the client keeps retrying, and still answers its user.
    client = await cluster.client("alice", "--relay", "ws://127.0.0.1:9")
    await client.send_raw(b"\xff\xfe not utf-8\n")
    await client.wait_for("error", where=lambda e: "UTF-8" in e["detail"])
    await client.send_raw(b"x" * 40000 + b"\n")
    await client.wait_for("error", where=lambda e: "longer than" in e["detail"])
    await client.say("/frobnicate")
    await client.wait_for("error", where=lambda e: "unknown command" in e["detail"])
    await client.say("/verify")
    await client.wait_for("error", where=lambda e: "usage" in e["detail"])
    await client.say("/who")
    await client.wait_for("who")
    await client.say("queued while offline")
    closed = await client.quit()

    assert [item["text"] for item in closed["undelivered"]] == ["queued while offline"]
    assert client.process.returncode == 0
    assert not client.bad_lines


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--connect", "http://x"], 2, "expected a ws:// or wss:// URL"),
        (["join", "sc1-AAAAA"], 1, "bad invite code"),
    ],
)
async def test_bad_flags_exit_with_a_clear_error(
    tmp_path: Path, argv: list[str], status: int, says: str
) -> None:
    returncode, out, err = await run_chat(tmp_path, *argv)

    assert returncode == status
    assert says in err
    assert out == ""
