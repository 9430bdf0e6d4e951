#!/usr/bin/env python3
"""Regenerate tests/vectors/session_v1.json deterministically.

Fixed identity seeds, a fixed room secret and a fixed stream of random bytes
per side go in; the exact frames of a full handshake, a PROFILE each way,
messages both ways, a rekey and messages after it come out (see
docs/protocol.md section 18).

Usage: python3 scripts/make_vectors.py [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.bindings  # noqa: E402

from chat.core import Event, Identity, RoomKeys, Session, schedule  # noqa: E402

OUTPUT = ROOT / "tests" / "vectors" / "session_v1.json"
ROOM_SECRET = bytes(range(32))
SEEDS = {"alice": bytes([0xA1]) * 32, "bob": bytes([0xB0]) * 32}


class RecordedRandom:
    """SHA-256 in counter mode over a label; remembers every output."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._counter = 0
        self.outputs: list[bytes] = []

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(
                self._label + self._counter.to_bytes(8, "big")
            ).digest()
            self._counter += 1
        self.outputs.append(out[:size])
        return out[:size]


def event_json(event: Event) -> dict[str, Any]:
    """An event as JSON: its type name and fields, bytes in hex."""
    fields: dict[str, Any] = {"type": type(event).__name__}
    for name, value in vars(event).items():
        if isinstance(value, bytes):
            fields[name] = value.hex()
        elif hasattr(value, "key"):
            fields[name] = value.key.hex()
        else:
            fields[name] = value
    return fields


class Run:
    """Two sessions, two FIFO links, and the list of steps taken."""

    def __init__(self) -> None:
        room = RoomKeys.from_secret(ROOM_SECRET)
        self.randoms = {side: RecordedRandom(side.encode()) for side in SEEDS}
        self.sessions = {
            side: Session(
                Identity.from_seed(seed), room, now=0.0, random=self.randoms[side]
            )
            for side, seed in SEEDS.items()
        }
        self.queues: dict[str, list[bytes]] = {"alice": [], "bob": []}
        self.steps: list[dict[str, Any]] = []

    def _record(self, side: str, step: dict[str, Any], events: list[Event]) -> None:
        frames = self.sessions[side].frames_to_send()
        other = "bob" if side == "alice" else "alice"
        self.queues[other] += frames
        step.update(
            side=side,
            events=[event_json(e) for e in events],
            frames=[f.hex() for f in frames],
        )
        self.steps.append(step)

    def act(self, side: str, action: str, now: float, text: str = "") -> None:
        session = self.sessions[side]
        step: dict[str, Any] = {"action": action, "now": now}
        if action == "start":
            session.start()
        elif action == "send_profile":
            step["nickname"] = text
            session.send_profile(text, now)
        elif action == "send_text":
            step["text"] = text
            step["message_id"] = session.send_text(text, now).hex()
        elif action == "rekey":
            session.rekey(now)
        self._record(side, step, [])

    def deliver_all(self, now: float) -> None:
        while self.queues["alice"] or self.queues["bob"]:
            for side in ("bob", "alice"):
                pending, self.queues[side] = self.queues[side], []
                for frame in pending:
                    events = self.sessions[side].receive(frame, now)
                    step = {"action": "deliver", "now": now, "frame": frame.hex()}
                    self._record(side, step, events)


def derived_keys(run: Run) -> dict[str, str]:
    """Every intermediate value of section 6, recomputed from the inputs."""
    room = RoomKeys.from_secret(ROOM_SECRET)
    alice_rng, bob_rng = run.randoms["alice"].outputs, run.randoms["bob"].outputs
    e_a, f_a = [x for x in alice_rng if len(x) == 32][:2]
    e_b, f_b = [x for x in bob_rng if len(x) == 32][:2]
    privates = {"e_a": e_a, "e_b": e_b, "f_a": f_a, "f_b": f_b}
    pub = {n: nacl.bindings.crypto_scalarmult_base(k) for n, k in privates.items()}
    ik_a = Identity.from_seed(SEEDS["alice"]).public.key
    ik_b = Identity.from_seed(SEEDS["bob"]).public.key

    e_lo, e_hi = sorted((pub["e_a"], pub["e_b"]))
    ik_lo, ik_hi = (ik_a, ik_b) if pub["e_a"] == e_lo else (ik_b, ik_a)
    dh = schedule.x25519(e_a, pub["e_b"])
    th = schedule.transcript_hash(room.room_id, e_lo, e_hi)
    hs = schedule.handshake_secret(room.room_key.reveal(), dh, th)
    k_auth_lo, k_auth_hi = schedule.auth_keys(hs)
    th2 = schedule.transcript_hash2(th, ik_lo, ik_hi)
    root_0 = schedule.root_key(hs, th2)
    lo2hi_0, hi2lo_0 = schedule.epoch_keys(root_0, 0)
    f_lo, f_hi = sorted((pub["f_a"], pub["f_b"]))
    dh1 = schedule.x25519(f_a, pub["f_b"])
    root_1 = schedule.rekey_root(root_0, dh1, f_lo, f_hi, 1)
    lo2hi_1, hi2lo_1 = schedule.epoch_keys(root_1, 1)

    # The sessions must agree with this independent derivation.
    channel = run.sessions["alice"].channel
    assert channel is not None and channel.root.reveal() == root_1

    values = {
        "alice_e_priv": e_a,
        "alice_e": pub["e_a"],
        "bob_e_priv": e_b,
        "bob_e": pub["e_b"],
        "dh": dh,
        "th": th,
        "hs": hs,
        "k_auth_lo": k_auth_lo,
        "k_auth_hi": k_auth_hi,
        "th2": th2,
        "root_0": root_0,
        "epoch0_k_lo2hi": lo2hi_0,
        "epoch0_k_hi2lo": hi2lo_0,
        "alice_f_priv": f_a,
        "alice_f": pub["f_a"],
        "bob_f_priv": f_b,
        "bob_f": pub["f_b"],
        "dh_rekey": dh1,
        "root_1": root_1,
        "epoch1_k_lo2hi": lo2hi_1,
        "epoch1_k_hi2lo": hi2lo_1,
    }
    return {name: value.hex() for name, value in values.items()}


def build() -> dict[str, Any]:
    """Run the scripted conversation and return the vector document."""
    run = Run()
    run.act("alice", "start", 0.0)
    run.deliver_all(0.0)
    run.act("alice", "send_profile", 0.5, "Alice")
    run.act("bob", "send_profile", 0.5, "Bob \u00e9")
    run.deliver_all(0.5)
    run.act("alice", "send_text", 1.0, "Hello, Bob!")
    run.act("bob", "send_text", 1.0, "Hi Alice.")
    run.deliver_all(1.0)
    run.act("alice", "rekey", 2.0)
    run.deliver_all(2.0)
    run.act("alice", "send_text", 3.0, "After the rekey.")
    run.act("bob", "send_text", 3.0, "Still here.")
    run.deliver_all(3.0)

    room = RoomKeys.from_secret(ROOM_SECRET)
    sides = {}
    for side, seed in SEEDS.items():
        identity = Identity.from_seed(seed)
        sides[side] = {
            "identity_seed": seed.hex(),
            "identity_public": identity.public.key.hex(),
            "fingerprint": identity.public.fingerprint(),
            "random": [x.hex() for x in run.randoms[side].outputs],
        }
    return {
        "description": "saltchat protocol v1: handshake, profiles, messages, "
        "rekey, messages (docs/protocol.md section 18)",
        "protocol_version": 1,
        "room": {
            "room_secret": ROOM_SECRET.hex(),
            "room_id": room.room_id.hex(),
            "room_key": room.room_key.reveal().hex(),
        },
        **sides,
        "safety_number": run.sessions["alice"].safety_number,
        "keys": derived_keys(run),
        "steps": run.steps,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file differs")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2) + "\n"
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text() == text
        print("vectors up to date" if same else "vectors differ: regenerate them")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
