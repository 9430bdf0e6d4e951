"""The relay's view, and a relay that meddles: a proxy in front of the relay.

Each person's client connects to its own :class:`Tap`, which connects on to
the real relay and carries every WebSocket message both ways, byte for byte.
It records each envelope as it passes (a :class:`Crossing`): that is exactly
what the relay receives and forwards, so the demonstration shows the relay's
view from real traffic rather than from a description of it.

A tap can also misbehave the way a hostile relay could: replay a frame it
delivered before (:meth:`Tap.inject`), change what it delivers
(:attr:`Tap.meddle`), or swap in its own ephemeral keys
(:class:`KeySwapper`). Whatever it does, the receiving client's real protocol
core decides what to accept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import nacl.bindings
import nacl.public
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chat import envelope
from chat.core.errors import MalformedFrame
from chat.core.frames import encode_hello, frame_kind, parse_hello
from chat.core.secrets import short_hash

__all__ = ["BitFlipper", "Crossing", "KeySwapper", "Meddle", "Tap", "flip_bit"]

TO_RELAY = "to-relay"
FROM_RELAY = "from-relay"

Meddle = Callable[[envelope.Deliver], list[tuple[bytes, str | None]]]
"""Given a DELIVER, return the envelopes to send instead, each with a label
naming what was done to it (None: passed on unchanged)."""


@dataclass(frozen=True)
class Crossing:
    """One envelope on one person's connection, as the relay sees it.

    Attributes:
        person: whose connection carried it ("alice", "bob").
        direction: "to-relay" (sent by the client) or "from-relay".
        data: the envelope, byte for byte.
        message: the decoded envelope, or None if it does not decode.
        meddled: what the meddling relay did to it, or None.
    """

    person: str
    direction: str
    data: bytes
    message: envelope.ClientMessage | envelope.RelayMessage | None
    meddled: str | None = None


class Tap:
    """A WebSocket proxy between one client and the relay.

    Args:
        person: the label of the client that connects through it.
        upstream: the relay's URL.
        record: called with every crossing, in the order they pass.
    """

    def __init__(
        self, person: str, upstream: str, record: Callable[[Crossing], None]
    ) -> None:
        self.person = person
        self.meddle: Meddle | None = None
        self.url = ""
        self._upstream = upstream
        self._record = record
        self._server: Server | None = None
        self._rooms: dict[bytes, ServerConnection] = {}

    async def start(self) -> str:
        """Listen on a free loopback port; return the URL to connect to."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            compression=None,
            max_size=envelope.MAX_MESSAGE_SIZE,
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        """Stop listening and close the connections it carries."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    async def inject(self, data: bytes, meddled: str) -> None:
        """Deliver ``data`` (a DELIVER) as if the relay had sent it.

        It goes to the connection that joined the DELIVER's room.

        Raises:
            ConnectionError: nobody on this tap is in that room.
        """
        message = envelope.decode_relay(data)
        assert isinstance(message, envelope.Deliver)
        client = self._rooms.get(message.room_id)
        if client is None:
            raise ConnectionError(f"{self.person} is not in that room")
        self._note(FROM_RELAY, data, meddled)
        await client.send(data)

    async def _handle(self, client: ServerConnection) -> None:
        # One upstream connection per client connection; when either end
        # closes, the other is closed too.
        async with connect(
            self._upstream, compression=None, max_size=envelope.MAX_MESSAGE_SIZE
        ) as relay:
            up = asyncio.create_task(self._carry_up(client, relay))
            down = asyncio.create_task(self._carry_down(relay, client))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (up, down):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await task
                for room in [r for r, c in self._rooms.items() if c is client]:
                    del self._rooms[room]
                await client.close()

    async def _carry_up(
        self, client: ServerConnection, relay: ClientConnection
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in client:
                raw = data if isinstance(data, bytes) else data.encode()
                message = self._note(TO_RELAY, raw, None)
                if isinstance(message, envelope.Join):
                    self._rooms[message.room_id] = client
                await relay.send(data)

    async def _carry_down(
        self, relay: ClientConnection, client: ServerConnection
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in relay:
                raw = data if isinstance(data, bytes) else data.encode()
                for out, meddled in self._meddled(raw):
                    self._note(FROM_RELAY, out, meddled)
                    await client.send(out)

    def _meddled(self, data: bytes) -> list[tuple[bytes, str | None]]:
        meddle = self.meddle
        if meddle is None:
            return [(data, None)]
        try:
            message = envelope.decode_relay(data)
        except envelope.EnvelopeError:
            return [(data, None)]
        if not isinstance(message, envelope.Deliver):
            return [(data, None)]
        return meddle(message)

    def _note(
        self, direction: str, data: bytes, meddled: str | None
    ) -> envelope.ClientMessage | envelope.RelayMessage | None:
        message: envelope.ClientMessage | envelope.RelayMessage | None
        try:
            if direction == TO_RELAY:
                message = envelope.decode_client(data)
            else:
                message = envelope.decode_relay(data)
        except envelope.EnvelopeError:
            message = None
        self._record(Crossing(self.person, direction, data, message, meddled))
        return message


def flip_bit(payload: bytes, index: int, bit: int = 0) -> bytes:
    """Return ``payload`` with one bit flipped (the relay's forgery attempt)."""
    changed = bytearray(payload)
    changed[index] ^= 1 << bit
    return bytes(changed)


class BitFlipper:
    """A relay that flips one bit of one record, then delivers the original.

    Args:
        tap: the tap it meddles on; it stops meddling after its one flip.
        header: the 14-byte header of the record to tamper with.
        index: which byte of the frame to change.
    """

    def __init__(self, tap: Tap, header: bytes, index: int) -> None:
        self._tap = tap
        self._header = header
        self._index = index

    def __call__(self, message: envelope.Deliver) -> list[tuple[bytes, str | None]]:
        """The forged copy and then the genuine frame, for the one record."""
        original = envelope.encode(message)
        if message.payload[:14] != self._header:
            return [(original, None)]
        self._tap.meddle = None
        forged = envelope.Deliver(
            message.room_id,
            message.sender,
            message.frame_id,
            flip_bit(message.payload, self._index),
        )
        return [(envelope.encode(forged), "bit-flip"), (original, None)]


class KeySwapper:
    """A relay that puts its own ephemeral key into every HELLO of one room.

    For each real ephemeral key it makes one of its own (PyNaCl), and it
    rewrites the echo field so that each side sees a consistent exchange.
    It therefore shares a Diffie-Hellman secret with each side: what it
    cannot make is the AUTH key, which also needs the room key (protocol.md
    section 6.1).
    """

    def __init__(self, room_id: bytes) -> None:
        self._room_id = room_id
        self._fake_for: dict[bytes, nacl.public.PrivateKey] = {}
        self._real_for: dict[bytes, bytes] = {}

    def __call__(self, message: envelope.Deliver) -> list[tuple[bytes, str | None]]:
        """Swap the keys in a HELLO; pass anything else on unchanged."""
        payload = message.payload
        try:
            if message.room_id != self._room_id or frame_kind(payload) != "hello":
                return [(envelope.encode(message), None)]
            hello = parse_hello(payload)
        except MalformedFrame:
            return [(envelope.encode(message), None)]

        fake = self._fake(hello.ephemeral)
        echo = self._real_for.get(hello.echo, hello.echo)
        swapped = encode_hello(fake, echo)
        deliver = envelope.Deliver(
            message.room_id, message.sender, message.frame_id, swapped
        )
        return [(envelope.encode(deliver), "key-swap")]

    def _fake(self, real: bytes) -> bytes:
        private = self._fake_for.get(real)
        if private is None:
            private = self._fake_for[real] = nacl.public.PrivateKey.generate()
            self._real_for[bytes(private.public_key)] = real
        return bytes(private.public_key)

    def shared_hash(self, own: bytes, peer: bytes) -> str | None:
        """The short hash of the secret the relay shares with one side.

        Args:
            own: that side's real ephemeral key.
            peer: the real ephemeral key the relay replaced for that side.

        Returns:
            short_hash of X25519(relay's key in place of ``peer``, ``own``),
            the same value that side computed, or None if no swap happened.
        """
        private = self._fake_for.get(peer)
        if private is None:
            return None
        return short_hash(nacl.bindings.crypto_scalarmult(bytes(private), own))
