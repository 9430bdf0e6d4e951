"""The code reproduces tests/vectors/session_v1.json byte for byte.

The replay below does not share code with scripts/make_vectors.py: it feeds
the recorded random bytes back in, performs each step, and compares every
queued frame, every event and every derived key (protocol.md section 18).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from chat.core import (
    Event,
    Identity,
    PeerError,
    RoomKeys,
    Session,
    SessionState,
    kdf,
    schedule,
    short_hash,
)
from chat.core.frames import is_canonical_point, parse_payload, unpad
from chat.core.rooms import room_name_password

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "session_v1.json").read_text()
)
KEYS = {name: bytes.fromhex(value) for name, value in VECTORS["keys"].items()}


def replayed_random(outputs: list[str]) -> Callable[[int], bytes]:
    queue = [bytes.fromhex(x) for x in outputs]

    def random(size: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == size
        return value

    return random


def event_json(event: Event) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": type(event).__name__}
    for name, value in vars(event).items():
        if isinstance(value, bytes):
            fields[name] = value.hex()
        elif hasattr(value, "key"):
            fields[name] = value.key.hex()
        else:
            fields[name] = value
    return fields


def sessions(run: dict[str, Any] = VECTORS) -> dict[str, Session]:
    """Alice and Bob, each drawing the random stream ``run`` recorded."""
    room = RoomKeys.from_secret(bytes.fromhex(VECTORS["room"]["room_secret"]))
    return {
        side: Session(
            Identity.from_seed(bytes.fromhex(VECTORS[side]["identity_seed"])),
            room,
            now=0.0,
            random=replayed_random(run[side]["random"]),
        )
        for side in ("alice", "bob")
    }


def test_room_values() -> None:
    room = RoomKeys.from_secret(bytes.fromhex(VECTORS["room"]["room_secret"]))
    assert room.room_id.hex() == VECTORS["room"]["room_id"]
    assert room.room_key.reveal().hex() == VECTORS["room"]["room_key"]


@pytest.mark.parametrize("side", ["alice", "bob"])
def test_identity_values(side: str) -> None:
    identity = Identity.from_seed(bytes.fromhex(VECTORS[side]["identity_seed"]))
    assert identity.public.key.hex() == VECTORS[side]["identity_public"]
    assert identity.public.fingerprint() == VECTORS[side]["fingerprint"]


def replay(run: dict[str, Any]) -> dict[str, Session]:
    """Perform every step of ``run``, checking its frames and events."""
    live = sessions(run)
    for number, step in enumerate(run["steps"]):
        session = live[step["side"]]
        events: list[Event] = []
        if step["action"] == "start":
            session.start()
        elif step["action"] == "send_profile":
            session.send_profile(step["nickname"], step["now"])
        elif step["action"] == "send_text":
            mid = session.send_text(step["text"], step["now"])
            assert mid.hex() == step["message_id"], number
        elif step["action"] == "rekey":
            session.rekey(step["now"])
        else:
            events = session.receive(bytes.fromhex(step["frame"]), step["now"])
        frames = [f.hex() for f in session.frames_to_send()]
        assert frames == step["frames"], f"step {number}: frames"
        assert [event_json(e) for e in events] == step["events"], f"step {number}"
    return live


def test_every_step_reproduces_its_frames_and_events() -> None:
    live = replay(VECTORS)
    assert live["alice"].safety_number == VECTORS["safety_number"]


def test_simultaneous_start_reproduces_its_frames_and_events() -> None:
    live = replay(VECTORS["simultaneous"])
    assert live["bob"].safety_number == VECTORS["safety_number"]


def test_simultaneous_run_starts_both_sides_before_any_delivery() -> None:
    # Section 18: both start() calls come first, so the fresh HELLOs cross.
    first = [(s["side"], s["action"]) for s in VECTORS["simultaneous"]["steps"][:2]]
    assert first == [("alice", "start"), ("bob", "start")]


def test_handshake_keys_follow_the_schedule() -> None:
    room_id = bytes.fromhex(VECTORS["room"]["room_id"])
    room_key = bytes.fromhex(VECTORS["room"]["room_key"])
    e_lo, e_hi = sorted((KEYS["alice_e"], KEYS["bob_e"]))
    assert (
        nacl.bindings.crypto_scalarmult(KEYS["alice_e_priv"], KEYS["bob_e"])
        == KEYS["dh"]
    )
    th = kdf.h64(kdf.label("sc1-transcript"), b"\x01" + room_id + e_lo + e_hi)
    assert th == KEYS["th"]
    hs = kdf.keyed_hash(room_key, kdf.label("sc1-hs-secret"), KEYS["dh"] + th)
    assert hs == KEYS["hs"]
    assert kdf.kdf(hs, kdf.label("sc1-auth-lo")) == KEYS["k_auth_lo"]
    assert kdf.kdf(hs, kdf.label("sc1-auth-hi")) == KEYS["k_auth_hi"]
    ik_a = bytes.fromhex(VECTORS["alice"]["identity_public"])
    ik_b = bytes.fromhex(VECTORS["bob"]["identity_public"])
    ik_lo, ik_hi = (ik_a, ik_b) if KEYS["alice_e"] == e_lo else (ik_b, ik_a)
    th2 = kdf.h64(kdf.label("sc1-transcript2"), th + ik_lo + ik_hi)
    assert th2 == KEYS["th2"]
    assert kdf.kdf(hs, kdf.label("sc1-root"), th2) == KEYS["root_0"]


def test_epoch_keys_follow_the_schedule() -> None:
    assert schedule.epoch_keys(KEYS["root_0"], 0) == (
        KEYS["epoch0_k_lo2hi"],
        KEYS["epoch0_k_hi2lo"],
    )
    f_lo, f_hi = sorted((KEYS["alice_f"], KEYS["bob_f"]))
    root_1 = kdf.keyed_hash(
        KEYS["root_0"],
        kdf.label("sc1-rekey"),
        KEYS["dh_rekey"] + f_lo + f_hi + (1).to_bytes(4, "big"),
    )
    assert root_1 == KEYS["root_1"]
    assert schedule.epoch_keys(root_1, 1) == (
        KEYS["epoch1_k_lo2hi"],
        KEYS["epoch1_k_hi2lo"],
    )


def test_first_record_opens_with_the_epoch_zero_key() -> None:
    # Alice's CONFIRM, opened by hand with the published key and nonce layout.
    confirm_step = next(
        s for s in VECTORS["steps"] if s["frames"] and s["frames"][0].startswith("0103")
    )
    frame = bytes.fromhex(confirm_step["frames"][0])
    sender_is_lo = KEYS["alice_e"] < KEYS["bob_e"]
    if confirm_step["side"] == "bob":
        sender_is_lo = not sender_is_lo
    key = KEYS["epoch0_k_lo2hi"] if sender_is_lo else KEYS["epoch0_k_hi2lo"]
    role = b"\x00" if sender_is_lo else b"\x01"
    nonce = frame[:2] + role + frame[2:14] + bytes(9)
    padded = nacl.bindings.crypto_secretbox_open_easy(frame[14:], nonce, key)
    assert padded == b"\x01\x01\x80" + bytes(253)


@pytest.mark.parametrize("case", VECTORS["room_names"], ids=lambda c: repr(c["name"]))
def test_room_name_vector(case: dict[str, str]) -> None:
    assert room_name_password(case["name"]).hex() == case["password"]
    room = RoomKeys.from_name(case["name"])
    assert room.room_id.hex() == case["room_id"]
    assert room.room_key.reveal().hex() == case["room_key"]


def test_unprotected_key_file_vector_is_what_save_writes(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    Identity.from_seed(bytes.fromhex(VECTORS["alice"]["identity_seed"])).save(path)
    assert json.loads(path.read_text()) == VECTORS["key_files"]["unprotected"]["file"]


def test_protected_key_file_vector_loads_with_its_passphrase(tmp_path: Path) -> None:
    vector = VECTORS["key_files"]["protected"]
    path = tmp_path / "id.json"
    path.write_text(json.dumps(vector["file"]))
    passphrase = vector["passphrase"].encode("utf-8")
    assert passphrase.hex() == vector["passphrase_utf8"]
    identity = Identity.load(path, passphrase=passphrase)
    assert identity.public.key.hex() == VECTORS["alice"]["identity_public"]


@pytest.mark.parametrize("case", VECTORS["short_hash"], ids=lambda c: c["name"])
def test_short_hash_vector(case: dict[str, str]) -> None:
    assert short_hash(bytes.fromhex(case["secret"])) == case["short_hash"]


@pytest.mark.parametrize("case", VECTORS["canonical"], ids=lambda c: c["name"])
def test_canonical_key_vector(case: dict[str, Any]) -> None:
    assert is_canonical_point(bytes.fromhex(case["key"])) is case["canonical"]


@pytest.mark.parametrize("case", VECTORS["negative"], ids=lambda c: c["name"])
def test_negative_vector_is_refused_with_its_kind(case: dict[str, str]) -> None:
    data = bytes.fromhex(case["input"])
    session = sessions()["bob"]
    with pytest.raises(PeerError) as caught:
        if case["layer"] == "frame":
            session.receive(data, 0.0)
        elif case["layer"] == "padded":
            unpad(data)
        else:
            parse_payload(data)
    assert caught.value.kind == case["kind"]
    assert not caught.value.fatal
    assert session.state is SessionState.IDLE


def test_vector_file_is_what_the_script_writes() -> None:
    # The script is deterministic, so the committed file must be its output.
    root = Path(__file__).resolve().parent.parent.parent
    script = root / "scripts" / "make_vectors.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
