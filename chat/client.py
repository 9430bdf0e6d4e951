"""The asyncio chat client over the sans-I/O protocol core.

One `ChatClient` is one person in one room. It keeps one core `Session` per
peer address (pairwise: a message is sealed once per recipient, protocol.md
section 5), and it owns everything a session does not:

- the link (relay or direct), with reconnects under bounded exponential
  backoff and jitter; after a reconnect every established session is rekeyed
  (protocol.md section 9) and every undelivered message is resent;
- nicknames, exchanged inside the channel as a PROFILE payload (protocol.md
  section 7.4) once per session and never trusted for identity: the
  identity is the key proven in the handshake;
- trust on first use (chat.trust): the key pinned to a peer's address (or,
  in an invite room, the inviter's fingerprint at the inviter's address) is
  required in the handshake, before CONFIRM; a peer whose pinned nickname
  shows a new key is held, its frames left unprocessed and unacknowledged,
  until /trust;
- an outbox with end-to-end receipts: a message leaves the outbox when every
  recipient's client has sent a receipt from inside the channel; resends
  carry the same message id, and the receiver shows an id once;
- ACKs of mailbox frames once they have been processed.

The client reports what happens as `ClientEvent`s, the vocabulary of the
`--json` mode (docs/cli.md), to whichever user interface drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import nacl.utils

from chat.core import frame_kind
from chat.core.errors import KeyChanged, PeerError, SaltchatError
from chat.core.identity import Identity, PublicIdentity, fingerprint_matches
from chat.core.rooms import RoomKeys
from chat.core.session import (
    Established,
    MessageReceived,
    PeerClosed,
    PeerRestarted,
    ProfileReceived,
    ReceiptReceived,
    Rekeyed,
    Session,
    SessionState,
)
from chat.core.teaching import TeachingEvent
from chat.limits import (
    CLOSE_FLUSH_SECONDS,
    DEDUP_IDS_PER_PEER,
    HANDSHAKE_RETRY_LIMIT,
    HANDSHAKE_TIMEOUT_SECONDS,
    HELD_FRAMES_PER_PEER,
    MAX_INPUT_LINE_BYTES,
    MAX_NICK_CHARS,
    MAX_PEERS,
    MAX_STRANGERS,
    OUTBOX_MAX_BYTES,
    OUTBOX_MAX_MESSAGES,
    RECONNECT_BASE_SECONDS,
    RECONNECT_CAP_SECONDS,
    RECONNECT_FACTOR,
    RECONNECT_JITTER,
    SEND_BURST,
    SEND_RATE,
    STORED_FRAME_IDS,
    TICK_SECONDS,
)
from chat.steps import SessionSteps
from chat.transport import (
    DIRECT_PEER,
    Inbound,
    Link,
    LinkError,
    LinkEvent,
    LinkUp,
    PeerArrived,
    PeerGone,
    SendRefused,
)
from chat.trust import TrustDecision, TrustState, TrustStore, TrustStoreError

__all__ = [
    "ChatClient",
    "ClientEvent",
    "CommandError",
    "backoff_delays",
    "sanitize_nick",
]

logger = logging.getLogger("chat.client")

_HANDSHAKING = (
    SessionState.IDLE,
    SessionState.HELLO_SENT,
    SessionState.AUTH_SENT,
    SessionState.CONFIRMING,
)
_DEAD = (SessionState.CLOSED, SessionState.FAILED)

# Rejections of a peer's AUTH that mean its handshake failed (protocol.md
# section 5.2): reported as one `handshake-failed` alert with advice.
_AUTH_FAILURES = frozenset({"forgery", "handshake-failed"})

# Rejections that happen in normal operation (frames from an earlier session
# left in the mailbox, a repeated HELLO, a record racing a rekey): counted in
# /keys and logged, but not raised as alerts.
_QUIET_KINDS = frozenset({"stale", "unexpected", "future-epoch"})


class CommandError(ValueError):
    """A user command or message cannot be carried out; the text says why."""


@dataclass(frozen=True)
class ClientEvent:
    """One thing that happened, as the `--json` mode prints it.

    Attributes:
        event: the event name (docs/cli.md lists them).
        fields: the event's fields; JSON-serialisable, never a secret.
    """

    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The event as one JSON object."""
        return {"event": self.event, **self.fields}


def backoff_delays(
    base: float = RECONNECT_BASE_SECONDS,
    cap: float = RECONNECT_CAP_SECONDS,
    factor: float = RECONNECT_FACTOR,
    jitter: float = RECONNECT_JITTER,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield reconnect delays: exponential, capped, with random jitter.

    Each delay is `d * (1 - jitter * r)` for the next `d` in base, base *
    factor, ... capped at `cap`, with `r` uniform in [0, 1): never above the
    cap, never below `(1 - jitter)` of the nominal delay.
    """
    delay = base
    while True:
        yield delay * (1.0 - jitter * rng())
        delay = min(cap, delay * factor)


def sanitize_nick(claim: str) -> str:
    """Make a claimed nickname safe to print: printable, one line, bounded.

    '#' becomes '_': it is reserved for the fingerprint digits that tell
    apart peers claiming one name (see `ChatClient._display_names`).
    """
    kept = "".join(
        char
        for char in claim.replace("#", "_")
        if not unicodedata.category(char).startswith(("C", "Z")) or char == " "
    )
    kept = "_".join(kept.split())[:MAX_NICK_CHARS]
    return kept or "anonymous"


def _seal(
    session: Session | None, text: str, now: float, message_id: bytes | None = None
) -> list[object]:
    """Seal one text into a session; the frame waits in frames_to_send()."""
    assert session is not None
    session.send_text(text, now, message_id=message_id)
    return []


def _rekey(session: Session, now: float) -> list[object]:
    session.rekey(now)
    return []


@contextlib.contextmanager
def _trust_store_errors() -> Iterator[None]:
    """Turn a trust store that cannot be read or written into a command error
    (the session and the interface stay up; nothing changed in memory)."""
    try:
        yield
    except (TrustStoreError, OSError) as exc:
        raise CommandError(f"trust store: {exc}") from exc


def _look(name: str) -> str:
    """How a display name reads: '#' and '_' alike, case ignored."""
    return name.replace("#", "_").casefold()


def _hex_id(message_id: bytes) -> str:
    return message_id.hex()


def _eviction_order(peer: _Peer, now: float) -> tuple[bool, bool, float]:
    """Which stranger to forget first (the smallest): one that left; then one
    whose handshake is not under way (it never answered our HELLO, or timed
    out), newest first, so that members announced earlier keep their place;
    then the one whose handshake started first. A newcomer that answers is
    under way within one round trip, and no longer first to go."""
    session = peer.session
    under_way = (
        session is not None
        and session.state not in (SessionState.IDLE, SessionState.HELLO_SENT)
        and now - peer.started_at < HANDSHAKE_TIMEOUT_SECONDS
    )
    if under_way:
        return (peer.present, True, peer.started_at)
    newest = -peer.started_at if session is not None else float("-inf")
    return (peer.present, False, newest)


@dataclass
class _Outgoing:
    """A message in the outbox, waiting for receipts."""

    message_id: bytes
    text: str
    sent_in: dict[bytes, int]  # recipient address -> generation it was sealed in
    delivered: set[bytes] = field(default_factory=set)
    open: bool = False  # no recipient yet: goes to whoever becomes ready


@dataclass
class _Peer:
    """What the client knows about one address in the room."""

    address: bytes
    session: Session | None = None
    present: bool = False
    nick: str | None = None
    identity: PublicIdentity | None = None
    safety_number: str | None = None
    trust: TrustState | None = None
    ready: bool = False
    generation: int = 0
    started_at: float = 0.0
    failed_at: float | None = None
    failures: int = 0
    named_by: Session | None = None  # session whose PROFILE named the peer
    warned: Session | None = None  # session whose failed handshake was reported
    refused: PublicIdentity | None = None  # key the pin check refused, until /trust
    accepted: PublicIdentity | None = None  # key the user accepted with /trust
    held: deque[tuple[bytes, int]] = field(default_factory=deque)
    early: deque[tuple[bytes, str]] = field(default_factory=deque)
    steps: SessionSteps = field(default_factory=SessionSteps)

    @property
    def label(self) -> str:
        """A name for the peer before it has told us its nickname."""
        if self.identity is not None:
            return "peer-" + self.identity.fingerprint()[:5]
        return "peer-" + self.address[:3].hex()


class ChatClient:
    """One person in one room: sessions, trust, outbox, reconnects."""

    def __init__(
        self,
        *,
        identity: Identity,
        room: RoomKeys,
        nick: str,
        trust: TrustStore,
        connect: Callable[[], Awaitable[Link]],
        emit: Callable[[ClientEvent], None],
        expected_fingerprint: str | None = None,
        expected_address: bytes | None = None,
        observer: Callable[[TeachingEvent], None] | None = None,
        narrate_records: bool = False,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[], Iterator[float]] = backoff_delays,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Set up a client; `run()` connects and keeps it connected.

        Args:
            identity: our long-term identity.
            room: the room's keys (room_id goes to the relay).
            nick: the nickname we claim.
            trust: the trust store.
            connect: opens a link (relay or direct), raising LinkError.
            emit: receives every ClientEvent, in order.
            expected_fingerprint: the inviter's fingerprint from an invite
                code: the handshake of the peer at `expected_address` must
                prove it, unless a key is pinned there (else it is refused
                before CONFIRM), and that peer proving it is marked verified.
                Every other peer is met by trust on first use.
            expected_address: the inviter's address in the room, from the
                same invite code (in direct mode, DIRECT_PEER); required
                with `expected_fingerprint`.
            observer: receives the core's TeachingEvents (--show-handshake).
            narrate_records: also pass the observer the "seal" and "open"
                steps, which carry plaintext (the demo's teaching output).
            clock: monotonic time source handed to the core as `now`.
            backoff: factory of reconnect delay iterators.
            sleep: waits while sending is paced (seconds of `clock`).
        """
        self._identity = identity
        self._room = room
        self.nick = sanitize_nick(nick)
        self._trust = trust
        self._connect = connect
        self._emit = emit
        if (expected_fingerprint is None) != (expected_address is None):
            raise ValueError(
                "expected_fingerprint and expected_address go together: "
                "both come from one invite code"
            )
        self._expected = expected_fingerprint
        self._inviter_address = expected_address
        self._observer = observer
        self._narrate_records = narrate_records
        self._clock = clock
        self._backoff = backoff
        self._sleep = sleep

        self._peers: dict[bytes, _Peer] = {}
        self._outbox: OrderedDict[bytes, _Outgoing] = OrderedDict()
        self._seen: dict[bytes, OrderedDict[bytes, None]] = {}
        self._stored: OrderedDict[int, bool] = OrderedDict()  # frame id: processed
        self._link: Link | None = None
        self._acks: list[int] = []
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._connected_once = False
        self._announced = False
        self._lost_reason = "connection lost"
        self._tokens = float(SEND_BURST)
        self._refilled = clock()
        self.connection = "connecting"
        self.drained = asyncio.Event()
        self.drained.set()
        self.ready_info: dict[str, Any] = {}

    # ---------------------------------------------------------------- running

    def _announce(self) -> None:
        self._announced = True
        fingerprint = self._identity.public.fingerprint()
        self._emit(
            ClientEvent(
                "ready",
                {"nick": self.nick, "fingerprint": fingerprint, **self.ready_info},
            )
        )

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until `close()`.

        When listening for a direct peer, `ready` is announced at once (it
        carries the URL to connect to); otherwise at the first connection.
        """
        if "listening" in self.ready_info:
            self._announce()
        delays = self._backoff()
        ticker = asyncio.create_task(self._ticker())
        try:
            while not self._closing.is_set():
                try:
                    link = await self._open_link()
                except LinkError as exc:
                    await self._wait_before_retry(delays, str(exc))
                    continue
                delays = self._backoff()
                await self._serve(link)
                if not self._closing.is_set():
                    await self._wait_before_retry(delays, self._lost_reason)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _open_link(self) -> Link:
        # The connect attempt itself is cancelled by close(), so that /quit
        # while the relay is down does not wait for a timeout.
        connecting = asyncio.ensure_future(self._connect())
        closing = asyncio.ensure_future(self._closing.wait())
        done, _ = await asyncio.wait(
            {connecting, closing}, return_when=asyncio.FIRST_COMPLETED
        )
        closing.cancel()
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            raise LinkError("closing")
        return connecting.result()

    async def _wait_before_retry(self, delays: Iterator[float], reason: str) -> None:
        if self._closing.is_set():
            return
        delay = next(delays)
        was = self.connection
        self.connection = "disconnected"

        # Once per loss of the link: retries that fail say nothing new.
        if was != "disconnected":
            self._emit(
                ClientEvent(
                    "disconnected", {"reason": reason, "retry_in": round(delay, 2)}
                )
            )
        logger.info("link down (%s); retrying in %.2f s", reason, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    async def _serve(self, link: Link) -> None:
        # One reader (this coroutine) and one writer task per link: every
        # frame leaves through the writer, so frames of a session go out in
        # the order the session produced them.
        self._link = link
        self._lost_reason = "connection lost"
        writer = asyncio.create_task(self._writer(link))
        try:
            async for event in link.events():
                self._on_link_event(event)
                self._dirty.set()
                if self._closing.is_set():
                    break
        except LinkError as exc:
            self._lost_reason = str(exc)
        finally:
            self._link = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError):
                await writer
            for peer in self._peers.values():
                peer.present = False
            if not self._closing.is_set():
                with contextlib.suppress(Exception):
                    await link.close()

    async def _writer(self, link: Link) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                await self._flush(link)
        except LinkError as exc:
            logger.info("send failed: %s", exc)

    async def _flush(self, link: Link) -> None:
        for peer in list(self._peers.values()):
            if peer.session is None:
                continue
            for frame in peer.session.frames_to_send():
                await self._pace()
                await link.send(peer.address, frame)
        acks, self._acks = self._acks, []
        for frame_id in acks:
            await self._pace()
            await link.ack(frame_id)

    async def _pace(self) -> None:
        # A token bucket under the relay's own (see chat.limits.SEND_RATE).
        now = self._clock()
        self._tokens = min(
            float(SEND_BURST), self._tokens + (now - self._refilled) * SEND_RATE
        )
        self._refilled = now
        if self._tokens < 1.0:
            await self._sleep((1.0 - self._tokens) / SEND_RATE)
            self._tokens = 1.0
            self._refilled = self._clock()
        self._tokens -= 1.0

    async def _ticker(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), TICK_SECONDS)
            self.tick()

    def tick(self) -> None:
        """Tick sessions: handshake retransmission, time-based rekey, and
        forgetting old epochs are the core's (protocol.md sections 5.5, 9);
        restarting after a failed handshake is ours."""
        now = self._clock()
        for peer in list(self._peers.values()):
            session = peer.session
            if session is not None and session.state not in _DEAD:
                self._guard(peer, partial(session.tick, now))
            elif self._link is not None and peer.present:
                self._maybe_restart_handshake(peer, now)
        self._dirty.set()

    def _maybe_restart_handshake(self, peer: _Peer, now: float) -> None:
        # After a failed handshake, try again a little later, a bounded number
        # of times: a meddling relay that makes every handshake fail must not
        # make us loop. The peer joining again resets the count.
        # Nor do we retry with a peer whose key the pin check refused: it
        # would only learn our identity again (a returning peer starts).
        if (
            peer.failures >= HANDSHAKE_RETRY_LIMIT
            or peer.failed_at is None
            or peer.refused is not None
        ):
            return
        if now - peer.failed_at >= HANDSHAKE_TIMEOUT_SECONDS / 2:
            self._start_handshake(peer)

    async def close(self) -> list[dict[str, Any]]:
        """Close every session, leave, and report what is undelivered.

        Returns:
            One entry per undelivered message: id, text, and the peers that
            have not confirmed it. Also emitted as a `closed` event.
        """
        if self._closing.is_set():
            return self.undelivered()

        # CLOSE tells each peer to drop its session now rather than time out.
        for peer in self._peers.values():
            if peer.session is not None and peer.session.state not in _DEAD:
                with contextlib.suppress(SaltchatError):
                    peer.session.close()
        link = self._link
        if link is not None:
            with contextlib.suppress(LinkError, TimeoutError):
                await asyncio.wait_for(self._flush(link), CLOSE_FLUSH_SECONDS)
        self._closing.set()
        if link is not None:
            with contextlib.suppress(LinkError, OSError):
                await link.close()

        undelivered = self.undelivered()
        self._emit(ClientEvent("closed", {"undelivered": undelivered}))
        return undelivered

    def undelivered(self) -> list[dict[str, Any]]:
        """Messages still waiting for a receipt, with who has not confirmed."""
        result = []
        names = self._display_names()
        for item in self._outbox.values():
            waiting = [
                names[address]
                for address in item.sent_in
                if address not in item.delivered and address in self._peers
            ]
            result.append(
                {"id": _hex_id(item.message_id), "text": item.text, "to": waiting}
            )
        return result

    # ------------------------------------------------------------ link events

    def _on_link_event(self, event: LinkEvent) -> None:
        match event:
            case Inbound(sender, frame_id, payload):
                self._on_inbound(sender, frame_id, payload)
            case LinkUp(address, members):
                self._on_link_up(address, members)
            case PeerArrived(address):
                self._on_peer_arrived(address)
            case PeerGone(address):
                self._on_peer_gone(address)
            case SendRefused(recipient, reason):
                peer = self._peers.get(recipient)
                who = self._name(peer) if peer else "a peer"
                self._emit(ClientEvent("error", {"detail": f"{reason} ({who})"}))

    def _on_link_up(self, address: bytes, members: tuple[bytes, ...]) -> None:
        if self._connected_once:
            self._emit(ClientEvent("reconnected", {}))
        elif not self._announced:
            self._announce()
        self._connected_once = True
        self.connection = "connected"

        # A new link means frames may have been lost in flight: rekey every
        # established session (protocol.md section 9) and resend whatever has
        # no receipt yet. The receiver drops the duplicates by id.
        for peer in self._peers.values():
            session = peer.session
            if session is not None and session.state == SessionState.ESTABLISHED:
                self._guard(peer, partial(_rekey, session, self._clock()))
                peer.generation += 1
        for member in members[:MAX_PEERS]:
            self._on_peer_arrived(member, joining=True)
        self._pump()

    def _on_peer_arrived(self, address: bytes, joining: bool = False) -> None:
        peer = self._peer(address)
        if peer is None:
            return
        if not peer.present:
            peer.present = True
            peer.failures = 0
            self._emit(ClientEvent("peer-joined", {"peer": self._name(peer)}))

        # The newcomer starts the handshake (it sees us in JOINED); we start
        # too when joining ourselves, and both starting at once is fine
        # (protocol.md section 5.4, simultaneous start). An established session
        # is kept: the peer either rekeys (it reconnected) or sends a fresh
        # HELLO (it restarted), which the core turns into PeerRestarted.
        session = peer.session
        if session is None or session.state in _DEAD:
            self._start_handshake(peer)
        elif joining and session.state in _HANDSHAKING:
            # We were away: frames of an unfinished handshake may be lost.
            self._start_handshake(peer)

    def _on_peer_gone(self, address: bytes) -> None:
        peer = self._peers.get(address)
        if peer is not None and peer.present:
            peer.present = False
            self._emit(ClientEvent("peer-left", {"peer": self._name(peer)}))
            if self._is_stranger(peer) and peer.refused is None:
                self._forget(peer)

    def _is_stranger(self, peer: _Peer) -> bool:
        """A peer not met: no handshake succeeded with it in this run, and no
        key is pinned to its address. Anyone who knows the room id can make
        the relay announce strangers, so they are bounded apart and forgotten
        when they leave or to make room (see chat.limits.MAX_STRANGERS)."""
        return (
            peer.identity is None
            and peer.accepted is None
            and self._trust.pinned_at(self._slot(peer)) is None
        )

    def _peer(self, address: bytes) -> _Peer | None:
        peer = self._peers.get(address)
        if peer is not None:
            return peer
        peer = _Peer(address)
        if self._is_stranger(peer):
            strangers = [p for p in self._peers.values() if self._is_stranger(p)]
            if len(strangers) >= MAX_STRANGERS:
                now = self._clock()
                self._forget(min(strangers, key=partial(_eviction_order, now=now)))
        elif len(self._peers) - self._stranger_count() >= MAX_PEERS:
            logger.warning("room has more than %d peers; ignoring one", MAX_PEERS)
            return None
        self._peers[address] = peer
        return peer

    def _stranger_count(self) -> int:
        return sum(1 for peer in self._peers.values() if self._is_stranger(peer))

    def _forget(self, peer: _Peer) -> None:
        # A stranger is never a recipient, so no outbox entry names it.
        del self._peers[peer.address]
        logger.debug("forgot %s, which never established a session", peer.label)

    def _new_session(self, peer: _Peer) -> Session:
        # Each session records its own steps for /keys (chat.steps).
        peer.steps = SessionSteps()
        expected_peer, expected_fingerprint = self._expectation(peer)
        peer.session = Session(
            self._identity,
            self._room,
            now=self._clock(),
            # /keys and --show-handshake show the handshake, never a
            # record's plaintext: unless the demo asks, the core does not
            # even build those steps.
            observer=partial(self._observe, peer.steps),
            narrate_records=self._narrate_records,
            expected_peer=expected_peer,
            expected_fingerprint=expected_fingerprint,
            side=self.nick,
        )
        peer.started_at = self._clock()
        peer.ready = False
        return peer.session

    def _observe(self, steps: SessionSteps, event: TeachingEvent) -> None:
        steps.record(event)
        if self._observer is not None:
            self._observer(event)

    def _expectation(self, peer: _Peer) -> tuple[PublicIdentity | None, str | None]:
        """Who this peer must prove to be, checked before CONFIRM (5.2 step 4).

        The key the user accepted with /trust, else the key pinned to the
        peer's address, else (in a room joined with an invite code, for the
        peer at the inviter's address, not met there before) the inviter's
        fingerprint. Other peers are met by trust on first use: another
        holder of the code cannot take the inviter's address, which only the
        inviter's mailbox token proves to the relay (protocol.md section 19.2).
        """
        if peer.accepted is not None:
            return peer.accepted, None
        pinned = self._trust.pinned_at(self._slot(peer))
        if pinned is not None:
            return PublicIdentity(pinned), None
        if self._is_inviter_address(peer):
            return None, self._expected
        return None, None

    def _is_inviter_address(self, peer: _Peer) -> bool:
        # Addresses are public routing values, not secrets.
        return (
            self._inviter_address is not None and peer.address == self._inviter_address
        )

    def _start_handshake(self, peer: _Peer) -> None:
        self._new_session(peer).start()
        peer.failed_at = None
        logger.info("starting handshake with %s", peer.label)

    # ---------------------------------------------------------- inbound frames

    def _on_inbound(self, sender: bytes, frame_id: int, payload: bytes) -> None:
        # A stored frame may come again, after a reconnect or when it was
        # stored as we joined (protocol.md section 19.4): drop the repeat,
        # acknowledging again one already processed (that ACK may be lost).
        if frame_id and frame_id in self._stored:
            if self._stored[frame_id]:
                self._ack(frame_id)
            return
        peer = self._peer(sender)
        if peer is None:
            self._remember_frame(frame_id, processed=True)
            self._ack(frame_id)
            return

        # A peer whose identity changed is held: its frames are kept
        # unprocessed and unacknowledged until /trust (or dropped past the
        # bound; stored ones stay in the relay's mailbox).
        if peer.trust == TrustState.CHANGED and peer.refused is None:
            if len(peer.held) < HELD_FRAMES_PER_PEER:
                peer.held.append((payload, frame_id))
                self._remember_frame(frame_id, processed=False)
            return

        self._process(peer, payload, frame_id)
        self._remember_frame(frame_id, processed=True)
        self._ack(frame_id)
        self._pump()

    def _remember_frame(self, frame_id: int, *, processed: bool) -> None:
        """Remember a stored frame's id (live frames have none), bounded."""
        if not frame_id:
            return
        self._stored[frame_id] = processed
        self._stored.move_to_end(frame_id)
        while len(self._stored) > STORED_FRAME_IDS:
            self._stored.popitem(last=False)

    def _ack(self, frame_id: int) -> None:
        if frame_id:
            self._acks.append(frame_id)

    def _process(self, peer: _Peer, payload: bytes, frame_id: int = 0) -> None:
        try:
            kind = frame_kind(payload)
        except PeerError as exc:
            self._alert(peer, exc)
            return

        # A HELLO may open a session (or replace a dead one). Before our
        # session is paired only a HELLO can be valid (protocol.md section
        # 5.4); anything else, such as records left in our mailbox by a
        # session of an earlier run, is dropped quietly.
        session = peer.session
        dead = session is None or session.state in _DEAD
        if kind == "hello" and dead:
            session = self._new_session(peer)
        if (
            session is None
            or dead
            or (
                kind != "hello"
                and session.state in (SessionState.IDLE, SessionState.HELLO_SENT)
            )
        ):
            logger.debug("dropped a %s frame from %s: no session", kind, peer.label)
            return
        step = partial(session.receive, payload, self._clock())
        if kind == "auth":
            self._guard(peer, step, auth_stored=frame_id != 0)
        else:
            self._guard(peer, step)

    def _guard(
        self, peer: _Peer, step: Callable[[], Any], auth_stored: bool | None = None
    ) -> None:
        """Run one session step, handle its events and its errors.

        Args:
            peer: whose session runs the step.
            step: the session call.
            auth_stored: for an AUTH frame, whether it came from the mailbox;
                None for every other step.
        """
        session = peer.session
        try:
            events = step() or []
        except KeyChanged as exc:
            self._refuse(peer, exc)
            if peer.session is session:
                peer.session = None
                peer.ready = False
                peer.failures += 1
                peer.failed_at = self._clock()
            return
        except PeerError as exc:
            if auth_stored is not None and exc.kind in _AUTH_FAILURES:
                self._handshake_failed(peer, session, exc, stored=auth_stored)
            else:
                self._alert(peer, exc)
            if exc.fatal and peer.session is session:
                peer.session = None
                peer.ready = False
                peer.failures += 1
                peer.failed_at = self._clock()
            return
        except SaltchatError as exc:
            logger.warning("session with %s: %s", peer.label, exc)
            return
        for event in events:
            self._on_session_event(peer, event)

    def _handshake_failed(
        self, peer: _Peer, session: Session | None, exc: PeerError, stored: bool
    ) -> None:
        """Tell the user that a peer's AUTH failed, and what to do about it.

        An AUTH that does not open means the two sides derived different keys
        from the key exchange: someone on the path (the relay) replaced an
        ephemeral key, or the sender does not hold the room secret. A bad signature
        means the sender knows the room secret but not the identity it claims
        (protocol.md section 5.2). Either way there is no secure session.
        """
        # An AUTH from the mailbox is most often left over from an earlier
        # attempt that the peer abandoned, not evidence of tampering.
        if stored and not exc.fatal:
            logger.info("dropped a stored AUTH from %s: %s", peer.label, exc)
            return

        # One alert per session: retransmissions and retries say nothing new.
        if peer.warned is session and session is not None:
            logger.info("handshake with %s failed again: %s", peer.label, exc)
            return
        peer.warned = session
        name = self._name(peer)
        if exc.kind == "forgery":
            reason = (
                "its handshake message (AUTH) does not authenticate, so the two "
                "of you ended up with different keys: someone between you, most "
                "likely the relay, replaced a key, or this peer does not hold "
                "the room secret"
            )
        else:
            reason = f"its handshake message (AUTH) is invalid ({exc})"
        self._emit(
            ClientEvent(
                "alert",
                {
                    "kind": "handshake-failed",
                    "peer": name,
                    "cause": exc.kind,
                    "detail": (
                        f"no secure session with {name}: {reason}. None of your "
                        f"messages went to {name}. Do not trust this relay for "
                        "this room: meet through another relay or directly "
                        "(--listen / --connect), check that you both use the "
                        "same invite code, and compare safety numbers with "
                        "/verify."
                    ),
                },
            )
        )

    def _refuse(self, peer: _Peer, exc: KeyChanged) -> None:
        """Tell the user that a peer proved an identity other than expected.

        The core refused it before sending CONFIRM (protocol.md section 5.2,
        step 4): no session exists, and nothing but the handshake went to
        it. The peer stays `changed` until /trust accepts the key.
        """
        peer.trust = TrustState.CHANGED
        peer.ready = False
        if peer.refused == exc.peer:
            logger.info("%s proved the refused identity again", peer.label)
            return
        peer.refused = exc.peer
        name = self._name(peer)
        pinned = self._trust.pinned_at(self._slot(peer))
        if pinned is not None or peer.accepted is not None:
            what = f"the identity key pinned for {name}'s address changed"
        elif peer.identity is not None:
            what = f"{name} proved another identity key in a new handshake"
        else:
            what = (
                f"{name} is not the person who invited you: the invite code "
                f"names fingerprint {self._expected}"
            )
        self._emit(
            ClientEvent(
                "alert",
                {
                    "kind": "identity-changed",
                    "peer": name,
                    "detail": (
                        f"{what}; this peer proved fingerprint "
                        f"{exc.peer.fingerprint()}. No secure session was made "
                        "and none of your messages went to it. Compare that "
                        "fingerprint with its owner out of band before you "
                        f"accept the new key with /trust {name}"
                    ),
                    "fingerprint": exc.peer.fingerprint(),
                },
            )
        )

    def _alert(self, peer: _Peer, exc: PeerError) -> None:
        if exc.kind in _QUIET_KINDS:
            logger.debug("rejected a frame from %s: %s", peer.label, exc)
            return
        self._emit(
            ClientEvent(
                "alert",
                {"kind": exc.kind, "detail": str(exc), "peer": self._name(peer)},
            )
        )

    def _on_session_event(self, peer: _Peer, event: object) -> None:
        match event:
            case Established(identity, safety_number):
                self._on_established(peer, identity, safety_number)
            case MessageReceived(message_id, text):
                self._on_text(peer, message_id, text)
            case ReceiptReceived(message_id):
                self._on_receipt(peer, message_id)
            case ProfileReceived(nickname):
                self._on_profile(peer, nickname)
            case Rekeyed(epoch):
                logger.info("session with %s rekeyed to epoch %d", peer.label, epoch)
            case PeerClosed():
                logger.info("%s closed the session", self._name(peer))
                peer.session = None
                peer.ready = False
            case PeerRestarted():
                logger.info("%s restarted its session", self._name(peer))
                peer.ready = False
                peer.started_at = self._clock()

    def _on_established(
        self, peer: _Peer, identity: PublicIdentity, safety_number: str
    ) -> None:
        # A stranger becomes a peer met: within MAX_PEERS, else it is closed.
        if (
            self._is_stranger(peer)
            and len(self._peers) - self._stranger_count() >= MAX_PEERS
        ):
            logger.warning("room has more than %d peers; closing one", MAX_PEERS)
            assert peer.session is not None
            peer.session.close()
            self._dirty.set()
            return

        # The pin check passed this time: a key refused before is not this
        # peer's, and the trust decision is made afresh at its PROFILE.
        if peer.refused is not None:
            peer.refused = None
            peer.trust = None

        # The handshake proved the key; the nickname follows inside the
        # channel, and the trust decision waits for it (it pins both).
        peer.identity = identity
        peer.safety_number = safety_number
        peer.generation += 1
        peer.failures = 0
        peer.ready = False
        assert peer.session is not None
        self._guard(peer, partial(peer.session.send_profile, self.nick, self._clock()))

    def _on_text(self, peer: _Peer, message_id: bytes, text: str) -> None:
        if not peer.ready:
            if len(peer.early) < HELD_FRAMES_PER_PEER:
                peer.early.append((message_id, text))
            return
        self._show(peer, message_id, text)

    def _show(self, peer: _Peer, message_id: bytes, text: str) -> None:
        # Deduplication by id, per identity: a resend after a reconnect, or a
        # copy from the mailbox, is acknowledged again but never shown twice.
        assert peer.identity is not None
        seen = self._seen.setdefault(peer.identity.key, OrderedDict())
        while len(self._seen) > MAX_PEERS * 4:
            del self._seen[next(iter(self._seen))]
        if message_id in seen:
            return
        seen[message_id] = None
        while len(seen) > DEDUP_IDS_PER_PEER:
            seen.popitem(last=False)
        self._emit(
            ClientEvent(
                "message",
                {
                    "from": self._name(peer),
                    "text": text,
                    "id": _hex_id(message_id),
                    "fingerprint": peer.identity.fingerprint(),
                },
            )
        )

    def _on_profile(self, peer: _Peer, nickname: str) -> None:
        # One nickname per session object: a peer cannot rename itself
        # mid-session, nor after each of our reconnects or rekeys (nor make
        # us pin names, and write the trust store, without end).
        if peer.identity is None or peer.named_by is peer.session:
            logger.debug("ignored a second profile from %s", peer.label)
            return
        peer.named_by = peer.session
        peer.nick = sanitize_nick(nickname)
        try:
            decision = self._trust.check(peer.identity.key, peer.nick, self._slot(peer))
            if self._inviter_takes_name(peer, decision):
                decision = self._give_name_to_inviter(peer)
        except (TrustStoreError, OSError) as exc:
            self._emit(ClientEvent("error", {"detail": f"trust store: {exc}"}))
            return

        if decision.state == TrustState.CHANGED:
            peer.trust = TrustState.CHANGED
            self._emit(
                ClientEvent(
                    "alert",
                    {
                        "kind": "identity-changed",
                        "peer": self._name(peer),
                        "detail": (
                            f"the identity key for this {decision.pinned_by} "
                            "changed; messages to and from this peer are held "
                            f"until you check the safety number (/verify "
                            f"{self._name(peer)}) and accept the new key (/trust "
                            f"{self._name(peer)})"
                        ),
                        "fingerprint": peer.identity.fingerprint(),
                    },
                )
            )
            return
        self._become_ready(peer, decision.state)

    def _inviter_takes_name(self, peer: _Peer, decision: TrustDecision) -> bool:
        """Whether the inviter's key replaces a nickname pinned on first use.

        Another holder of the invite code may answer before the inviter,
        under the inviter's nickname, and trust on first use pins that name
        to its key. The peer at the inviter's address proved the inviter's
        fingerprint before CONFIRM (protocol.md section 5.2, step 4), which
        outranks a pin nobody verified; a name the user verified stays.
        """
        return (
            decision.state == TrustState.CHANGED
            and decision.pinned_by == "name"
            and decision.previous_key is not None
            and peer.nick is not None
            and peer.identity is not None
            and self._expected is not None
            and self._is_inviter_address(peer)
            and fingerprint_matches(peer.identity, self._expected)
            and self._trust.state_of(decision.previous_key, peer.nick)
            != TrustState.VERIFIED
        )

    def _give_name_to_inviter(self, peer: _Peer) -> TrustDecision:
        # The earlier claimant keeps its session, shown as `nick#digits`
        # beside the verified inviter; its next session is a name change.
        assert peer.identity is not None and peer.nick is not None
        logger.info("the inviter takes back the nickname pinned on first use")
        self._trust.accept(peer.identity.key, peer.nick, self._slot(peer))
        return TrustDecision(self._trust.state_of(peer.identity.key, peer.nick))

    def _slot(self, peer: _Peer) -> str | None:
        # In direct mode every peer has the same stand-in address: only the
        # name is pinned there.
        if peer.address == DIRECT_PEER:
            return None
        return f"{self._room.room_id.hex()}:{peer.address.hex()}"

    def _become_ready(self, peer: _Peer, state: TrustState) -> None:
        assert peer.identity is not None
        # Verified by the invite only at the inviter's address: elsewhere
        # the same key is met like anyone else (see _expectation).
        if (
            self._expected is not None
            and self._is_inviter_address(peer)
            and state != TrustState.VERIFIED
            and fingerprint_matches(peer.identity, self._expected)
        ):
            try:
                self._trust.mark_verified(peer.identity.key, peer.nick or peer.label)
                state = TrustState.VERIFIED
            except (TrustStoreError, OSError) as exc:
                self._emit(ClientEvent("error", {"detail": f"trust store: {exc}"}))
        peer.trust = state
        peer.ready = True
        peer.refused = None
        self._emit(
            ClientEvent(
                "secure",
                {
                    "peer": self._name(peer),
                    "safety_number": peer.safety_number,
                    "verified": state == TrustState.VERIFIED,
                    "trust": str(state),
                    "fingerprint": peer.identity.fingerprint(),
                },
            )
        )
        while peer.early:
            self._show(peer, *peer.early.popleft())

    def _on_receipt(self, peer: _Peer, message_id: bytes) -> None:
        item = self._outbox.get(message_id)
        if item is None or peer.address in item.delivered:
            return
        item.delivered.add(peer.address)
        item.sent_in.setdefault(peer.address, peer.generation)
        complete = all(address in item.delivered for address in item.sent_in)
        self._emit(
            ClientEvent(
                "delivered",
                {
                    "id": _hex_id(message_id),
                    "to": self._name(peer),
                    "complete": complete,
                },
            )
        )
        if complete:
            del self._outbox[message_id]
            if not self._outbox:
                self.drained.set()

    # ----------------------------------------------------------------- outbox

    def send_message(self, text: str) -> str:
        """Queue a message for every peer in the room; return its id (hex).

        Raises:
            CommandError: the text is empty, too long, or the outbox is full.
        """
        check_message_text(text)
        if len(self._outbox) >= OUTBOX_MAX_MESSAGES or (
            sum(len(item.text.encode()) for item in self._outbox.values())
            + len(text.encode())
            > OUTBOX_MAX_BYTES
        ):
            raise CommandError(
                "the outbox is full of undelivered messages; wait for peers "
                "to come back, or /quit to see what is undelivered"
            )

        # Recipients: every peer this client has met in the room, present or
        # not (an absent one gets it from the mailbox or on its return), and
        # never a stranger, whom anyone knowing the room id can conjure. With
        # nobody met yet, the message goes to the first peer that is ready.
        message_id = nacl.utils.random(16)
        recipients = [a for a, p in self._peers.items() if not self._is_stranger(p)]
        item = _Outgoing(message_id, text, dict.fromkeys(recipients, 0))
        item.open = not item.sent_in
        self._outbox[message_id] = item
        names = self._display_names()
        self.drained.clear()
        self._emit(
            ClientEvent(
                "sent",
                {
                    "id": _hex_id(message_id),
                    "text": text,
                    "to": [names[address] for address in item.sent_in],
                },
            )
        )
        self._pump()
        self._dirty.set()
        return _hex_id(message_id)

    def _pump(self) -> None:
        """Seal every outbox message for every ready recipient not yet sent to
        in its current session (or since the last reconnect)."""
        if self._link is None:
            return
        for item in list(self._outbox.values()):
            if item.open:
                for address, peer in self._peers.items():
                    if peer.ready:
                        item.sent_in[address] = 0
                        item.open = False
            for address in list(item.sent_in):
                recipient = self._due(item, address)
                if recipient is None:
                    continue
                item.sent_in[address] = recipient.generation
                self._guard(
                    recipient,
                    partial(
                        _seal,
                        recipient.session,
                        item.text,
                        self._clock(),
                        item.message_id,
                    ),
                )

    def _due(self, item: _Outgoing, address: bytes) -> _Peer | None:
        """The recipient if `item` must be sealed for it now, else None."""
        peer = self._peers.get(address)
        if (
            peer is None
            or not peer.ready
            or address in item.delivered
            or item.sent_in[address] == peer.generation
            or peer.session is None
            or peer.session.state != SessionState.ESTABLISHED
        ):
            return None
        return peer

    # --------------------------------------------------------------- commands

    def _name(self, peer: _Peer) -> str:
        """The peer's display name (see `_display_names`)."""
        return self._display_names().get(peer.address, peer.label)

    def _display_names(self) -> dict[bytes, str]:
        """Every peer's display name, one per identity, by address.

        Two people may claim one nickname; keys tell them apart. When other
        identities met in the room (present or not, held or not) claim the
        same nickname, only a peer verified under it keeps the bare name, and
        only if no rival is verified too; the others show `nick#` and the
        first five digits of their fingerprint. Nicknames hold no '#', so
        only a peer with that key shows those digits; should two names still
        look alike ('_' for '#', or case; or five digits found by search),
        they show the whole fingerprint.
        """
        peers = list(self._peers.values())
        names: dict[bytes, str] = {}
        for peer in peers:
            names[peer.address] = self._claimed_name(peer, peers, 5)

        # Names are compared as a reader would: '_' for '#', any case.
        owners: dict[str, set[bytes]] = {}
        for peer in peers:
            key = peer.identity.key if peer.identity else peer.address
            owners.setdefault(_look(names[peer.address]), set()).add(key)
        for peer in peers:
            if len(owners[_look(names[peer.address])]) > 1:
                names[peer.address] = self._claimed_name(peer, peers, 30)
        return names

    @staticmethod
    def _claimed_name(peer: _Peer, peers: list[_Peer], digits: int) -> str:
        if peer.nick is None or peer.identity is None:
            return peer.label
        rivals = [
            other
            for other in peers
            if other.nick == peer.nick and other.identity not in (None, peer.identity)
        ]
        keeps = digits == 5 and (
            not rivals
            or (
                peer.trust == TrustState.VERIFIED
                and all(other.trust != TrustState.VERIFIED for other in rivals)
            )
        )
        if keeps:
            return peer.nick
        fingerprint = peer.identity.fingerprint().replace(" ", "")
        return f"{peer.nick}#{fingerprint[:digits]}"

    def _find(self, name: str) -> _Peer:
        # Exact display names first (one identity at two addresses: the one
        # present), then nicknames; never a guess between two identities.
        peers = list(self._peers.values())
        names = self._display_names()
        matches = [peer for peer in peers if names[peer.address] == name]
        if len(matches) > 1:
            matches = [peer for peer in matches if peer.present] or matches
        if not matches:
            matches = [peer for peer in peers if name in (peer.nick, peer.label)]
        if not matches:
            raise CommandError(f"no peer called {name!r}; /who lists the peers")
        if len(matches) > 1:
            raise CommandError(
                f"{name!r} is ambiguous; use the name with its #digits from /who"
            )
        return matches[0]

    def who(self) -> list[dict[str, Any]]:
        """Everyone this client has met in the room, with their state."""
        names = self._display_names()
        return [
            {
                "peer": names[peer.address],
                "present": peer.present,
                "secure": peer.ready,
                "trust": str(peer.trust) if peer.trust else "unknown",
                "fingerprint": peer.identity.fingerprint() if peer.identity else None,
            }
            for peer in self._peers.values()
        ]

    def verify(self, name: str, confirmation: str | None = None) -> dict[str, Any]:
        """Show the safety number for a peer; with a confirmation, mark it.

        `confirmation` is either "yes" (the user compared the numbers) or the
        60 digits the peer read out, compared here.

        Raises:
            CommandError: unknown peer, no session or trust decision yet,
                digits that differ, or a trust store that cannot be written.
        """
        peer = self._find(name)
        if peer.identity is None or peer.safety_number is None:
            raise CommandError(f"no secure session with {name} yet")
        if peer.trust is None:
            raise CommandError(
                f"{name} has not told its nickname yet, so its key is not "
                "pinned; wait for it to be shown as secure"
            )
        result: dict[str, Any] = {
            "peer": self._name(peer),
            "safety_number": peer.safety_number,
            "fingerprint": peer.identity.fingerprint(),
            "verified": peer.trust == TrustState.VERIFIED,
        }
        if confirmation is None:
            return result

        digits = "".join(confirmation.split())
        if digits.lower() != "yes" and digits != "".join(peer.safety_number.split()):
            raise CommandError(
                "that safety number does NOT match: do not trust this peer until "
                "you find out why"
            )
        if peer.trust == TrustState.CHANGED:
            raise CommandError(f"accept the new key first with /trust {name}")
        with _trust_store_errors():
            self._trust.mark_verified(peer.identity.key, peer.nick or peer.label)
        peer.trust = TrustState.VERIFIED
        result["verified"] = True
        return result

    def accept_key(self, name: str) -> None:
        """Accept a changed identity key (/trust) and release held messages.

        Raises:
            CommandError: unknown peer, its key has not changed, or the trust
                store cannot be written.
        """
        peer = self._find(name)
        if peer.refused is not None:
            with _trust_store_errors():
                self._accept_refused(peer, peer.refused)
            return
        if peer.trust != TrustState.CHANGED or peer.identity is None:
            raise CommandError(f"{name}'s key has not changed; nothing to accept")
        with _trust_store_errors():
            self._trust.accept(
                peer.identity.key, peer.nick or peer.label, self._slot(peer)
            )
        self._become_ready(
            peer, self._trust.state_of(peer.identity.key, peer.nick or peer.label)
        )

        # Held frames are processed now, in order, and acknowledged.
        while peer.held and peer.trust != TrustState.CHANGED:
            payload, frame_id = peer.held.popleft()
            self._process(peer, payload, frame_id)
            self._remember_frame(frame_id, processed=True)
            self._ack(frame_id)
        self._pump()
        self._dirty.set()

    def _accept_refused(self, peer: _Peer, key: PublicIdentity) -> None:
        # The new key takes the old one's place: its address, and the name
        # the old key was pinned with, so that its PROFILE is not a second
        # change. Then a fresh handshake, expecting the new key.
        slot = self._slot(peer)
        previous = self._trust.pinned_at(slot)
        if previous is None and peer.identity is not None:
            previous = peer.identity.key
        name = None if previous is None else self._trust.name_of(previous)
        self._trust.accept(key.key, name or None, slot)
        peer.accepted = key
        peer.refused = None
        peer.trust = None
        peer.failures = 0
        if self._link is not None and peer.present:
            self._start_handshake(peer)
        self._dirty.set()

    def keys(self) -> dict[str, Any]:
        """The security panel: per-session statistics and the steps that
        established the session (public values, short hashes), never a key."""
        sessions = []
        names = self._display_names()
        for peer in self._peers.values():
            session = peer.session
            if session is None:
                continue
            stats = session.stats
            sessions.append(
                {
                    "peer": names[peer.address],
                    "state": session.state.name.lower(),
                    "epoch": stats.epoch,
                    "sent_in_epoch": stats.sent_in_epoch,
                    "received_in_epoch": stats.received_in_epoch,
                    "rekeys": stats.rekeys,
                    "rejected": dict(stats.rejected),
                    "safety_number": peer.safety_number,
                    "trust": str(peer.trust) if peer.trust else "unknown",
                    "handshake": peer.steps.steps(),
                }
            )
        return {
            "fingerprint": self._identity.public.fingerprint(),
            "connection": self.connection,
            "sessions": sessions,
        }

    def rekey(self) -> int:
        """Ask every established session for a new epoch now.

        Returns:
            How many sessions were asked.
        """
        count = 0
        for peer in self._peers.values():
            session = peer.session
            if session is not None and session.state == SessionState.ESTABLISHED:
                self._guard(peer, partial(_rekey, session, self._clock()))
                count += 1
        self._dirty.set()
        return count


def check_message_text(text: str) -> None:
    """Refuse text that cannot be a message, before any work.

    Raises:
        CommandError: empty, too long, or holding control characters.
    """
    if not text.strip():
        raise CommandError("empty message; type some text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_LINE_BYTES:
        raise CommandError(
            f"message is {size} bytes; the most is {MAX_INPUT_LINE_BYTES}"
        )
    if any(unicodedata.category(char) == "Cc" and char != "\t" for char in text):
        raise CommandError("message contains control characters; remove them")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CommandError("message is not valid UTF-8") from exc
