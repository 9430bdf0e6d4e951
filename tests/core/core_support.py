"""Shared helpers for the protocol core's tests: sessions, a fake link, snapshots."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

from hypothesis import settings

from chat.core import Event, Identity, RoomKeys, Session, SessionState
from chat.core.secrets import Secret

ROOM = RoomKeys.from_secret(bytes(range(32)))
ALICE = Identity.from_seed(b"A" * 32)
BOB = Identity.from_seed(b"B" * 32)
MALLORY = Identity.from_seed(b"M" * 32)


class Drbg:
    """Deterministic random bytes: SHA-256 in counter mode over a seed."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            block = self._seed + self._counter.to_bytes(8, "big")
            out += hashlib.sha256(block).digest()
            self._counter += 1
        return out[:size]


def make_session(
    identity: Identity = ALICE,
    room: RoomKeys = ROOM,
    now: float = 0.0,
    seed: bytes | None = None,
    **kwargs: Any,
) -> Session:
    """A session with deterministic randomness."""
    random = Drbg(seed if seed is not None else identity.public.key)
    return Session(identity, room, now=now, random=random, **kwargs)


def pump(a: Session, b: Session, now: float) -> tuple[list[Event], list[Event]]:
    """Deliver every queued frame both ways, in order, until both are quiet."""
    events_a: list[Event] = []
    events_b: list[Event] = []
    while True:
        to_b, to_a = a.frames_to_send(), b.frames_to_send()
        if not to_a and not to_b:
            return events_a, events_b
        for frame in to_b:
            events_b += b.receive(frame, now)
        for frame in to_a:
            events_a += a.receive(frame, now)


def established(now: float = 0.0) -> tuple[Session, Session]:
    """Alice and Bob after a completed handshake started by Alice."""
    alice, bob = make_session(ALICE, now=now), make_session(BOB, now=now)
    alice.start()
    pump(alice, bob, now)
    assert alice.state is SessionState.ESTABLISHED
    assert bob.state is SessionState.ESTABLISHED
    return alice, bob


def snapshot(obj: object) -> Any:
    """A comparable picture of every piece of protocol state under ``obj``.

    Statistics, the observer and the random source are left out: counting a
    rejected frame is not a change of protocol state.
    """
    return _walk(obj, set())


_SKIP = {"stats", "_observer", "_random", "_now"}


def _walk(obj: object, seen: set[int]) -> Any:
    if isinstance(obj, (int, float, str, bytes, bool, type(None))):
        return obj
    if isinstance(obj, Secret):
        return ("secret", obj.reveal())
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if id(obj) in seen:
        return ("cycle", type(obj).__name__)
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        return {k: _walk(v, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, deque)):
        return [_walk(v, seen) for v in obj]
    if isinstance(obj, Callable):  # type: ignore[arg-type]
        return ("callable",)
    fields: dict[str, Any] = {}
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names += list(getattr(klass, "__slots__", ()))
    for name in names:
        if name in _SKIP or not hasattr(obj, name):
            continue
        fields[name] = _walk(getattr(obj, name), seen)
    return (type(obj).__name__, fields)


#: Hypothesis settings for this suite: enough examples to find a byte that
#: slips through, few enough to keep the suite well under a minute.
FAST = settings(max_examples=60, deadline=None)


def answered(initiator: Session, responder: Session) -> tuple[bytes, bytes]:
    """Start ``initiator`` and let ``responder`` answer; return its HELLO, AUTH."""
    initiator.start()
    responder.receive(initiator.frames_to_send()[0], 0)
    hello, auth = responder.frames_to_send()
    return hello, auth
