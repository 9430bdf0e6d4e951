"""Teaching events narrate a session with the caller's label and known steps."""

from __future__ import annotations

from chat.core import TeachingEvent
from chat.core.teaching import STEPS
from tests.core.core_support import ALICE, BOB, make_session, pump


def narrate(*, records: bool = True) -> list[TeachingEvent]:
    seen: list[TeachingEvent] = []
    alice = make_session(
        ALICE, observer=seen.append, side="alice", narrate_records=records
    )
    bob = make_session(BOB, observer=seen.append, side="bob", narrate_records=records)
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


def test_records_are_not_narrated_unless_asked() -> None:
    # "seal" and "open" carry plaintext: only the demo asks for them.
    steps = {event.step for event in narrate(records=False)}
    assert "established" in steps
    assert not steps & {"seal", "open"}
