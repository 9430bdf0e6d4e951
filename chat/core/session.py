"""A session: the handshake, the channel and rekeying tied into one machine.

Sans-I/O: feed it frames with :meth:`Session.receive`, drain the frames it
wants sent with :meth:`Session.frames_to_send`, and call :meth:`Session.tick`
about once a second. Time is always passed in by the caller.

Every transition is listed in :data:`TRANSITIONS` (see protocol.md section
5.4): (state, event) -> handler. An event with no entry raises an error that
names both. Handlers check everything before changing anything, so a
non-fatal :class:`PeerError` leaves the session exactly as it was; a fatal
one moves it to FAILED and erases its keys.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import nacl.bindings
import nacl.utils

from chat.core import schedule
from chat.core.channel import Channel, EpochKeys, Opened, record_nonce
from chat.core.errors import (
    CounterExhausted,
    KeyChanged,
    LocalError,
    MalformedFrame,
    MessageTooLarge,
    NotEstablished,
    PeerError,
    ReflectedFrame,
    ReplayedFrame,
    SessionClosed,
    StaleFrame,
    UnexpectedFrame,
)
from chat.core.frames import (
    Close,
    Confirm,
    Hello,
    Payload,
    Profile,
    Receipt,
    Rekey,
    Text,
    encode_payload,
    frame_kind,
    is_canonical_point,
    nickname_problem,
    pad,
    parse_hello,
    parse_payload,
)
from chat.core.handshake import Handshake
from chat.core.identity import (
    Identity,
    PublicIdentity,
    fingerprint_matches,
    safety_number,
)
from chat.core.limits import (
    CANDIDATE_INTERVAL_SECONDS,
    HANDSHAKE_JITTER,
    HANDSHAKE_TIMEOUT_SECONDS,
    MAX_FRAME,
    MAX_TEXT_BYTES,
    RECENT_HELLOS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_SECONDS,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_SECONDS,
    REKEY_RETRANSMIT_SECONDS,
)
from chat.core.rooms import RoomKeys
from chat.core.secrets import Secret, short_hash
from chat.core.teaching import Observer, TeachingEvent

__all__ = [
    "TRANSITIONS",
    "Established",
    "Event",
    "MessageReceived",
    "PeerClosed",
    "PeerRestarted",
    "ProfileReceived",
    "ReceiptReceived",
    "Rekeyed",
    "Session",
    "SessionState",
    "SessionStats",
]


class SessionState(IntEnum):
    """Where a session is (protocol.md section 5.4)."""

    IDLE = 0
    HELLO_SENT = 1
    AUTH_SENT = 2
    CONFIRMING = 3
    ESTABLISHED = 4
    CLOSED = 5
    FAILED = 6


@dataclass(frozen=True)
class Established:
    """Both sides derived the same keys; messages may flow."""

    peer: PublicIdentity
    safety_number: str


@dataclass(frozen=True)
class MessageReceived:
    """A chat message from the peer (a RECEIPT has been queued for it)."""

    message_id: bytes
    text: str


@dataclass(frozen=True)
class ReceiptReceived:
    """The peer received our message ``message_id``."""

    message_id: bytes


@dataclass(frozen=True)
class ProfileReceived:
    """The peer claims ``nickname`` (a label to show; its key is its identity)."""

    nickname: str


@dataclass(frozen=True)
class Rekeyed:
    """Both sides now send in ``epoch``."""

    epoch: int


@dataclass(frozen=True)
class PeerClosed:
    """The peer closed the session."""

    reason: int


@dataclass(frozen=True)
class PeerRestarted:
    """The peer ran a new handshake with the same identity; old keys dropped."""


Event = (
    Established
    | MessageReceived
    | ReceiptReceived
    | ProfileReceived
    | Rekeyed
    | PeerClosed
    | PeerRestarted
)


@dataclass
class SessionStats:
    """Counters for the client's status line and logs (no secrets)."""

    epoch: int = 0
    sent_in_epoch: int = 0
    received_in_epoch: int = 0
    rekeys: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def _key_hashes(keys: EpochKeys) -> dict[str, str]:
    """Short hashes of one epoch's two record keys, for teaching events.

    Our send key is the peer's receive key, so the two sides' events show
    that they agree on one key per direction without revealing either.
    """
    send = "" if keys.send_key is None else short_hash(keys.send_key.reveal())
    return {"send_key": send, "receive_key": short_hash(keys.recv_key.reveal())}


class _Rekey:
    """Our side of the move to ``new_epoch`` (protocol.md section 9)."""

    __slots__ = ("installed", "new_epoch", "private", "public", "retransmit_at")

    def __init__(self, new_epoch: int, private: bytes, retransmit_at: float) -> None:
        self.new_epoch = new_epoch
        self.private: Secret | None = Secret(private)
        self.public = nacl.bindings.crypto_scalarmult_base(private)
        self.installed: bytes | None = None
        self.retransmit_at = retransmit_at

    def __repr__(self) -> str:
        return f"<Rekey to epoch {self.new_epoch} redacted>"


_S = SessionState

#: Every (state, event) the session handles, and the method that does it.
#: Frame events are the frame kinds; the rest are API calls.
TRANSITIONS: dict[tuple[SessionState, str], str] = {
    (_S.IDLE, "start"): "_start",
    (_S.IDLE, "hello"): "_hello_idle",
    (_S.HELLO_SENT, "start"): "_ignore",
    (_S.HELLO_SENT, "hello"): "_hello_waiting",
    (_S.AUTH_SENT, "start"): "_ignore",
    (_S.AUTH_SENT, "hello"): "_hello_paired",
    (_S.AUTH_SENT, "auth"): "_auth_live",
    (_S.CONFIRMING, "start"): "_ignore",
    (_S.CONFIRMING, "hello"): "_hello_live",
    (_S.CONFIRMING, "auth"): "_auth_later",
    (_S.CONFIRMING, "record"): "_record",
    (_S.ESTABLISHED, "start"): "_ignore",
    (_S.ESTABLISHED, "hello"): "_hello_live",
    (_S.ESTABLISHED, "auth"): "_auth_later",
    (_S.ESTABLISHED, "record"): "_record",
    (_S.ESTABLISHED, "send"): "_send_payload",
    (_S.ESTABLISHED, "profile"): "_send_payload",
    (_S.ESTABLISHED, "rekey"): "_start_rekey",
}


class Session:
    """One end-to-end session with one peer in one room.

    Args:
        identity: Our long-term identity.
        room: The room's keys; room_key is mixed into the handshake.
        now: The caller's clock, in seconds.
        random: Source of random bytes (inject a deterministic one for vectors).
        observer: Receives teaching events; see :mod:`chat.core.teaching`.
        expected_peer: The identity this peer must prove (a pinned key).
        expected_fingerprint: The fingerprint the peer's identity must have
            (the one an invite code names), when its key is not known yet.
        narrate_records: Whether the observer also gets the "seal" and
            "open" steps, which carry plaintext; only the demo wants them.
        side: Our label in teaching events.
    """

    def __init__(
        self,
        identity: Identity,
        room: RoomKeys,
        *,
        now: float,
        random: Callable[[int], bytes] = nacl.utils.random,
        observer: Observer | None = None,
        expected_peer: PublicIdentity | None = None,
        expected_fingerprint: str | None = None,
        narrate_records: bool = True,
        side: str = "me",
    ) -> None:
        self._identity = identity
        self._room = room
        self._random = random
        self._observer = observer
        self._expected_peer = expected_peer
        self._expected_fingerprint = expected_fingerprint
        self._narrate_records = narrate_records
        self._side = side
        self._now = now
        self._terminal: SessionState | None = None
        self._live: Handshake | None = None
        self._candidate: Handshake | None = None
        self._last_candidate = float("-inf")
        self._recent: deque[bytes] = deque(maxlen=RECENT_HELLOS)
        self._recent_frames: deque[bytes] = deque(maxlen=RECENT_HELLOS)
        self._rekey: _Rekey | None = None
        self._peer_rekeys: dict[int, bytes] = {}
        self._outbox: list[bytes] = []
        self.safety_number: str | None = None
        self.stats = SessionStats()

    def __repr__(self) -> str:
        return f"<Session {self._side} state={self.state.name} keys redacted>"

    # -- public API ----------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current state; see :data:`TRANSITIONS`."""
        if self._terminal is not None:
            return self._terminal
        if self._live is None:
            return SessionState.IDLE
        if self._live.pairing is None:
            return SessionState.HELLO_SENT
        if self._live.channel is None:
            return SessionState.AUTH_SENT
        if not self._live.confirmed:
            return SessionState.CONFIRMING
        return SessionState.ESTABLISHED

    @property
    def peer(self) -> PublicIdentity | None:
        """The peer's identity, once its AUTH verified."""
        return None if self._live is None else self._live.peer

    @property
    def channel(self) -> Channel | None:
        """The live channel (for tests, the benchmark and diagnostics)."""
        return None if self._live is None else self._live.channel

    def start(self) -> None:
        """Queue a HELLO. Either side may call it, or both at once."""
        self._dispatch("start")

    def receive(self, frame: bytes, now: float) -> list[Event]:
        """Process one frame from the transport.

        Returns:
            The events it caused, in order.

        Raises:
            PeerError: the frame was rejected. If not ``fatal``, the session
                is exactly as it was; if fatal, it is now FAILED.
            SessionClosed: the session is CLOSED or FAILED.
        """
        self._now = now
        if self._terminal is not None:
            raise SessionClosed(f"receive in state {self._terminal.name}")
        try:
            if len(frame) > MAX_FRAME:
                raise MalformedFrame(f"frame of {len(frame)} bytes is too large")
            kind = frame_kind(frame)
            return self._dispatch(kind, frame)
        except PeerError as exc:
            self._rejected(exc)
            raise

    def send_text(
        self, text: str, now: float, message_id: bytes | None = None
    ) -> bytes:
        """Seal a chat message and queue it; return its 16-byte message id.

        Raises:
            NotEstablished: the handshake has not completed.
            MessageTooLarge: empty, or more than MAX_TEXT_BYTES in UTF-8.
            SessionClosed: the session is CLOSED or FAILED.
            CounterExhausted: the epoch cannot seal more records.
        """
        self._now = now
        if message_id is None:
            message_id = self._random(16)
        if len(message_id) != 16:
            raise LocalError("a message id is 16 bytes")
        encoded = text.encode("utf-8")
        if not 1 <= len(encoded) <= MAX_TEXT_BYTES:
            raise MessageTooLarge(
                f"a message is 1 to {MAX_TEXT_BYTES} bytes of UTF-8, not {len(encoded)}"
            )
        self._dispatch("send", Text(message_id, text))
        return message_id

    def send_profile(self, nickname: str, now: float) -> None:
        """Seal a PROFILE carrying the nickname we claim, and queue it (7.4).

        The peer gets no receipt for it and may ignore it; the nickname is a
        label, never an identity.

        Raises:
            LocalError: the nickname is empty, longer than MAX_NICKNAME_BYTES
                in UTF-8, or holds a control character.
            NotEstablished, SessionClosed, CounterExhausted: as for
                :meth:`send_text`.
        """
        self._now = now
        problem = nickname_problem(nickname)
        if problem is not None:
            raise LocalError(problem)
        self._dispatch("profile", Profile(nickname))

    def rekey(self, now: float) -> None:
        """Ask for a new epoch now (section 9.1)."""
        self._now = now
        self._dispatch("rekey")

    def close(self, reason: int = 0) -> None:
        """Queue a CLOSE if a channel exists, erase keys, state CLOSED."""
        if self._terminal is not None:
            return
        channel = self.channel
        if channel is not None:
            self._seal(channel, Close(reason & 0xFF))
        self._erase(SessionState.CLOSED)

    def tick(self, now: float) -> list[Event]:
        """Drive timeouts, retransmissions, rekeying and forgetting (section 9)."""
        self._now = now
        if self._terminal is not None:
            return []
        self._tick_handshakes(now)
        channel = self.channel
        if channel is not None and self.state is SessionState.ESTABLISHED:
            channel.forget_expired(now)
            self._tick_rekey(channel, now)
        self._refresh_stats()
        return []

    def frames_to_send(self) -> list[bytes]:
        """Drain the frames to hand to the transport, oldest first."""
        frames, self._outbox = self._outbox, []
        return frames

    # -- dispatch ------------------------------------------------------------

    def _dispatch(self, event: str, arg: object = None) -> list[Event]:
        state = self.state
        name = TRANSITIONS.get((state, event))
        if name is not None:
            handler: Callable[[object], list[Event]] = getattr(self, name)
            return handler(arg)
        if state in (SessionState.CLOSED, SessionState.FAILED):
            raise SessionClosed(f"{event} in state {state.name}: the session is over")
        if event in ("hello", "auth", "record"):
            raise UnexpectedFrame(
                f"no transition for a {event} frame in state {state.name}"
            )
        if event in ("send", "profile", "rekey"):
            raise NotEstablished(f"cannot send in state {state.name}: not established")
        raise LocalError(f"no transition for {event} in state {state.name}")

    def _ignore(self, _arg: object) -> list[Event]:
        return []

    def _rejected(self, exc: PeerError) -> None:
        # Statistics are not protocol state: counting a rejection is allowed.
        self.stats.rejected[exc.kind] = self.stats.rejected.get(exc.kind, 0) + 1
        self._teach("rejected", kind=exc.kind, reason=str(exc), fatal=str(exc.fatal))
        if exc.fatal:
            self._erase(SessionState.FAILED)

    def _erase(self, state: SessionState) -> None:
        # Dropping every reference is how Python erases (protocol.md section 13).
        self._terminal = state
        self._candidate = None
        self._rekey = None
        if self._live is not None:
            self._live.channel = None
            self._live.pairing = None

    # -- handshake (protocol.md section 5) -----------------------------------

    def _new_handshake(self) -> Handshake:
        # The timeout is jittered by +-50 % so honest peers cannot livelock.
        fraction = int.from_bytes(self._random(2), "big") / 0xFFFF
        scale = 1 - HANDSHAKE_JITTER + 2 * HANDSHAKE_JITTER * fraction
        handshake = Handshake(
            self._random(32), self._now + HANDSHAKE_TIMEOUT_SECONDS * scale
        )
        self._teach("ephemeral", ephemeral=handshake.ephemeral.hex())
        return handshake

    def _start(self, _arg: object = None) -> list[Event]:
        if self._observer is not None:
            self._teach("identity", fingerprint=self._identity.public.fingerprint())
        self._live = self._new_handshake()
        self._send_hello(self._live, None)
        return []

    def _send_hello(self, handshake: Handshake, echo: bytes | None) -> None:
        self._outbox.append(handshake.hello(echo))
        self._teach(
            "hello-sent",
            ephemeral=handshake.ephemeral.hex(),
            echo=(echo or bytes(32)).hex(),
        )

    def _pair(self, handshake: Handshake, hello: Hello, answer: bool) -> None:
        """Pair ``handshake`` with the HELLO's ephemeral and send our AUTH.

        Everything that can fail runs before the first change (section 5.4).
        """
        pairing = handshake.prepare_pairing(hello.ephemeral, self._room)
        handshake.commit_pairing(pairing)
        self._recent.append(hello.ephemeral)
        self._recent_frames.append(hello.frame)
        if answer:
            self._send_hello(handshake, hello.ephemeral)
        self._outbox.append(handshake.auth(self._identity))
        self._teach("shared-secret", dh=pairing.shared_hash, role=str(pairing.role))
        if self._observer is not None and pairing.secrets is not None:
            self._teach(
                "keys",
                transcript=pairing.th.hex(),
                k_auth_own=short_hash(pairing.secrets.k_auth_own.reveal()),
                k_auth_peer=short_hash(pairing.secrets.k_auth_peer.reveal()),
            )
        if self._observer is not None:
            self._teach("auth", identity=self._identity.public.fingerprint())

    def _check_hello(self, frame: object) -> Hello:
        assert isinstance(frame, bytes)
        hello = parse_hello(frame)
        self._teach(
            "hello-received", ephemeral=hello.ephemeral.hex(), echo=hello.echo.hex()
        )
        return hello

    def _hello_idle(self, frame: object) -> list[Event]:
        hello = self._check_hello(frame)
        if self._screen_hello(frame, hello):
            return []

        # R2: a HELLO answering someone else: start afresh, do not pair.
        if not hello.fresh:
            return self._start()
        handshake = self._new_handshake()
        self._pair(handshake, hello, answer=True)
        self._live = handshake
        return []

    def _hello_waiting(self, frame: object) -> list[Event]:
        hello = self._check_hello(frame)
        live = self._live
        assert live is not None
        if self._screen_hello(frame, hello):
            return []

        # Ours answered, or both started at once (section 5.4): pair. On a
        # fresh HELLO we answer too, in case the peer never saw ours.
        if hello.fresh or hello.echo == live.ephemeral:
            self._pair(live, hello, answer=hello.fresh)
            return []
        raise StaleFrame("HELLO answers an ephemeral key we no longer hold")

    def _hello_paired(self, frame: object) -> list[Event]:
        hello = self._check_hello(frame)
        if self._screen_hello(frame, hello):
            return []

        # The peer restarted before we finished: pair afresh (section 5.4).
        if hello.fresh:
            handshake = self._rate_limited_handshake()
            self._pair(handshake, hello, answer=True)
            self._live = handshake
            return []
        raise StaleFrame("HELLO answers an ephemeral key we no longer hold")

    def _hello_live(self, frame: object) -> list[Event]:
        hello = self._check_hello(frame)
        if self._screen_hello(frame, hello):
            return []

        # Our own candidate (started on REJECT_AFTER_SECONDS) gets its answer.
        candidate = self._candidate
        if (
            candidate is not None
            and candidate.pairing is None
            and (hello.fresh or hello.echo == candidate.ephemeral)
        ):
            self._pair(candidate, hello, answer=hello.fresh)
            return []

        # R1: a fresh HELLO starts a candidate beside the live session; the
        # live one stays until the candidate is confirmed.
        if hello.fresh:
            handshake = self._rate_limited_handshake()
            self._pair(handshake, hello, answer=True)
            self._candidate = handshake
            return []
        raise StaleFrame("HELLO answers an ephemeral key we no longer hold")

    def _screen_hello(self, frame: object, hello: Hello) -> bool:
        """Refuse reflected and replayed HELLOs; True for a harmless repeat.

        The peer's answer to our HELLO may cross its own fresh one, so a
        second HELLO with the current peer's ephemeral (and another echo) is
        expected and ignored; the same bytes twice are a replay (section 5.4).
        """
        assert isinstance(frame, bytes)
        own = [h.ephemeral for h in (self._live, self._candidate) if h is not None]
        if hello.ephemeral in own:
            raise ReflectedFrame("HELLO carries our own ephemeral key")
        if frame in self._recent_frames:
            raise ReplayedFrame("HELLO already received")
        if hello.ephemeral in self._current_peers():
            self._recent_frames.append(frame)
            return True
        if hello.ephemeral in self._recent:
            raise ReplayedFrame("HELLO with an ephemeral key already seen")
        return False

    def _current_peers(self) -> list[bytes]:
        handshakes = (self._live, self._candidate)
        return [
            h.pairing.peer_ephemeral
            for h in handshakes
            if h is not None and h.pairing is not None
        ]

    def _rate_limited_handshake(self) -> Handshake:
        if self._now - self._last_candidate < CANDIDATE_INTERVAL_SECONDS:
            raise UnexpectedFrame("peer restarts more than once per second; dropped")
        handshake = self._new_handshake()
        self._last_candidate = self._now
        return handshake

    def _auth_live(self, frame: object) -> list[Event]:
        assert isinstance(frame, bytes) and self._live is not None
        return self._finish(self._live, frame, self._expected_peer)

    def _auth_later(self, frame: object) -> list[Event]:
        assert isinstance(frame, bytes) and self._live is not None
        if self._live.peer_auth == frame:
            raise ReplayedFrame("AUTH already accepted")
        candidate = self._candidate
        if (
            candidate is not None
            and candidate.pairing is not None
            and candidate.channel is None
        ):
            return self._finish(candidate, frame, self._live.peer)
        raise UnexpectedFrame(
            f"no handshake waits for an AUTH in state {self.state.name}"
        )

    def _finish(
        self, handshake: Handshake, frame: bytes, expected: PublicIdentity | None
    ) -> list[Event]:
        # R4: the pin is checked before we send CONFIRM (section 5.2).
        peer = handshake.verify_auth(frame, self._identity, expected)
        self._check_fingerprint(peer)
        channel = handshake.finish(peer, self._identity, frame, self._now)
        self._seal(channel, Confirm())
        self._keep_confirm(handshake, 0, self._outbox[-1])
        handshake.confirm_at = self._now + REKEY_RETRANSMIT_SECONDS
        if self._observer is not None:
            self._teach(
                "keys",
                root=short_hash(channel.root.reveal()),
                **_key_hashes(channel.epochs[0]),
            )
        return []

    def _check_fingerprint(self, peer: PublicIdentity) -> None:
        # The invite's half of the pin check (section 5.2, step 4): only a
        # fingerprint is known, so the proved key is hashed and compared.
        expected = self._expected_fingerprint
        if expected is not None and not fingerprint_matches(peer, expected):
            raise KeyChanged(
                f"the peer proved identity {peer.fingerprint()}, "
                f"not the expected {expected}",
                peer=peer,
            )

    def _tick_handshakes(self, now: float) -> None:
        # R3: restart an attempt that did not complete in time (section 5.5).
        if self._candidate is not None and now >= self._candidate.deadline:
            self._candidate = None
        live = self._live
        if live is not None and not live.confirmed and now >= live.deadline:
            self._live = self._new_handshake()
            self._send_hello(self._live, None)

        # Our CONFIRM may have reached a peer that could not open it yet (its
        # AUTH crossed ours): resend it until the peer answers (section 5.6).
        for handshake in (self._live, self._candidate):
            if handshake is None or handshake.channel is None or handshake.confirmed:
                continue
            if now >= handshake.confirm_at:
                handshake.confirm_at = now + REKEY_RETRANSMIT_SECONDS
                self._seal(handshake.channel, Confirm())

    # -- records (protocol.md sections 7 and 9) ------------------------------

    def _record(self, frame: object) -> list[Event]:
        assert isinstance(frame, bytes) and self._live is not None
        handshake, opened, payload = self._open(frame)
        assert handshake.channel is not None
        if isinstance(payload, Rekey):
            self._check_rekey(handshake.channel, opened.epoch, payload)
        resent = self._is_resent_confirm(handshake, opened, payload)

        handshake.channel.accept(opened)
        events = self._confirm(handshake)
        events += self._maybe_switch(handshake.channel, opened.epoch)
        events += self._deliver(handshake.channel, opened.epoch, payload)
        if resent:
            self._outbox.append(handshake.confirms[opened.epoch])
        self._refresh_stats()
        return events

    @staticmethod
    def _is_resent_confirm(
        handshake: Handshake, opened: Opened, payload: Payload
    ) -> bool:
        """A CONFIRM past counter 0 in an epoch we already send in (5.6, 9.2).

        The peer resends CONFIRM only while no record of ours in that epoch
        has reached it, so ours was lost or came too early: answer with our
        first CONFIRM, the same bytes at counter 0. A copy that arrives after
        all is a replay; a CONFIRM at counter 0 never asks for an answer, so
        two answers cannot answer each other.
        """
        assert handshake.channel is not None
        return (
            isinstance(payload, Confirm)
            and opened.counter > 0
            and handshake.confirmed
            and opened.epoch == handshake.channel.send_epoch
            and opened.epoch in handshake.confirms
        )

    @staticmethod
    def _keep_confirm(handshake: Handshake, epoch: int, frame: bytes) -> None:
        # Two epochs suffice: the current one and the one before the switch.
        handshake.confirms[epoch] = frame
        for old in sorted(handshake.confirms)[:-2]:
            del handshake.confirms[old]

    def _open(self, frame: bytes) -> tuple[Handshake, Opened, Payload]:
        """Open with the live channel, else with a candidate's (section 5.4)."""
        live = self._live
        assert live is not None and live.channel is not None
        try:
            opened = live.channel.open(frame, self._now)
            handshake = live
        except PeerError as exc:
            candidate = self._candidate
            if exc.fatal or candidate is None or candidate.channel is None:
                raise
            try:
                opened = candidate.channel.open(frame, self._now)
            except PeerError:
                raise exc from None
            handshake = candidate

        payload = parse_payload(opened.plaintext)
        if self._observer is not None and self._narrate_records:
            self._teach(
                "open",
                epoch=str(opened.epoch),
                counter=str(opened.counter),
                padded_size=str(len(frame) - 30),
                plaintext=opened.plaintext.hex(),
            )
        return handshake, opened, payload

    def _confirm(self, handshake: Handshake) -> list[Event]:
        # Any authenticated record proves the peer holds the same keys.
        if handshake.confirmed:
            return []
        handshake.confirmed = True
        assert handshake.peer is not None
        events: list[Event] = []
        if handshake is self._candidate:
            self._live, self._candidate = handshake, None
            self._rekey, self._peer_rekeys = None, {}
            events.append(PeerRestarted())
        self.safety_number = safety_number(self._identity.public, handshake.peer)
        self._teach("established", safety_number=self.safety_number)
        events.append(Established(handshake.peer, self.safety_number))
        return events

    def _deliver(self, channel: Channel, epoch: int, payload: Payload) -> list[Event]:
        if isinstance(payload, Text):
            # An exhausted epoch loses the receipt, never the message.
            with contextlib.suppress(CounterExhausted):
                self._seal(channel, Receipt(payload.message_id))
            return [MessageReceived(payload.message_id, payload.text)]
        if isinstance(payload, Receipt):
            return [ReceiptReceived(payload.message_id)]
        if isinstance(payload, Profile):
            return [ProfileReceived(payload.nickname)]
        if isinstance(payload, Rekey):
            self._accept_rekey(channel, epoch, payload)
            return []
        if isinstance(payload, Close):
            self._erase(SessionState.CLOSED)
            return [PeerClosed(payload.reason)]
        return []

    def _send_payload(self, arg: object) -> list[Event]:
        assert isinstance(arg, Text | Profile)
        channel = self.channel
        assert channel is not None
        if self._now - channel.sending.started >= REJECT_AFTER_SECONDS:
            raise NotEstablished(
                "the epoch is too old to send in; a new handshake is running"
            )
        self._seal(channel, arg)
        if channel.sending.send_counter >= REKEY_AFTER_MESSAGES:
            self._start_rekey()
        self._refresh_stats()
        return []

    def _seal(
        self, channel: Channel, payload: Payload, epoch: int | None = None
    ) -> None:
        plaintext = encode_payload(payload)
        frame = channel.seal(plaintext, epoch)
        self._outbox.append(frame)
        if self._observer is not None and self._narrate_records:
            self._teach(
                "seal",
                epoch=str(int.from_bytes(frame[2:6], "big")),
                counter=str(int.from_bytes(frame[6:14], "big")),
                plaintext=plaintext.hex(),
                padded=pad(plaintext).hex(),
                padded_size=str(len(frame) - 30),
                nonce=record_nonce(
                    int.from_bytes(frame[2:6], "big"),
                    int.from_bytes(frame[6:14], "big"),
                    channel.role,
                ).hex(),
                ciphertext=frame[14:].hex(),
            )

    # -- rekeying (protocol.md section 9) ------------------------------------

    def _start_rekey(self, _arg: object = None) -> list[Event]:
        channel = self.channel
        if self._rekey is not None or channel is None:
            return []
        new_epoch = channel.send_epoch + 1
        rekey = _Rekey(
            new_epoch, self._random(32), self._now + REKEY_RETRANSMIT_SECONDS
        )

        # An epoch that can seal no more cannot rekey: tick() re-handshakes.
        try:
            self._seal(channel, Rekey(new_epoch, rekey.public))
        except CounterExhausted:
            return []
        self._rekey = rekey
        self._teach("rekey", epoch=str(new_epoch), public=rekey.public.hex())
        return []

    def _check_rekey(self, channel: Channel, epoch: int, rekey: Rekey) -> None:
        """Refuse a contradictory REKEY before anything changes (R6; fatal)."""
        agreed = self._peer_rekeys.get(rekey.new_epoch)
        if agreed is not None and agreed != rekey.public:
            raise MalformedFrame("a second, different REKEY for one epoch", fatal=True)
        if agreed is not None:
            return
        if rekey.new_epoch != channel.send_epoch + 1 or epoch != channel.send_epoch:
            raise MalformedFrame(
                f"REKEY to epoch {rekey.new_epoch} in epoch {epoch} "
                f"while we send in {channel.send_epoch}",
                fatal=True,
            )
        if not is_canonical_point(rekey.public):
            raise MalformedFrame("REKEY key is not a canonical point", fatal=True)
        ours = self._rekey
        if ours is not None and rekey.public == ours.public:
            raise MalformedFrame("REKEY carries our own key", fatal=True)

    def _accept_rekey(self, channel: Channel, epoch: int, rekey: Rekey) -> None:
        # A retransmission repeats a key already taken in: a no-op (9.2).
        if rekey.new_epoch in self._peer_rekeys:
            return
        if self._rekey is None:
            self._start_rekey()
        ours = self._rekey
        if ours is None or ours.private is None:
            return

        # Both keys known: derive root_{n+1}, install its keys, confirm it.
        try:
            shared = schedule.x25519(ours.private.reveal(), rekey.public)
        except MalformedFrame as exc:
            raise MalformedFrame(str(exc), fatal=True) from exc
        f_lo, f_hi = sorted((ours.public, rekey.public))
        root = schedule.rekey_root(
            channel.root.reveal(), shared, f_lo, f_hi, rekey.new_epoch
        )
        channel.install(rekey.new_epoch, root, self._now)
        ours.private, ours.installed = None, rekey.public
        self._remember_peer_rekey(rekey)
        self._seal(channel, Confirm(), rekey.new_epoch)
        assert self._live is not None
        self._keep_confirm(self._live, rekey.new_epoch, self._outbox[-1])
        if self._observer is not None:
            self._teach(
                "rekey",
                epoch=str(rekey.new_epoch),
                root=short_hash(root),
                **_key_hashes(channel.epochs[rekey.new_epoch]),
            )

    def _remember_peer_rekey(self, rekey: Rekey) -> None:
        # The last two agreed keys suffice: older epochs are forgotten.
        self._peer_rekeys[rekey.new_epoch] = rekey.public
        for old in sorted(self._peer_rekeys)[:-2]:
            del self._peer_rekeys[old]

    def _maybe_switch(self, channel: Channel, epoch: int) -> list[Event]:
        # An authenticated record of epoch n+1: the peer has switched, so do we.
        if epoch != channel.send_epoch + 1:
            return []
        ours = self._rekey
        assert ours is not None and ours.installed is not None
        channel.switch(self._now)
        self._rekey = None
        self.stats.rekeys += 1
        return [Rekeyed(channel.send_epoch)]

    def _tick_rekey(self, channel: Channel, now: float) -> None:
        sending = channel.sending
        age = now - sending.started
        exhausted = sending.send_counter >= REJECT_AFTER_MESSAGES

        # Too old or used up: only a fresh handshake helps (section 9.4).
        if age >= REJECT_AFTER_SECONDS or exhausted:
            if self._candidate is None:
                self._candidate = self._new_handshake()
                self._send_hello(self._candidate, None)
            return
        if sending.send_counter >= REKEY_AFTER_MESSAGES or age >= REKEY_AFTER_SECONDS:
            self._start_rekey()

        # Until the switch, resend REKEY and the new CONFIRM (section 9.2).
        ours = self._rekey
        if ours is not None and now >= ours.retransmit_at:
            ours.retransmit_at = now + REKEY_RETRANSMIT_SECONDS
            with contextlib.suppress(CounterExhausted):
                self._seal(channel, Rekey(ours.new_epoch, ours.public))
            if ours.installed is not None:
                self._seal(channel, Confirm(), ours.new_epoch)

    # -- bookkeeping ---------------------------------------------------------

    def _refresh_stats(self) -> None:
        channel = self.channel
        if channel is None:
            return
        self.stats.epoch = channel.send_epoch
        self.stats.sent_in_epoch = channel.sending.send_counter
        self.stats.received_in_epoch = channel.sending.received

    def _teach(self, step: str, **fields: str) -> None:
        # Callers guard fields that cost work (fingerprints, hashes) with the
        # same test, so a session without an observer pays nothing for them.
        if self._observer is not None:
            self._observer(TeachingEvent(step, self._side, fields))
