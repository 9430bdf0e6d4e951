#!/usr/bin/env python3
"""Regenerate tests/vectors/session_v1.json deterministically.

Fixed identity seeds, a fixed room secret and a fixed stream of random bytes
per side go in; the exact frames of a full handshake, a PROFILE each way,
messages both ways, a rekey and messages after it come out, with a second
run where both sides start at once, room names, key files, short hashes,
canonical keys and refused inputs (see docs/protocol.md section 18).

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
import nacl.pwhash.argon2id  # noqa: E402

from chat.core import (  # noqa: E402
    Event,
    Identity,
    PeerError,
    RoomKeys,
    Session,
    schedule,
    short_hash,
)
from chat.core.frames import (  # noqa: E402
    encode_hello,
    is_canonical_point,
    parse_payload,
    unpad,
)
from chat.core.rooms import room_name_password  # noqa: E402

OUTPUT = ROOT / "tests" / "vectors" / "session_v1.json"
ROOM_SECRET = bytes(range(32))
SEEDS = {"alice": bytes([0xA1]) * 32, "bob": bytes([0xB0]) * 32}

# Published with the vectors on purpose; non-ASCII to pin the UTF-8 encoding.
KEY_FILE_PASSPHRASE = "Grüße, Alice"  # noqa: S105


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

    def __init__(self, label: bytes = b"") -> None:
        # Each run labels its random streams so that two runs draw apart.
        room = RoomKeys.from_secret(ROOM_SECRET)
        self.randoms = {side: RecordedRandom(label + side.encode()) for side in SEEDS}
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


def room_name_vectors() -> list[dict[str, str]]:
    """Room names as typed, the Argon2id password after NFC and trimming (3.2)."""
    typed = ["kitchen", " Cafe\u0301 garden\u3000\n"]
    vectors = []
    for name in typed:
        room = RoomKeys.from_name(name)
        vectors.append(
            {
                "name": name,
                "password": room_name_password(name).hex(),
                "room_id": room.room_id.hex(),
                "room_key": room.room_key.reveal().hex(),
            }
        )
    return vectors


def key_file_vectors() -> dict[str, Any]:
    """Alice's identity in an unprotected and a protected key file (4.2).

    The salt and nonce come from fixed labels so the file is reproducible;
    the Argon2id limits are the smallest a reader accepts.
    """
    seed = SEEDS["alice"]
    public = Identity.from_seed(seed).public.key.hex()
    passphrase = KEY_FILE_PASSPHRASE
    salt = hashlib.sha256(b"key-file-salt").digest()[:16]
    nonce = hashlib.sha256(b"key-file-nonce").digest()[:24]
    opslimit, memlimit = 2, 67108864
    key = nacl.pwhash.argon2id.kdf(
        32, passphrase.encode("utf-8"), salt, opslimit, memlimit
    )
    sealed = nonce + nacl.bindings.crypto_secretbox_easy(seed, nonce, key)
    return {
        "unprotected": {
            "file": {
                "format": "saltchat-identity-v1",
                "public": public,
                "seed": seed.hex(),
            },
        },
        "protected": {
            "passphrase": passphrase,
            "passphrase_utf8": passphrase.encode("utf-8").hex(),
            "argon2id_key": key.hex(),
            "file": {
                "format": "saltchat-identity-v1",
                "public": public,
                "argon2id": {
                    "salt": salt.hex(),
                    "opslimit": opslimit,
                    "memlimit": memlimit,
                    "sealed_seed": sealed.hex(),
                },
            },
        },
    }


def short_hash_vectors(keys: dict[str, str]) -> list[dict[str, str]]:
    """short_hash of a few secrets of the run (section 12)."""
    names = ["root_0", "epoch0_k_lo2hi", "epoch0_k_hi2lo", "root_1"]
    return [
        {
            "name": name,
            "secret": keys[name],
            "short_hash": short_hash(bytes.fromhex(keys[name])),
        }
        for name in names
    ]


_P = 2**255 - 19


def canonical_vectors() -> list[dict[str, Any]]:
    """X25519 keys and whether section 5.1 calls them canonical."""
    values = {
        "top bit of byte 0 set (u = 255)": b"\xff" + bytes(31),
        "largest canonical (p - 1)": (_P - 1).to_bytes(32, "little"),
        "p": _P.to_bytes(32, "little"),
        "bit 255 set (u = 2^255)": bytes(31) + b"\x80",
        "bit 255 set on a canonical key": b"\x09" + bytes(30) + b"\x80",
    }
    return [
        {"name": name, "key": key.hex(), "canonical": is_canonical_point(key)}
        for name, key in values.items()
    ]


def negative_vectors() -> list[dict[str, str]]:
    """Inputs a receiver refuses, each with the kind of section 11."""
    message_id = bytes(range(16))
    hello = encode_hello(bytes(range(1, 33)))
    cases: list[tuple[str, str, bytes]] = [
        ("frame", "HELLO key with bit 255 set", encode_hello(bytes(31) + b"\x80")),
        ("frame", "HELLO key equal to p", encode_hello(_P.to_bytes(32, "little"))),
        (
            "frame",
            "HELLO key of small order (u = 1)",
            encode_hello(b"\x01" + bytes(31)),
        ),
        ("frame", "HELLO one byte short", hello[:-1]),
        ("frame", "frame version 2", b"\x02" + hello[1:]),
        ("frame", "unknown frame type 0x04", b"\x01\x04" + hello[2:]),
        ("frame", "RECORD of 285 bytes", b"\x01\x03" + bytes(283)),
        ("frame", "AUTH before any HELLO", b"\x01\x02" + bytes(112)),
        ("padded", "no 0x80 marker", bytes(256)),
        (
            "padded",
            "a non-zero byte after the marker",
            b"\x01\x01\x80\x01" + bytes(252),
        ),
        ("payload", "payload version 2", b"\x02\x01"),
        ("payload", "unknown payload type 0xff", b"\x01\xff"),
        ("payload", "CONFIRM with a body", b"\x01\x01\x00"),
        ("payload", "TEXT without text", b"\x01\x02" + message_id),
        (
            "payload",
            "TEXT with an encoded surrogate",
            b"\x01\x02" + message_id + b"\xed\xa0\x80",
        ),
        (
            "payload",
            "TEXT with an overlong form",
            b"\x01\x02" + message_id + b"\xc0\xaf",
        ),
        (
            "payload",
            "TEXT above U+10FFFF",
            b"\x01\x02" + message_id + b"\xf4\x90\x80\x80",
        ),
        ("payload", "RECEIPT of 15 bytes", b"\x01\x03" + message_id[:15]),
        ("payload", "CLOSE without a reason", b"\x01\x05"),
        ("payload", "PROFILE without a nickname", b"\x01\x06"),
        ("payload", "PROFILE of 129 bytes", b"\x01\x06" + b"a" * 129),
        ("payload", "PROFILE with an invalid byte", b"\x01\x06Bob \xff"),
        (
            "payload",
            "PROFILE with an encoded surrogate",
            b"\x01\x06Bob \xed\xa0\x80",
        ),
        ("payload", "PROFILE with U+0000", b"\x01\x06Bob\x00"),
        ("payload", "PROFILE with U+007F", b"\x01\x06Bob\x7f"),
        ("payload", "PROFILE with U+0085", b"\x01\x06Bob\xc2\x85"),
    ]
    return [
        {
            "layer": layer,
            "name": name,
            "input": data.hex(),
            "kind": rejection(layer, data),
        }
        for layer, name, data in cases
    ]


def rejection(layer: str, data: bytes) -> str:
    """The kind the reference gives ``data`` (so the file cannot drift)."""
    room = RoomKeys.from_secret(ROOM_SECRET)
    session = Session(Identity.from_seed(SEEDS["bob"]), room, now=0.0)
    try:
        if layer == "frame":
            session.receive(data, 0.0)
        elif layer == "padded":
            unpad(data)
        else:
            parse_payload(data)
    except PeerError as exc:
        return exc.kind
    raise AssertionError(f"the reference accepts a negative vector: {data.hex()}")


def simultaneous_run() -> dict[str, Any]:
    """Both sides start before either HELLO arrives; the HELLOs cross (5.4).

    Each side answers the other's fresh HELLO with the ephemeral it already
    sent, so the answers arrive as harmless repeats; a message each way then
    shows both hold the same keys.
    """
    run = Run(b"simultaneous-")
    run.act("alice", "start", 0.0)
    run.act("bob", "start", 0.0)
    run.deliver_all(0.0)
    run.act("alice", "send_text", 1.0, "We both started.")
    run.act("bob", "send_text", 1.0, "So we did.")
    run.deliver_all(1.0)
    streams = {side: [x.hex() for x in run.randoms[side].outputs] for side in SEEDS}
    return {
        "alice": {"random": streams["alice"]},
        "bob": {"random": streams["bob"]},
        "steps": run.steps,
    }


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
    keys = derived_keys(run)
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
        "description": "saltchat protocol v1: handshake, profiles, messages, rekey, "
        "messages; a simultaneous start; room names, key files, short hashes, "
        "canonical keys and refused inputs (docs/protocol.md section 18)",
        "protocol_version": 1,
        "room": {
            "room_secret": ROOM_SECRET.hex(),
            "room_id": room.room_id.hex(),
            "room_key": room.room_key.reveal().hex(),
        },
        **sides,
        "safety_number": run.sessions["alice"].safety_number,
        "keys": keys,
        "steps": run.steps,
        "simultaneous": simultaneous_run(),
        "room_names": room_name_vectors(),
        "key_files": key_file_vectors(),
        "short_hash": short_hash_vectors(keys),
        "canonical": canonical_vectors(),
        "negative": negative_vectors(),
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
