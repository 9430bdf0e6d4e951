"""Teaching events narrate a session with the caller's label and known steps."""

from __future__ import annotations

from core_support import ALICE, BOB, make_session, pump

from chat.core import TeachingEvent
from chat.core.teaching import STEPS


def narrate() -> list[TeachingEvent]:
    seen: list[TeachingEvent] = []
    alice = make_session(ALICE, observer=seen.append, side="alice")
    bob = make_session(BOB, observer=seen.append, side="bob")
    alice.start()
    pump(alice, bob, 0)
    alice.send_text("hello", 1)
    pump(alice, bob, 1)
    return seen


def test_every_step_is_a_known_one() -> None:
    assert {event.step for event in narrate()} <= set(STEPS)


def test_events_carry_the_callers_label() -> None:
    assert {event.side for event in narrate()} == {"alice", "bob"}


def test_both_sides_show_the_same_transcript() -> None:
    keys = [e.fields["transcript"] for e in narrate() if "transcript" in e.fields]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_seal_shows_nonce_and_ciphertext() -> None:
    seal = next(e for e in narrate() if e.step == "seal" and e.side == "alice")
    assert len(bytes.fromhex(seal.fields["nonce"])) == 24
    assert seal.fields["ciphertext"]
