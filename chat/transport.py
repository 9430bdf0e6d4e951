"""Links that carry channel frames between the client and its peers.

A link is one live connection. The client sees the same small set of events
whatever the link is, so that relay mode and direct mode share every line of
the session, trust and outbox logic:

- `LinkUp(address, members)`: connected; `members` are the peers present now;
- `PeerArrived(address)` / `PeerGone(address)`: presence changes;
- `Inbound(sender, frame_id, payload)`: a channel frame from a peer;
  a non-zero `frame_id` came from the relay's mailbox and must be ACKed;
- `SendRefused(recipient, reason)`: the relay refused a frame.

`RelayLink` speaks the envelope (protocol.md section 19)
to a relay. `DirectLink` carries raw channel frames over a WebSocket straight
between two clients (`--listen` / `--connect`), with one fixed peer address.
Only envelopes cross the relay: identities, nicknames and text are inside
the channel frames, which the relay cannot read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from chat import envelope
from chat.envelope import EnvelopeError

__all__ = [
    "DIRECT_PEER",
    "DirectLink",
    "DirectListener",
    "Inbound",
    "Link",
    "LinkError",
    "LinkEvent",
    "LinkUp",
    "PeerArrived",
    "PeerGone",
    "RelayLink",
    "SendRefused",
    "check_url",
    "connect_direct",
    "connect_relay",
]

logger = logging.getLogger("chat.client")

DIRECT_PEER = bytes(31) + b"\x01"
"""The one peer address in direct mode (there is no relay to assign one)."""

_OPEN_TIMEOUT_SECONDS = 10.0
_PENDING_RESULTS = 4096
_REFUSALS = {
    envelope.Status.MAILBOX_FULL: "the peer's mailbox at the relay is full",
    envelope.Status.UNKNOWN_RECIPIENT: "the relay does not know that peer",
    envelope.Status.STORAGE_UNAVAILABLE: "the relay's storage is unavailable",
    envelope.Status.NOT_A_MEMBER: "the relay says we are not in the room",
    envelope.Status.PAYLOAD_TOO_LARGE: "the frame is larger than the relay accepts",
}


class LinkError(ConnectionError):
    """The connection failed or the other end broke the protocol."""


@dataclass(frozen=True)
class LinkUp:
    """Connected and in the room; `members` are the other peers present."""

    address: bytes
    members: tuple[bytes, ...]


@dataclass(frozen=True)
class PeerArrived:
    """A peer joined the room."""

    address: bytes


@dataclass(frozen=True)
class PeerGone:
    """A peer left the room (or its connection dropped)."""

    address: bytes


@dataclass(frozen=True)
class Inbound:
    """A channel frame from `sender`; `frame_id` non-zero means ACK it."""

    sender: bytes
    frame_id: int
    payload: bytes

    def __repr__(self) -> str:
        return f"Inbound(sender={self.sender[:4].hex()}..., frame_id={self.frame_id})"


@dataclass(frozen=True)
class SendRefused:
    """The relay refused a frame for `recipient`; `reason` says why."""

    recipient: bytes
    reason: str


LinkEvent = LinkUp | PeerArrived | PeerGone | Inbound | SendRefused


class Link(Protocol):
    """One live connection carrying channel frames."""

    max_payload: int

    def events(self) -> AsyncIterator[LinkEvent]:
        """Yield events until the connection ends (then raise LinkError)."""
        ...

    async def send(self, recipient: bytes, payload: bytes) -> None:
        """Send one channel frame to `recipient`."""
        ...

    async def ack(self, frame_id: int) -> None:
        """Delete a stored frame from our mailbox after processing it."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


def check_url(url: str) -> str:
    """Return `url` if it is a WebSocket URL that can be connected to.

    websockets' own parser decides, so that a URL accepted here never fails
    to parse when a connection is opened (a bracket left open, a port out of
    range, a fragment).

    Raises:
        ValueError: the URL is not a ws:// or wss:// URL; the message says why.
    """
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc.msg})") from exc
    except ValueError as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from exc
    return url


def _connection_error(exc: BaseException) -> LinkError:
    # One seam where the WebSocket layer's errors become ours.
    detail = str(exc)
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        detail = "connection lost"
        if rcvd is not None:
            reason = f" ({rcvd.reason})" if rcvd.reason else ""
            detail = f"connection closed with code {rcvd.code}{reason}"
    elif isinstance(exc, InvalidURI | ValueError):
        # Parsing the URL failed (check_url refuses such URLs earlier).
        detail = f"not a WebSocket URL: {exc}"
    elif isinstance(exc, InvalidHandshake):
        detail = f"the server refused the WebSocket handshake: {exc}"
    elif isinstance(exc, TimeoutError):
        detail = "timed out connecting"
    elif isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    return LinkError(detail)


async def _open(url: str) -> ClientConnection:
    try:
        return await connect(
            url,
            compression=None,  # ciphertext does not compress; see docs/cli.md
            max_size=envelope.MAX_MESSAGE_SIZE,
            open_timeout=_OPEN_TIMEOUT_SECONDS,
            close_timeout=2,
        )
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as exc:
        raise _connection_error(exc) from exc


class RelayLink:
    """A connection to a relay, joined to one room."""

    def __init__(
        self, websocket: ClientConnection, room_id: bytes, joined: envelope.Joined
    ) -> None:
        """Wrap a connection that has already received WELCOME and JOINED."""
        self._websocket = websocket
        self._room_id = room_id
        self._joined = joined
        self._send_ids = itertools.count(1)
        self._pending: OrderedDict[int, bytes] = OrderedDict()
        self.max_payload = envelope.MAX_PAYLOAD

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Yield LinkUp, then every event until the connection ends.

        Raises:
            LinkError: the connection ended or the relay broke the protocol.
        """
        yield LinkUp(self._joined.address, self._joined.members)
        try:
            async for data in self._websocket:
                event = self._translate(data)
                if event is not None:
                    yield event
        except ConnectionClosed as exc:
            raise _connection_error(exc) from exc
        raise LinkError("the relay closed the connection")

    def _translate(self, data: str | bytes) -> LinkEvent | None:
        # The relay is hostile until checked: a malformed envelope ends the
        # connection (and the client reconnects), it never reaches a session.
        try:
            message = envelope.decode_relay(data)
        except EnvelopeError as exc:
            raise LinkError(f"the relay sent a malformed envelope: {exc}") from exc
        match message:
            case envelope.Deliver(room_id, sender, frame_id, payload):
                if room_id != self._room_id:
                    return None
                return Inbound(sender, frame_id, payload)
            case envelope.Presence(room_id, kind, address) if room_id == self._room_id:
                if kind == envelope.PresenceKind.JOINED:
                    return PeerArrived(address)
                return PeerGone(address)
            case envelope.Result(send_id, status):
                return self._result(send_id, status)
        return None

    def _result(self, send_id: int, status: envelope.Status) -> LinkEvent | None:
        recipient = self._pending.pop(send_id, None)
        if status in (envelope.Status.DELIVERED, envelope.Status.STORED):
            logger.debug("send %d: %s", send_id, status.name.lower())
            return None
        logger.warning("relay refused send %d: %s", send_id, status.name)
        return SendRefused(recipient or bytes(32), _REFUSALS[status])

    async def send(self, recipient: bytes, payload: bytes) -> None:
        """Send one channel frame to a member's address."""
        send_id = next(self._send_ids) % (1 << 32)
        self._pending[send_id] = recipient
        while len(self._pending) > _PENDING_RESULTS:
            self._pending.popitem(last=False)
        message = envelope.Send(self._room_id, recipient, send_id, payload)
        try:
            await self._websocket.send(envelope.encode(message))
        except ConnectionClosed as exc:
            raise _connection_error(exc) from exc

    async def ack(self, frame_id: int) -> None:
        """Delete a processed frame from our mailbox."""
        try:
            await self._websocket.send(
                envelope.encode(envelope.Ack(self._room_id, frame_id))
            )
        except ConnectionClosed as exc:
            raise _connection_error(exc) from exc

    async def close(self) -> None:
        """Leave the room and close the connection."""
        with contextlib.suppress(ConnectionClosed):
            await self._websocket.send(envelope.encode(envelope.Leave(self._room_id)))
        await self._websocket.close()


async def connect_relay(url: str, room_id: bytes, mailbox_token: bytes) -> RelayLink:
    """Connect to a relay and join a room (protocol.md, "Envelope").

    Raises:
        LinkError: the relay is unreachable, refused us or broke the protocol.
    """
    websocket = await _open(url)
    try:
        async with asyncio.timeout(_OPEN_TIMEOUT_SECONDS):
            welcome = envelope.decode_relay(await websocket.recv())
            if not isinstance(welcome, envelope.Welcome):
                raise LinkError("the relay did not start with WELCOME")
            await websocket.send(envelope.encode(envelope.Join(room_id, mailbox_token)))
            joined = envelope.decode_relay(await websocket.recv())
            if not isinstance(joined, envelope.Joined) or joined.room_id != room_id:
                raise LinkError("the relay did not answer JOIN with JOINED")
    except (ConnectionClosed, TimeoutError, EnvelopeError, LinkError) as exc:
        await websocket.close()
        if isinstance(exc, LinkError):
            raise
        if isinstance(exc, EnvelopeError):
            raise LinkError(f"the relay sent a malformed envelope: {exc}") from exc
        raise _connection_error(exc) from exc

    link = RelayLink(websocket, room_id, joined)
    link.max_payload = welcome.max_payload
    return link


class DirectLink:
    """A WebSocket straight to one peer: each message is one channel frame."""

    def __init__(
        self, websocket: ClientConnection | ServerConnection, *, initiator: bool
    ) -> None:
        """Wrap an open connection; the initiator sees the peer as present."""
        self._websocket = websocket
        self._initiator = initiator
        self.max_payload = envelope.MAX_PAYLOAD
        self.done = asyncio.Event()

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Yield LinkUp (and PeerArrived on the listening side), then frames.

        Raises:
            LinkError: the connection ended.
        """
        try:
            if self._initiator:
                yield LinkUp(bytes(32), (DIRECT_PEER,))
            else:
                yield LinkUp(bytes(32), ())
                yield PeerArrived(DIRECT_PEER)
            async for data in self._websocket:
                if isinstance(data, str):
                    raise LinkError("the peer sent a text message; frames are binary")
                yield Inbound(DIRECT_PEER, 0, data)
        except ConnectionClosed as exc:
            raise _connection_error(exc) from exc
        finally:
            self.done.set()
        raise LinkError("the peer closed the connection")

    async def send(self, recipient: bytes, payload: bytes) -> None:
        """Send one channel frame to the peer."""
        try:
            await self._websocket.send(payload)
        except ConnectionClosed as exc:
            raise _connection_error(exc) from exc

    async def ack(self, frame_id: int) -> None:
        """Nothing to acknowledge: there is no mailbox in direct mode."""

    async def close(self) -> None:
        """Close the connection."""
        await self._websocket.close()
        self.done.set()


async def connect_direct(url: str) -> DirectLink:
    """Connect straight to a peer listening with `--listen`.

    Raises:
        LinkError: the peer is unreachable or refused the connection.
    """
    return DirectLink(await _open(url), initiator=True)


class DirectListener:
    """Accepts one peer at a time for direct mode (`--listen HOST:PORT`)."""

    def __init__(self) -> None:
        """Create a listener; call `start` to bind it."""
        self._incoming: asyncio.Queue[DirectLink] = asyncio.Queue(maxsize=1)
        self._busy = False
        self._server: Server | None = None

    async def start(self, host: str, port: int) -> str:
        """Bind and return the URL a peer should `--connect` to.

        Raises:
            LinkError: the address cannot be bound.
        """
        try:
            self._server = await serve(
                self._handle,
                host,
                port,
                compression=None,
                max_size=envelope.MAX_MESSAGE_SIZE,
            )
        except OSError as exc:
            raise LinkError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        bound = self._server.sockets[0].getsockname()
        return f"ws://{bound[0]}:{bound[1]}"

    async def _handle(self, websocket: ServerConnection) -> None:
        # One conversation at a time: a second caller is turned away with
        # 1013 ("try again later") rather than silently joining.
        if self._busy:
            await websocket.close(1013, "already talking to a peer")
            return
        self._busy = True
        try:
            link = DirectLink(websocket, initiator=False)
            await self._incoming.put(link)
            await link.done.wait()
        finally:
            self._busy = False

    async def accept(self) -> DirectLink:
        """Wait for the next peer to connect."""
        return await self._incoming.get()

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
