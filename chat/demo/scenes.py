"""The demonstration itself: a real relay, two real clients, seven steps.

Everything runs in one process and one event loop: the project's relay
(``server.relay.Relay``) on a free loopback port with its data in a temporary
directory, one :class:`~chat.demo.tap.Tap` per person in front of it, and two
:class:`~chat.client.ChatClient` instances, Alice and Bob, each with its own
identity, trust store and real protocol core sessions. Nothing is replayed
from a script: every value shown comes from the cores' teaching events, the
clients' events, or the envelopes that crossed the taps.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.utils

from chat import envelope
from chat.client import ChatClient, ClientEvent
from chat.core.errors import MalformedFrame
from chat.core.frames import frame_kind
from chat.core.identity import Identity
from chat.core.limits import PREVIOUS_EPOCH_GRACE_SECONDS
from chat.core.rooms import RoomKeys
from chat.core.teaching import TeachingEvent
from chat.demo.narration import Narration, Pause
from chat.demo.tap import BitFlipper, Crossing, KeySwapper, Tap
from chat.transport import connect_relay
from chat.trust import TrustStore
from server.config import RelayConfig
from server.relay import Relay

__all__ = ["DEADLINE_SECONDS", "Demo", "DemoError", "run_demo"]

DEADLINE_SECONDS = 10.0
"""Longest wait for any one thing to happen before the demo gives up."""

RELAY_IDLE_SECONDS = 3600.0
"""The relay's idle timeout here: a presenter may pause for a long time."""

FIRST_MESSAGE = "Meet me at the old oak at noon."
SECOND_MESSAGE = "Bring the map."
THIRD_MESSAGE = "New keys, same conversation."


class DemoError(Exception):
    """Something the demonstration waits for did not happen in time."""


@dataclass
class Person:
    """One participant: a real client, and everything it reported."""

    name: str
    identity: Identity
    tap: Tap
    client: ChatClient | None = None
    task: asyncio.Task[None] | None = None
    events: list[ClientEvent] = field(default_factory=list)
    teaching: list[TeachingEvent] = field(default_factory=list)
    address: bytes = b""


class Demo:
    """Runs the seven steps and narrates them.

    Args:
        narration: receives every record.
        pause: awaited before each step after the first (the presenter's
            Enter), or None to run straight through.
        identities: Alice's and Bob's identities (fresh ones if None).
        room_secret: the secret of their room (a fresh one if None).

    What it records (crossings, events) grows only with its fixed script:
    a few hundred entries, whatever the length of a pause.

    Attributes:
        room: the keys of the room Alice and Bob talk in (for tests).
        failures: what went wrong, empty when every check passed.
    """

    def __init__(
        self,
        narration: Narration,
        *,
        pause: Pause | None = None,
        identities: tuple[Identity, Identity] | None = None,
        room_secret: bytes | None = None,
    ) -> None:
        self.narration = narration
        self._pause = pause
        alice, bob = identities or (Identity.generate(), Identity.generate())
        self._identities = {"alice": alice, "bob": bob}
        self.room = RoomKeys.from_secret(room_secret or RoomKeys.new_secret())
        self._changed = asyncio.Event()
        self._crossings: list[Crossing] = []
        self._people: dict[str, Person] = {}
        self._extra: list[Person] = []
        self._clock_offset = 0.0
        self._names: dict[bytes, str] = {}
        self._message: Crossing | None = None
        self.failures: list[str] = []

    # -- running -------------------------------------------------------------

    async def run(self) -> bool:
        """Run the demonstration; return True if every check passed."""
        with tempfile.TemporaryDirectory(prefix="saltchat-demo-") as data_dir:
            config = RelayConfig(
                port=0, data_dir=data_dir, idle_timeout=RELAY_IDLE_SECONDS
            ).check()
            relay = Relay(config)
            await relay.start()
            try:
                await self._run_steps(relay.url)
            except DemoError as exc:
                self.failures.append(str(exc))
            finally:
                await self._shutdown()
                await relay.stop()
        self._finish()
        return not self.failures

    async def _run_steps(self, relay_url: str) -> None:
        for name, identity in self._identities.items():
            tap = Tap(name, relay_url, self._crossed)
            await tap.start()
            self._people[name] = Person(name, identity, tap)
        self._introduce(relay_url)

        mark = await self._handshake()
        await self._step(1, "Each side makes its key pairs", self._step_keys, mark)
        await self._step(2, "What crosses the relay", self._step_wire, mark)
        await self._step(3, "Diffie-Hellman: one shared secret", self._step_dh, mark)
        await self._step(4, "Key derivation", self._step_derive, mark)
        await self._step(5, "A message", self._step_message)
        await self._step(6, "Three attacks by a meddling relay", self._step_attacks)
        await self._step(7, "Rekeying: new keys, old ones forgotten", self._step_rekey)

    async def _step(
        self, number: int, title: str, body: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        if self._pause is not None and number > 1:
            self.narration.emit("pause", next=number)
            await self._pause(number)
        self.narration.begin(number, title)
        await body(*args)

    def _introduce(self, relay_url: str) -> None:
        self.narration.begin(0, "saltchat: two strangers agree on a secret")
        self.narration.say(
            f"A real relay is listening on {relay_url}. Alice and Bob are two "
            "real saltchat clients in this process, each with its own identity "
            "key. Each reaches the relay through a tap that shows every byte "
            "the relay receives and forwards, and that can play a hostile "
            "relay later on. They share a room secret (an invite code); the "
            "relay knows only the room's id."
        )

    def _finish(self) -> None:
        ok = not self.failures
        summary = (
            "The relay forwarded every byte and learned no key and no text."
            if ok
            else "; ".join(self.failures)
        )
        self.narration.emit("end", ok=ok, failures=list(self.failures), summary=summary)

    # -- people, clocks and waiting -------------------------------------------

    def _clock(self) -> float:
        return time.monotonic() + self._clock_offset

    def _crossed(self, crossing: Crossing) -> None:
        self._crossings.append(crossing)
        self._changed.set()

    def _join(self, person: Person, room: RoomKeys) -> None:
        """Start ``person``'s client in ``room``, through its tap."""
        token = nacl.utils.random(envelope.TOKEN_SIZE)
        person.address = envelope.mailbox_address(token)
        self._names[person.address] = person.name
        url = person.tap.url

        def observe(event: TeachingEvent) -> None:
            person.teaching.append(event)
            self._changed.set()

        def emit(event: ClientEvent) -> None:
            person.events.append(event)
            self._changed.set()

        person.client = ChatClient(
            identity=person.identity,
            room=room,
            nick=person.name,
            trust=TrustStore(None),
            connect=lambda: connect_relay(url, room.room_id, token),
            emit=emit,
            observer=observe,
            narrate_records=True,
            clock=self._clock,
        )
        person.task = asyncio.create_task(person.client.run())

    async def _leave(self, person: Person) -> None:
        if person.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(person.client.close(), DEADLINE_SECONDS)
        if person.task is not None:
            person.task.cancel()
            with contextlib.suppress(BaseException):
                await person.task
        person.client, person.task = None, None

    async def _shutdown(self) -> None:
        for person in [*self._extra, *self._people.values()]:
            await self._leave(person)
        for person in self._people.values():
            await person.tap.close()

    async def _until(self, what: str, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, re-checking after every change.

        Raises:
            DemoError: it did not hold within DEADLINE_SECONDS.
        """
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise DemoError(f"timed out waiting for {what}") from None

    def _client_event(self, person: Person, name: str, **fields: Any) -> bool:
        return any(
            event.event == name
            and all(event.fields.get(k) == v for k, v in fields.items())
            for event in person.events
        )

    def _settled(self, alice: Person, bob: Person) -> bool:
        # Every record one side sealed has been opened by the other.
        def count(person: Person, step: str) -> int:
            return sum(1 for event in person.teaching if event.step == step)

        return count(alice, "seal") == count(bob, "open") and count(
            bob, "seal"
        ) == count(alice, "open")

    @property
    def _alice(self) -> Person:
        return self._people["alice"]

    @property
    def _bob(self) -> Person:
        return self._people["bob"]

    def _marks(self) -> dict[str, int]:
        marks = {name: len(p.teaching) for name, p in self._people.items()}
        marks["relay"] = len(self._crossings)
        return marks

    def _since(
        self, person: Person, mark: dict[str, int], step: str
    ) -> list[TeachingEvent]:
        return [e for e in person.teaching[mark[person.name] :] if e.step == step]

    # -- steps 1 to 4: the handshake ------------------------------------------

    async def _handshake(self) -> dict[str, int]:
        """Bob joins, then Alice; wait until both hold a confirmed session."""
        mark = self._marks()
        alice, bob = self._alice, self._bob
        self._join(bob, self.room)
        await self._until("Bob to join", lambda: self._client_event(bob, "ready"))
        self._join(alice, self.room)
        await self._until(
            "a secure session on both sides",
            lambda: (
                self._client_event(alice, "secure", peer="bob")
                and self._client_event(bob, "secure", peer="alice")
            ),
        )
        await self._until("the last records", lambda: self._settled(alice, bob))
        return mark

    def _teach_all(self, mark: dict[str, int], steps: set[str]) -> None:
        for person in (self._alice, self._bob):
            for event in person.teaching[mark[person.name] :]:
                if event.step in steps:
                    self.narration.teach(person.name, event)

    async def _step_keys(self, mark: dict[str, int]) -> None:
        self._teach_all(mark, {"identity", "ephemeral"})
        say = self.narration.say
        say(
            "Each side has a long-term identity key pair (Ed25519) and, for "
            "this conversation only, a fresh ephemeral key pair (X25519). "
            "Public keys are shown in hex. Secret keys never leave the "
            "protocol core and are never shown."
        )
        for person in (self._alice, self._bob):
            public = person.identity.public
            self.narration.value(person.name, "identity key", public.key.hex())
            self.narration.value(person.name, "fingerprint", public.fingerprint())
            for event in self._since(person, mark, "ephemeral"):
                self.narration.value(
                    person.name, "ephemeral key", event.fields["ephemeral"]
                )
        say(
            "Each side starts a handshake as soon as it sees the other in the "
            "room; a side that has to start again makes a new ephemeral key."
        )

    async def _step_wire(self, mark: dict[str, int]) -> None:
        self._teach_all(mark, {"hello-sent", "hello-received"})
        self.narration.say(
            "These are the envelopes the relay forwarded, byte for byte. A "
            "DELIVER starts 01 84 (version, type), then the room id (32 "
            "bytes), the sender's address (32) and a frame id (8): that "
            "routing header is all the relay reads. The frame after it is "
            "opaque to the relay."
        )
        for crossing in self._crossings[mark["relay"] :]:
            self._relay_record(crossing)
        self.narration.say(
            "The relay saw the two ephemeral public keys (in the HELLO frames) "
            "and boxes it cannot open: AUTH (114 bytes) carries each identity "
            "key and signature, sealed with a key that needs the room key; "
            "RECORDs (286 bytes, padded) carry the key confirmation, the "
            "nicknames and receipts. No identity key, no name, no text."
        )

    def _relay_record(self, crossing: Crossing, meddled: str | None = None) -> None:
        message = crossing.message
        fields: dict[str, Any] = {
            "person": crossing.person,
            "direction": crossing.direction,
            "envelope": type(message).__name__.upper() if message else "UNKNOWN",
            "size": len(crossing.data),
            "hex": crossing.data.hex(),
            "meddled": meddled or crossing.meddled,
            "sender": None,
            "frame": None,
            "frame_size": None,
            "frame_hex": None,
        }
        payload = None
        if isinstance(message, envelope.Deliver):
            payload = message.payload
            fields["sender"] = self._names.get(message.sender, "someone")
        elif isinstance(message, envelope.Send):
            payload = message.payload
        if payload is not None:
            fields["frame_size"] = len(payload)
            fields["frame_hex"] = payload.hex()
            with contextlib.suppress(MalformedFrame):
                fields["frame"] = frame_kind(payload)
            if fields["frame"] == "record":
                fields["epoch"] = int.from_bytes(payload[2:6], "big")
                fields["counter"] = int.from_bytes(payload[6:14], "big")
        self.narration.emit("relay", **fields)

    async def _step_dh(self, mark: dict[str, int]) -> None:
        self._teach_all(mark, {"shared-secret"})
        self.narration.say(
            "Each side combines its own ephemeral secret key with the other's "
            "public key (X25519). The results are equal, though the secret "
            "itself never crossed the relay. A short hash shows that they are "
            "equal without revealing it."
        )
        results = {}
        for person in (self._alice, self._bob):
            events = self._since(person, mark, "shared-secret")
            results[person.name] = events[-1].fields["dh"] if events else None
            self.narration.value(
                person.name, "X25519 result", str(results[person.name]), secret=True
            )
        if not self.narration.check("shared secret", results["alice"], results["bob"]):
            self.failures.append("the two Diffie-Hellman results differ")

    async def _step_derive(self, mark: dict[str, int]) -> None:
        self._teach_all(mark, {"keys", "auth", "established", "seal", "open"})
        self.narration.say(
            "From the shared secret, the room key and a hash of both ephemeral "
            "keys (the transcript) each side derives AUTH keys, proves its "
            "identity inside AUTH, then derives the root key and one record "
            "key per direction. Alice's sending key is Bob's receiving key."
        )
        for person in (self._alice, self._bob):
            for event in self._since(person, mark, "keys"):
                if "transcript" in event.fields:
                    self.narration.value(
                        person.name, "transcript", event.fields["transcript"]
                    )
        checks = [self._check_keys(self._show_keys(mark, "keys", ""), "")]
        numbers = {}
        for person in (self._alice, self._bob):
            events = self._since(person, mark, "established")
            numbers[person.name] = (
                events[-1].fields["safety_number"] if events else None
            )
        self.narration.say(
            "The safety number is made from both identity keys. Alice and Bob "
            "can read it to each other (in person, on a call): if a relay had "
            "put itself in the middle, the numbers would differ."
        )
        for name, number in numbers.items():
            self.narration.value(name, "safety number", str(number))
        checks.append(
            self.narration.check("safety number", numbers["alice"], numbers["bob"])
        )
        if not all(checks):
            self.failures.append("the two sides derived different keys")

    def _show_keys(
        self, mark: dict[str, int], step: str, prefix: str
    ) -> dict[str, dict[str, str]]:
        """Show each side's root and record keys (short hashes) from ``step``."""
        derived: dict[str, dict[str, str]] = {}
        for person in (self._alice, self._bob):
            fields: dict[str, str] = {}
            for event in self._since(person, mark, step):
                fields.update(event.fields)
            derived[person.name] = fields
            for name in ("root", "send_key", "receive_key"):
                label = prefix + name.replace("_", " ")
                value = fields.get(name, "none")
                self.narration.value(person.name, label, value, secret=True)
        return derived

    def _check_keys(self, derived: dict[str, dict[str, str]], prefix: str) -> bool:
        """Check that both sides hold one root and one key per direction."""
        alice, bob = derived["alice"], derived["bob"]
        pairs = [
            ("root key", alice.get("root"), bob.get("root")),
            ("alice-to-bob key", alice.get("send_key"), bob.get("receive_key")),
            ("bob-to-alice key", bob.get("send_key"), alice.get("receive_key")),
        ]
        results = [self.narration.check(prefix + n, a, b) for n, a, b in pairs]
        return all(results)

    # -- step 5: a message ----------------------------------------------------

    async def _send(self, sender: Person, receiver: Person, text: str) -> str:
        """Send ``text`` and wait until the receiver shows it; return its id."""
        assert sender.client is not None
        message_id = sender.client.send_message(text)
        await self._until(
            f"{receiver.name} to receive a message",
            lambda: self._client_event(receiver, "message", id=message_id),
        )
        await self._until("the receipt", lambda: self._settled(sender, receiver))
        return message_id

    def _sealed(self, person: Person, message_id: str) -> TeachingEvent:
        # A TEXT payload is 0x01 0x02 message_id[16] text (protocol.md section 7.4).
        for event in person.teaching:
            if event.step == "seal" and event.fields["plaintext"][4:36] == message_id:
                return event
        raise DemoError(f"{person.name} sealed no record for message {message_id}")

    def _delivered(self, to: Person, sealed: TeachingEvent) -> Crossing:
        """The DELIVER that carried the record ``sealed`` describes."""
        epoch, counter = int(sealed.fields["epoch"]), int(sealed.fields["counter"])
        header = bytes((1, 3)) + epoch.to_bytes(4, "big") + counter.to_bytes(8, "big")
        for crossing in self._crossings:
            message = crossing.message
            if (
                crossing.person == to.name
                and crossing.meddled is None
                and isinstance(message, envelope.Deliver)
                and message.payload[:14] == header
            ):
                return crossing
        raise DemoError(f"the relay never delivered record {epoch}/{counter}")

    async def _step_message(self) -> None:
        alice, bob = self._alice, self._bob
        mark = self._marks()
        message_id = await self._send(alice, bob, FIRST_MESSAGE)
        sealed = self._sealed(alice, message_id)
        self.narration.teach("alice", sealed)
        self._teach_all(mark, {"open"})
        self._show_sealed(sealed)

        self.narration.say(
            "The relay sees only the sealed record: the header (version, type, "
            "epoch, counter) in the clear, then 272 bytes it cannot read (the "
            "16-byte tag and the encrypted padded payload)."
        )
        delivered = self._delivered(bob, sealed)
        self._relay_record(delivered)
        self._message = delivered
        self.narration.say(
            "Bob opens it with his receiving key (equal to Alice's sending "
            "key), checks the tag, removes the padding and reads:"
        )
        shown = [e for e in bob.events if e.event == "message"][-1].fields["text"]
        self.narration.value("bob", "text", repr(shown))
        if not self.narration.check("message text", FIRST_MESSAGE, shown):
            self.failures.append("Bob did not read what Alice wrote")

    def _show_sealed(self, sealed: TeachingEvent) -> None:
        """Show what Alice's core sealed: the teaching output shows it on purpose."""
        plaintext = bytes.fromhex(sealed.fields["plaintext"])
        padded_size = int(sealed.fields["padded_size"])
        padded = plaintext + b"\x80" + bytes(padded_size - len(plaintext) - 1)
        ciphertext = sealed.fields["ciphertext"]
        value = self.narration.value
        self.narration.say(
            "Alice types a message. Her client wraps it in a TEXT payload "
            "(version, type, a 16-byte message id, the UTF-8 text), pads it to "
            "256 bytes so the relay cannot tell short texts apart, and seals "
            "it with her sending key under a nonce made of the record header "
            "(epoch, counter) and her role."
        )
        value("alice", "text", repr(FIRST_MESSAGE))
        value("alice", f"payload ({len(plaintext)} bytes)", plaintext.hex())
        value("alice", f"padded ({len(padded)} bytes)", padded.hex())
        self.narration.say(
            f"Padded: the {len(plaintext)}-byte payload, one 0x80 byte, then "
            f"{len(padded) - len(plaintext) - 1} zero bytes. Nonce: 01 03, "
            "Alice's role byte, the epoch and counter from the header, nine "
            "zero bytes."
        )
        value("alice", "nonce (24 bytes)", sealed.fields["nonce"])
        value("alice", f"ciphertext ({len(ciphertext) // 2} bytes)", ciphertext)

    # -- step 6: attacks -------------------------------------------------------

    def _rejection(self, person: Person, start: int) -> TeachingEvent | None:
        for event in person.teaching[start:]:
            if event.step == "rejected":
                return event
        return None

    async def _expect_rejection(
        self, attack: str, person: Person, start: int, expected: str
    ) -> None:
        """Wait for ``person``'s core to reject a frame; record the verdict."""
        with contextlib.suppress(DemoError):
            await self._until(
                f"{person.name} to reject the {attack}",
                lambda: self._rejection(person, start) is not None,
            )
        event = self._rejection(person, start)
        fields = {} if event is None else dict(event.fields)
        if event is not None:
            self.narration.teach(person.name, event)
        kind = fields.get("kind")
        self.narration.emit(
            "attack",
            attack=attack,
            receiver=person.name,
            rejected=event is not None,
            kind=kind,
            expected=expected,
            reason=fields.get("reason", ""),
            fatal=fields.get("fatal") == "True",
        )
        if event is None:
            self.failures.append(f"the {attack} was not rejected")
        elif kind != expected:
            self.failures.append(f"the {attack} was rejected as {kind}, not {expected}")

    async def _step_attacks(self) -> None:
        self.narration.say(
            "The relay now turns hostile. It cannot read anything, but it can "
            "send anything. Each time, Bob's real protocol core decides."
        )
        await self._attack_replay()
        await self._attack_flip()
        await self._attack_swap()

    def _first_frame(self) -> bytes:
        if self._message is None:
            raise DemoError("the first message was never delivered")
        return self._message.data

    async def _attack_replay(self) -> None:
        bob = self._bob
        self.narration.say(
            "Attack 1, a replayed frame: the relay delivers Alice's message a "
            "second time. Bob remembers a digest of every record it accepted "
            "(the replay window), so the copy is refused."
        )
        start = len(bob.teaching)
        await bob.tap.inject(self._first_frame(), "replay")
        self._relay_record(self._crossings[-1])
        await self._expect_rejection("replay", bob, start, "replay")

    async def _attack_flip(self) -> None:
        alice, bob = self._alice, self._bob
        self.narration.say(
            "Attack 2, a flipped bit: Alice sends another message, and the "
            "relay flips one bit of the ciphertext before it delivers it. The "
            "Poly1305 tag no longer matches; then the relay passes the genuine "
            "frame on, which Bob accepts."
        )
        assert alice.client is not None
        start = len(bob.teaching)
        first = len(self._crossings)
        message_id = alice.client.send_message(SECOND_MESSAGE)
        sealed = self._sealed(alice, message_id)
        self.narration.teach("alice", sealed)
        # The record header is the nonce without the role byte and the tail.
        nonce = bytes.fromhex(sealed.fields["nonce"])
        index = 14 + 16 + 4  # a byte of the encrypted payload, after the tag
        bob.tap.meddle = BitFlipper(bob.tap, nonce[:2] + nonce[3:15], index)
        await self._until(
            "Bob to receive the genuine message",
            lambda: self._client_event(bob, "message", id=message_id),
        )
        await self._until("the receipt", lambda: self._settled(alice, bob))
        for crossing in self._crossings[first:]:
            if crossing.meddled == "bit-flip":
                self._relay_record(crossing)
        self.narration.say(f"One bit of byte {index} of the frame was flipped.")
        await self._expect_rejection("bit-flip", bob, start, "forgery")
        self.narration.value("bob", "then reads", repr(SECOND_MESSAGE))

    async def _attack_swap(self) -> None:
        self.narration.say(
            "Attack 3, a relay in the middle: Alice and Bob start a new "
            "conversation (another room), and the relay replaces each "
            "ephemeral key in the HELLO frames with one of its own. It now "
            "shares a Diffie-Hellman secret with each of them, but the AUTH "
            "keys also need the room key, which the relay does not have: each "
            "side's AUTH fails to open on the other side, and no session is "
            "made."
        )
        room = RoomKeys.from_secret(RoomKeys.new_secret())
        swapper = KeySwapper(room.room_id)
        first = len(self._crossings)
        alice, bob = await self._swapped_handshake(room, swapper)

        for crossing in self._crossings[first:]:
            if crossing.meddled == "key-swap" and crossing.person == "bob":
                self._relay_record(crossing)
                break
        self._swap_verdict(alice, bob, swapper)
        await self._expect_rejection("key swap", alice, 0, "forgery")
        await self._expect_rejection("key swap", bob, 0, "forgery")
        self.narration.say(
            "Neither side accepted a session. Even a relay that had guessed "
            "the room key would fail: each AUTH is signed over both ephemeral "
            "keys, so the relay would have to sign with its own identity key, "
            "and the safety numbers would no longer match."
        )

    async def _swapped_handshake(
        self, room: RoomKeys, swapper: KeySwapper
    ) -> tuple[Person, Person]:
        """Alice and Bob meet in ``room`` through the swapping relay."""
        alice = Person("alice", self._alice.identity, self._alice.tap)
        bob = Person("bob", self._bob.identity, self._bob.tap)
        self._extra += [alice, bob]
        for person in (alice, bob):
            person.tap.meddle = swapper
        try:
            self._join(bob, room)
            await self._until("Bob to join", lambda: self._client_event(bob, "ready"))
            self._join(alice, room)
            await self._until(
                "both to reject an AUTH",
                lambda: (
                    self._rejection(alice, 0) is not None
                    and self._rejection(bob, 0) is not None
                ),
            )
        finally:
            for person in (alice, bob):
                person.tap.meddle = None
        await self._leave(alice)
        await self._leave(bob)
        return alice, bob

    def _swap_verdict(self, alice: Person, bob: Person, swapper: KeySwapper) -> None:
        # What each side computed, and the relay's matching secret with it.
        own = {p.name: self._first(p, "ephemeral") for p in (alice, bob)}
        for person, other in ((alice, bob), (bob, alice)):
            real, peer = own[person.name], own[other.name]
            received = self._first(person, "hello-received")
            self.narration.value(person.name, "own ephemeral key", real)
            self.narration.value(person.name, "key it received", received)
            shared = self._first(person, "shared-secret", "dh")
            self.narration.value(person.name, "X25519 result", shared, secret=True)
            relay = swapper.shared_hash(bytes.fromhex(real), bytes.fromhex(peer))
            self.narration.value(
                "relay", f"its secret with {person.name}", str(relay), secret=True
            )
        if any(self._first(p, "established", "safety_number") for p in (alice, bob)):
            self.failures.append("a session was made through the swapping relay")

    def _first(self, person: Person, step: str, name: str = "ephemeral") -> str:
        for event in person.teaching:
            if event.step == step and name in event.fields:
                return event.fields[name]
        return ""

    # -- step 7: rekeying -------------------------------------------------------

    async def _step_rekey(self) -> None:
        alice, bob = self._alice, self._bob
        assert alice.client is not None
        self.narration.say(
            "Alice asks for a new epoch. Each side sends a fresh ephemeral "
            "public key inside the channel; both derive a new root key from "
            "the old one and the new Diffie-Hellman result, switch to the new "
            "record keys, and drop the old root."
        )
        mark = self._marks()
        before = {p.name: self._rekeys(p) for p in (alice, bob)}
        alice.client.rekey()
        await self._until(
            "both sides to switch epochs",
            lambda: all(self._rekeys(p) > before[p.name] for p in (alice, bob)),
        )
        await self._until("the last records", lambda: self._settled(alice, bob))
        self._teach_all(mark, {"rekey"})
        for person in (alice, bob):
            for event in self._since(person, mark, "rekey"):
                if "public" in event.fields:
                    self.narration.value(
                        person.name, "new public key", event.fields["public"]
                    )
        derived = self._show_keys(mark, "rekey", "new ")
        if not self._check_keys(derived, "new "):
            self.failures.append(
                "the two sides derived different keys for the new epoch"
            )
        await self._replay_old()

    def _rekeys(self, person: Person) -> int:
        assert person.client is not None
        sessions = person.client.keys()["sessions"]
        return min((session["rekeys"] for session in sessions), default=0)

    async def _replay_old(self) -> None:
        alice, bob = self._alice, self._bob
        self.narration.say(
            "The relay replays Alice's first message, from epoch 0. For "
            f"{PREVIOUS_EPOCH_GRACE_SECONDS:.0f} seconds Bob keeps the old "
            "receiving key for records still in flight, and the replay window "
            "still knows the record:"
        )
        start = len(bob.teaching)
        await bob.tap.inject(self._first_frame(), "replay")
        await self._expect_rejection("replay into the new epoch", bob, start, "replay")

        self.narration.say(
            f"Then the grace time passes (the demo moves both clients' clocks "
            f"{PREVIOUS_EPOCH_GRACE_SECONDS:.0f} seconds on instead of waiting) "
            "and the old key is erased. The same frame again:"
        )
        self._clock_offset += PREVIOUS_EPOCH_GRACE_SECONDS + 1
        for person in (alice, bob):
            assert person.client is not None
            person.client.tick()
        start = len(bob.teaching)
        await bob.tap.inject(self._first_frame(), "replay")
        await self._expect_rejection("replay after the grace time", bob, start, "stale")

        message_id = await self._send(alice, bob, THIRD_MESSAGE)
        sealed = self._sealed(alice, message_id)
        self.narration.teach("alice", sealed)
        self.narration.say("New messages travel under the new keys:")
        self.narration.value("alice", "record epoch", sealed.fields["epoch"])
        self.narration.value("bob", "reads", repr(THIRD_MESSAGE))


async def run_demo(
    narration: Narration,
    *,
    pause: Pause | None = None,
    identities: tuple[Identity, Identity] | None = None,
) -> bool:
    """Run the whole demonstration; return True if every check passed."""
    return await Demo(narration, pause=pause, identities=identities).run()
