"""The independent implementation against the recorded vectors, byte for byte.

Every value here comes from tests/interop/independent.py, written from
docs/protocol.md alone, and is compared with tests/vectors/ (section 18).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.signing
import pytest

from tests.interop import independent as ind

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SESSION: dict[str, Any] = json.loads((VECTORS / "session_v1.json").read_text())
SIDES = ("alice", "bob")


def _kat(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return loaded


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _random(side: str, index: int) -> bytes:
    # Section 18: jitter, e_priv, message id, f_priv, message id.
    return _h(SESSION[side]["random"][index])


def _signing_key(side: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(_h(SESSION[side]["identity_seed"]))


def _room() -> ind.RoomKeys:
    return ind.room_keys(_h(SESSION["room"]["room_secret"]))


def _derive_keys() -> dict[str, bytes]:
    """Every value of the vectors' "keys", chained from the inputs alone."""
    room = _room()
    out: dict[str, bytes] = {}

    # Section 5: ephemerals from the second draw of each side's random source.
    for side in SIDES:
        out[f"{side}_e_priv"] = _random(side, 1)
        out[f"{side}_e"] = nacl.bindings.crypto_scalarmult_base(_random(side, 1))

    # Section 6.1, seen from alice; bob computes the same dh.
    out["dh"] = ind.shared_secret(out["alice_e_priv"], out["bob_e"])
    out["th"] = ind.transcript_hash(room.room_id, out["alice_e"], out["bob_e"])
    out["hs"] = ind.handshake_secret(room.room_key, out["dh"], out["th"])
    auth = ind.auth_keys(out["hs"])
    out["k_auth_lo"], out["k_auth_hi"] = auth.lo, auth.hi

    # Section 6.2: ik_lo belongs to the side whose ephemeral is smaller.
    iks = {s: bytes(_signing_key(s).verify_key) for s in SIDES}
    lo = "alice" if ind.role_of(out["alice_e"], out["bob_e"]) == ind.ROLE_LO else "bob"
    hi = "bob" if lo == "alice" else "alice"
    out["th2"] = ind.transcript_hash2(out["th"], iks[lo], iks[hi])
    out["root_0"] = ind.root_key(out["hs"], out["th2"])
    out["epoch0_k_lo2hi"], out["epoch0_k_hi2lo"] = ind.epoch_keys(out["root_0"], 0)

    # Section 6.4: rekey keys are the fourth draw of each side.
    for side in SIDES:
        out[f"{side}_f_priv"] = _random(side, 3)
        out[f"{side}_f"] = nacl.bindings.crypto_scalarmult_base(_random(side, 3))
    out["dh_rekey"] = ind.shared_secret(out["alice_f_priv"], out["bob_f"])
    out["root_1"] = ind.rekey_root(
        out["root_0"], out["dh_rekey"], out["alice_f"], out["bob_f"], 1
    )
    out["epoch1_k_lo2hi"], out["epoch1_k_hi2lo"] = ind.epoch_keys(out["root_1"], 1)
    return out


DERIVED = _derive_keys()


# --- Primitives: the known-answer files ---------------------------------------


@pytest.mark.parametrize("case", _kat("kat_x25519.json")["scalarmult"])
def test_x25519_scalarmult_kat(case: dict[str, str]) -> None:
    out = nacl.bindings.crypto_scalarmult(_h(case["scalar"]), _h(case["u"]))
    assert out.hex() == case["output"]


@pytest.mark.parametrize("case", _kat("kat_x25519.json")["iterated"])
def test_x25519_iterated_kat(case: dict[str, Any]) -> None:
    # RFC 7748 section 5.2: k = u = 9, then (k, u) = (X25519(k, u), k).
    k = u = (9).to_bytes(32, "little")
    for _ in range(case["iterations"]):
        k, u = nacl.bindings.crypto_scalarmult(k, u), k
    assert k.hex() == case["output"]


@pytest.mark.parametrize("case", _kat("kat_x25519.json")["diffie_hellman"])
def test_x25519_diffie_hellman_kat(case: dict[str, str]) -> None:
    alice = ind.shared_secret(_h(case["alice_private"]), _h(case["bob_public"]))
    bob = ind.shared_secret(_h(case["bob_private"]), _h(case["alice_public"]))
    assert alice.hex() == bob.hex() == case["shared"]


@pytest.mark.parametrize("case", _kat("kat_secretbox.json")["vectors"])
def test_secretbox_kat(case: dict[str, str]) -> None:
    sealed = nacl.bindings.crypto_secretbox_easy(
        _h(case["plaintext"]), _h(case["nonce"]), _h(case["key"])
    )
    assert sealed.hex() == case["ciphertext"]


@pytest.mark.parametrize("case", _kat("kat_blake2b.json")["vectors"])
def test_blake2b_kat(case: dict[str, str]) -> None:
    digest = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        _h(case["input"]), digest_size=64, key=_h(case["key"])
    )
    assert digest.hex() == case["digest"]


# --- Rooms and identities -----------------------------------------------------


@pytest.mark.parametrize("name", ["room_id", "room_key"])
def test_room_keys_match(name: str) -> None:
    assert getattr(_room(), name).hex() == SESSION["room"][name]


@pytest.mark.parametrize("side", SIDES)
def test_identity_public_key_matches(side: str) -> None:
    public = bytes(_signing_key(side).verify_key)
    assert public.hex() == SESSION[side]["identity_public"]


@pytest.mark.parametrize("side", SIDES)
def test_fingerprint_matches(side: str) -> None:
    ik = _h(SESSION[side]["identity_public"])
    assert ind.fingerprint(ik) == SESSION[side]["fingerprint"]


@pytest.mark.parametrize("order", [SIDES, tuple(reversed(SIDES))])
def test_safety_number_matches_in_either_order(order: tuple[str, str]) -> None:
    first, second = (SESSION[side]["fingerprint"] for side in order)
    assert ind.safety_number(first, second) == SESSION["safety_number"]


@pytest.mark.parametrize("case", SESSION["room_names"], ids=lambda c: repr(c["name"]))
def test_room_name_matches(case: dict[str, str]) -> None:
    room = ind.room_keys(ind.room_secret_from_name(case["name"]))
    assert room.room_id.hex() == case["room_id"]
    assert room.room_key.hex() == case["room_key"]


# --- Key schedule -------------------------------------------------------------


def test_every_key_of_the_vectors_is_derived() -> None:
    assert set(DERIVED) == set(SESSION["keys"])


@pytest.mark.parametrize("name", list(SESSION["keys"]))
def test_key_schedule_value_matches(name: str) -> None:
    assert DERIVED[name].hex() == SESSION["keys"][name]


def test_rekey_root_ignores_which_side_computes_it() -> None:
    dh = ind.shared_secret(DERIVED["bob_f_priv"], DERIVED["alice_f"])
    root = ind.rekey_root(
        DERIVED["root_0"], dh, DERIVED["bob_f"], DERIVED["alice_f"], 1
    )
    assert root.hex() == SESSION["keys"]["root_1"]


# --- Handshake frames ---------------------------------------------------------


def _step_frames(index: int) -> list[str]:
    frames: list[str] = SESSION["steps"][index]["frames"]
    return frames


def test_fresh_hello_matches() -> None:
    assert ind.build_hello(DERIVED["alice_e"]).hex() == _step_frames(0)[0]


def test_answering_hello_matches() -> None:
    hello = ind.build_hello(DERIVED["bob_e"], DERIVED["alice_e"])
    assert hello.hex() == _step_frames(1)[0]


def test_hello_parses_into_its_fields() -> None:
    hello = ind.parse_hello(_h(_step_frames(1)[0]))
    assert (hello.e, hello.echo, hello.fresh) == (
        DERIVED["bob_e"],
        DERIVED["alice_e"],
        False,
    )


@pytest.mark.parametrize(
    ("side", "own_e", "peer_e", "step"),
    [("bob", "bob_e", "alice_e", 1), ("alice", "alice_e", "bob_e", 2)],
)
def test_auth_matches(side: str, own_e: str, peer_e: str, step: int) -> None:
    role = ind.role_of(DERIVED[own_e], DERIVED[peer_e])
    keys = ind.AuthKeys(DERIVED["k_auth_lo"], DERIVED["k_auth_hi"])
    auth = ind.build_auth(_signing_key(side), role, DERIVED["th"], keys)
    assert auth.hex() == _step_frames(step)[-1]


@pytest.mark.parametrize(
    ("receiver", "sender", "step"), [("alice", "bob", 1), ("bob", "alice", 2)]
)
def test_recorded_auth_opens_to_the_sender_identity(
    receiver: str, sender: str, step: int
) -> None:
    role = ind.role_of(DERIVED[f"{receiver}_e"], DERIVED[f"{sender}_e"])
    keys = ind.AuthKeys(DERIVED["k_auth_lo"], DERIVED["k_auth_hi"])
    peer_ik = ind.open_auth(_h(_step_frames(step)[-1]), role, DERIVED["th"], keys)
    assert peer_ik.hex() == SESSION[sender]["identity_public"]


# --- Recorded records, both directions, across the rekey ----------------------


def _recorded_records() -> list[tuple[str, str, str]]:
    """(id, sending side, frame hex) of every record the run queued."""
    records = []
    for index, step in enumerate(SESSION["steps"]):
        for number, frame in enumerate(step.get("frames", [])):
            if _h(frame)[1] == ind.TYPE_RECORD:
                records.append((f"step{index}-{number}", step["side"], frame))
    return records


RECORDS = _recorded_records()


def _record_key(sender: str, epoch: int) -> tuple[bytes, int]:
    role = ind.role_of(
        DERIVED[f"{sender}_e"], DERIVED["bob_e" if sender == "alice" else "alice_e"]
    )
    direction = "lo2hi" if role == ind.ROLE_LO else "hi2lo"
    return DERIVED[f"epoch{epoch}_k_{direction}"], role


def test_recorded_records_cover_both_directions_and_both_epochs() -> None:
    covered = {(s, ind.parse_record_header(_h(f))[0]) for _, s, f in RECORDS}
    assert covered == {(s, e) for s in SIDES for e in (0, 1)}


@pytest.mark.parametrize(
    ("sender", "frame"), [(s, f) for _, s, f in RECORDS], ids=[i for i, _, _ in RECORDS]
)
def test_recorded_record_opens_and_reseals_identically(sender: str, frame: str) -> None:
    epoch, counter = ind.parse_record_header(_h(frame))
    key, role = _record_key(sender, epoch)
    plaintext = ind.open_record(_h(frame), key, role)
    ind.parse_payload(plaintext)
    assert ind.seal_record(key, role, epoch, counter, plaintext).hex() == frame


def _payloads_by_step() -> dict[int, list[ind.Payload]]:
    out: dict[int, list[ind.Payload]] = {}
    for index, step in enumerate(SESSION["steps"]):
        for frame in step.get("frames", []):
            raw = _h(frame)
            if raw[1] == ind.TYPE_RECORD:
                key, role = _record_key(step["side"], ind.parse_record_header(raw)[0])
                payload = ind.parse_payload(ind.open_record(raw, key, role))
                out.setdefault(index, []).append(payload)
    return out


def test_recorded_payloads_follow_the_script() -> None:
    ids = {s: [_random(s, 2), _random(s, 4)] for s in SIDES}
    confirm = ind.Confirm()
    expected: dict[int, list[ind.Payload]] = {
        3: [confirm],
        4: [confirm],
        7: [ind.Profile("Alice")],
        8: [ind.Profile("Bob \u00e9")],
        11: [ind.Text(ids["alice"][0], "Hello, Bob!")],
        12: [ind.Text(ids["bob"][0], "Hi Alice.")],
        13: [ind.Receipt(ids["alice"][0])],
        14: [ind.Receipt(ids["bob"][0])],
        17: [ind.Rekey(1, DERIVED["alice_f"])],
        18: [ind.Rekey(1, DERIVED["bob_f"]), confirm],
        19: [confirm],
        22: [ind.Text(ids["alice"][1], "After the rekey.")],
        23: [ind.Text(ids["bob"][1], "Still here.")],
        24: [ind.Receipt(ids["alice"][1])],
        25: [ind.Receipt(ids["bob"][1])],
    }
    assert _payloads_by_step() == expected


# --- The whole run, replayed by two independent peers -------------------------


class ScriptedRandom:
    """Hands out a side's recorded random outputs, checking each size."""

    def __init__(self, side: str) -> None:
        self.left = [_h(value) for value in SESSION[side]["random"]]

    def __call__(self, size: int) -> bytes:
        assert self.left, "the peer asked for more random bytes than recorded"
        value = self.left.pop(0)
        assert len(value) == size, f"asked for {size} bytes, recorded {len(value)}"
        return value


def _event_as_vector(event: ind.Event) -> dict[str, Any]:
    match event:
        case ind.Established(peer, number):
            return {"type": "Established", "peer": peer.hex(), "safety_number": number}
        case ind.Text(message_id, text):
            return {
                "type": "MessageReceived",
                "message_id": message_id.hex(),
                "text": text,
            }
        case ind.Receipt(message_id):
            return {"type": "ReceiptReceived", "message_id": message_id.hex()}
        case ind.Profile(nickname):
            return {"type": "ProfileReceived", "nickname": nickname}
        case ind.Rekeyed(epoch):
            return {"type": "Rekeyed", "epoch": epoch}


def _act(peer: ind.Peer, step: dict[str, Any]) -> None:
    actions: dict[str, Callable[[], object]] = {
        "start": peer.start,
        "deliver": lambda: peer.receive(_h(step["frame"])),
        "send_text": lambda: peer.send_text(step["text"]),
        "send_profile": lambda: peer.send_profile(step["nickname"]),
        "rekey": peer.rekey,
    }
    actions[step["action"]]()


def _replay(until: int) -> tuple[dict[str, ind.Peer], dict[str, ScriptedRandom]]:
    randoms = {side: ScriptedRandom(side) for side in SIDES}
    peers = {
        side: ind.Peer(_signing_key(side), _room(), randoms[side]) for side in SIDES
    }
    for step in SESSION["steps"][:until]:
        _act(peers[step["side"]], step)
    for peer in peers.values():
        peer.outbox.clear()
        peer.events.clear()
    return peers, randoms


@pytest.mark.parametrize("index", range(len(SESSION["steps"])))
def test_replayed_step_queues_the_recorded_frames(index: int) -> None:
    peers, _ = _replay(index)
    step = SESSION["steps"][index]
    _act(peers[step["side"]], step)
    assert [f.hex() for f in peers[step["side"]].outbox] == step.get("frames", [])


@pytest.mark.parametrize("index", range(len(SESSION["steps"])))
def test_replayed_step_emits_the_recorded_events(index: int) -> None:
    peers, _ = _replay(index)
    step = SESSION["steps"][index]
    _act(peers[step["side"]], step)
    events = [_event_as_vector(e) for e in peers[step["side"]].events]
    assert events == step.get("events", [])


def test_replayed_script_covers_a_profile_each_way() -> None:
    # Section 18: the run sends a PROFILE each way; the replay must include it.
    sent = {s["side"] for s in SESSION["steps"] if s["action"] == "send_profile"}
    received = {
        s["side"]
        for s in SESSION["steps"]
        for e in s.get("events", [])
        if e["type"] == "ProfileReceived"
    }
    assert sent == received == set(SIDES)


def test_replay_uses_every_recorded_random_output() -> None:
    _, randoms = _replay(len(SESSION["steps"]))
    assert {side: r.left for side, r in randoms.items()} == {"alice": [], "bob": []}


# --- Refusals the spec requires -----------------------------------------------


def _violation(kind: str, call: Callable[[], object]) -> None:
    with pytest.raises(ind.ProtocolViolation) as caught:
        call()
    assert caught.value.kind == kind


def _first_record() -> tuple[bytes, bytes, int]:
    _, sender, frame = RECORDS[0]
    key, role = _record_key(sender, 0)
    return _h(frame), key, role


def test_record_with_a_changed_header_is_a_forgery() -> None:
    frame, key, role = _first_record()
    changed = frame[:13] + bytes([frame[13] ^ 1]) + frame[14:]
    _violation("forgery", lambda: ind.open_record(changed, key, role))


def test_record_opened_as_from_our_own_role_is_a_forgery() -> None:
    frame, key, role = _first_record()
    _violation("forgery", lambda: ind.open_record(frame, key, 1 - role))


@pytest.mark.parametrize("size", [285, 287, 300, 32799])
def test_record_of_a_size_outside_the_buckets_is_malformed(size: int) -> None:
    frame = bytes([1, 3]) + bytes(size - 2)
    _violation("malformed", lambda: ind.parse_record_header(frame))


def test_record_counter_of_2_to_the_20_is_refused_before_opening() -> None:
    frame, _, _ = _first_record()
    header = frame[:6] + (2**20).to_bytes(8, "big")
    _violation("malformed", lambda: ind.parse_record_header(header + frame[14:]))


def test_record_of_another_version_is_unsupported() -> None:
    frame, _, _ = _first_record()
    _violation(
        "unsupported-version", lambda: ind.parse_record_header(b"\x02" + frame[1:])
    )


def test_record_sizes_are_the_eight_listed_in_the_spec() -> None:
    listed = {286, 542, 1054, 2078, 4126, 8222, 16414, 32798}
    assert listed == ind.RECORD_SIZES


@pytest.mark.parametrize(
    ("length", "bucket"), [(0, 256), (255, 256), (256, 512), (32767, 32768)]
)
def test_padding_picks_the_smallest_bucket(length: int, bucket: int) -> None:
    assert len(ind.pad(bytes(length))) == bucket


def test_padding_round_trips_a_plaintext_ending_in_zero_and_0x80() -> None:
    plaintext = b"\x01\x02text\x80\x00"
    assert ind.unpad(ind.pad(plaintext)) == plaintext


def test_plaintext_beyond_the_largest_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        ind.pad(bytes(32768))


@pytest.mark.parametrize("padded", [bytes(256), b"\x01\x01\x81" + bytes(253)])
def test_padding_without_its_0x80_marker_is_malformed(padded: bytes) -> None:
    _violation("malformed", lambda: ind.unpad(padded))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"\x01",
        b"\x01\x06",
        b"\x01\x01\x00",
        b"\x01\x03" + bytes(15),
        b"\x01\x04" + bytes(35),
        b"\x01\x05",
        b"\x01\x02" + bytes(16),
        b"\x01\x02" + bytes(16) + b"\xff",
    ],
    ids=["short", "type", "confirm", "receipt", "rekey", "close", "empty", "utf8"],
)
def test_bad_payload_is_malformed(plaintext: bytes) -> None:
    _violation("malformed", lambda: ind.parse_payload(plaintext))


def test_payload_of_another_version_is_unsupported() -> None:
    _violation("unsupported-version", lambda: ind.parse_payload(b"\x02\x01"))


@pytest.mark.parametrize(
    "payload",
    [
        ind.Confirm(),
        ind.Text(bytes(range(16)), "héllo"),
        ind.Receipt(bytes(16)),
        ind.Rekey(7, bytes(range(32))),
        ind.Close(0),
        ind.Profile("Bob \u00e9"),
    ],
)
def test_payload_round_trips(payload: ind.Payload) -> None:
    assert ind.parse_payload(ind.encode_payload(payload)) == payload


# --- PROFILE (section 7.4) -----------------------------------------------------


def _profile(body: bytes) -> bytes:
    return bytes([ind.VERSION, ind.PAYLOAD_PROFILE]) + body


# Nicknames a receiver refuses and a sender must not seal, by their UTF-8.
BAD_NICKNAMES = {
    "empty": b"",
    "129 bytes": b"a" * 129,
    "129 bytes of 3-byte characters": "\u20ac".encode() * 43,
    "invalid byte": b"Bob \xff",
    "truncated sequence": b"Bob \xc3",
    "overlong form": b"Bob \xc0\xaf",
    "encoded surrogate": b"Bob \xed\xa0\x80",
    "above U+10FFFF": b"Bob \xf4\x90\x80\x80",
    "U+0000": b"Bob\x00",
    "tab": b"Bob\t",
    "newline": b"Bob\n",
    "U+001F": b"Bob\x1f",
    "U+007F": b"Bob\x7f",
    "U+0080": "Bob\u0080".encode(),
    "U+0085": "Bob\u0085".encode(),
    "U+009F": "Bob\u009f".encode(),
}


@pytest.mark.parametrize("raw", BAD_NICKNAMES.values(), ids=BAD_NICKNAMES.keys())
def test_bad_profile_is_malformed(raw: bytes) -> None:
    _violation("malformed", lambda: ind.parse_payload(_profile(raw)))


@pytest.mark.parametrize(
    "nickname",
    ["A", "a" * 128, "\u00e9" * 64, "Bob \u00a0 \u007e", "\u200b\u202e\u2028\ufeff"],
    ids=["one byte", "128 bytes", "128 bytes of 2-byte", "edges of Cc", "not Cc"],
)
def test_profile_within_the_rules_is_accepted(nickname: str) -> None:
    # Only Cc is refused: format characters and separators are allowed.
    assert ind.parse_payload(_profile(nickname.encode())) == ind.Profile(nickname)


def test_control_ranges_are_exactly_unicode_category_cc() -> None:
    every = (chr(c) for c in range(0x110000))
    cc = {ch for ch in every if unicodedata.category(ch) == "Cc"}
    ranges = {chr(c) for low, high in ind.CONTROL_RANGES for c in range(low, high + 1)}
    assert ranges == cc


def _nickname_from(raw: bytes) -> str:
    # A sender's string for each bad case; invalid bytes map to lone surrogates.
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("raw", BAD_NICKNAMES.values(), ids=BAD_NICKNAMES.keys())
def test_bad_nickname_is_not_sealed(raw: bytes) -> None:
    with pytest.raises(ValueError, match="nickname"):
        ind.encode_payload(ind.Profile(_nickname_from(raw)))


def test_refused_nickname_queues_nothing_and_uses_no_counter() -> None:
    # Alice's recorded PROFILE (step 7) must still take counter 1 afterwards.
    peers, _ = _replay(7)
    with pytest.raises(ValueError, match="control character"):
        peers["alice"].send_profile("Alice\n")
    assert peers["alice"].outbox == []
    peers["alice"].send_profile("Alice")
    assert [f.hex() for f in peers["alice"].outbox] == _step_frames(7)


def test_profile_is_refused_locally_before_established() -> None:
    # After step 3 alice is CONFIRMING: bob's CONFIRM has not arrived.
    peers, _ = _replay(4)
    with pytest.raises(RuntimeError, match="not established"):
        peers["alice"].send_profile("Alice")
    assert peers["alice"].outbox == []


def test_accepted_profile_queues_no_receipt() -> None:
    peers, _ = _replay(9)
    peers["bob"].receive(_h(_step_frames(7)[0]))
    assert (peers["bob"].events, peers["bob"].outbox) == ([ind.Profile("Alice")], [])


def _alice_record(counter: int, plaintext: bytes) -> bytes:
    key, role = _record_key("alice", 0)
    return ind.seal_record(key, role, 0, counter, plaintext)


def test_malformed_profile_record_changes_nothing() -> None:
    # Sealed by alice at the counter of her real PROFILE, which bob must still
    # accept afterwards: a refused record leaves its counter unused (7.4).
    peers, _ = _replay(9)
    bad = _alice_record(1, _profile(b"Alice\x1b"))
    _violation("malformed", lambda: peers["bob"].receive(bad))
    assert (peers["bob"].events, peers["bob"].outbox) == ([], [])
    peers["bob"].receive(_h(_step_frames(7)[0]))
    assert peers["bob"].events == [ind.Profile("Alice")]


def test_malformed_profile_does_not_confirm_the_handshake() -> None:
    # Bob is CONFIRMING before step 5; a record that fails parsing must not
    # make him ESTABLISHED (7.5: no state changes until step 6).
    peers, _ = _replay(5)
    bad = _alice_record(1, _profile(b""))
    _violation("malformed", lambda: peers["bob"].receive(bad))
    assert peers["bob"].events == []
    with pytest.raises(RuntimeError, match="not established"):
        peers["bob"].send_profile("Bob")


def _hello_with(e: bytes) -> bytes:
    return ind.build_hello(e)


@pytest.mark.parametrize(
    "e",
    [
        DERIVED["alice_e"][:31] + bytes([DERIVED["alice_e"][31] | 0x80]),
        (2**255 - 19).to_bytes(32, "little"),
        (2**255 - 1).to_bytes(32, "little"),
    ],
    ids=["bit255", "p", "p+18"],
)
def test_non_canonical_hello_key_is_malformed(e: bytes) -> None:
    _violation("malformed", lambda: ind.parse_hello(_hello_with(e)))


@pytest.mark.parametrize("case", SESSION["canonical"], ids=lambda c: c["name"])
def test_canonical_check_matches(case: dict[str, Any]) -> None:
    assert ind.is_canonical(_h(case["key"])) is case["canonical"]


_PARSERS: dict[str, Callable[[bytes], object]] = {
    "padded": ind.unpad,
    "payload": ind.parse_payload,
}


@pytest.mark.parametrize(
    "case",
    [c for c in SESSION["negative"] if c["layer"] in _PARSERS],
    ids=lambda c: c["name"],
)
def test_negative_vector_is_refused_with_its_kind(case: dict[str, str]) -> None:
    parser = _PARSERS[case["layer"]]
    _violation(case["kind"], lambda: parser(_h(case["input"])))


def test_largest_canonical_hello_key_parses() -> None:
    e = (2**255 - 20).to_bytes(32, "little")
    assert ind.parse_hello(_hello_with(e)).e == e


def test_hello_of_a_wrong_size_is_malformed() -> None:
    _violation("malformed", lambda: ind.parse_hello(_h(_step_frames(0)[0]) + b"\x00"))


def test_small_order_peer_key_is_refused() -> None:
    _violation(
        "malformed", lambda: ind.shared_secret(DERIVED["alice_e_priv"], bytes(32))
    )


def _auth_case(step: int) -> tuple[bytes, int, ind.AuthKeys]:
    # Bob's AUTH (step 1) as alice receives it.
    role = ind.role_of(DERIVED["alice_e"], DERIVED["bob_e"])
    keys = ind.AuthKeys(DERIVED["k_auth_lo"], DERIVED["k_auth_hi"])
    return _h(_step_frames(step)[-1]), role, keys


def test_own_auth_sent_back_is_a_reflection() -> None:
    own, role, keys = _auth_case(2)
    _violation("reflection", lambda: ind.open_auth(own, role, DERIVED["th"], keys))


def test_altered_auth_is_a_forgery() -> None:
    frame, role, keys = _auth_case(1)
    altered = frame[:-1] + bytes([frame[-1] ^ 1])
    _violation("forgery", lambda: ind.open_auth(altered, role, DERIVED["th"], keys))


def test_auth_under_another_transcript_fails_the_signature() -> None:
    frame, role, keys = _auth_case(1)
    other_th = bytes(64)
    _violation("handshake-failed", lambda: ind.open_auth(frame, role, other_th, keys))


def test_peer_reusing_our_identity_fails_the_handshake() -> None:
    # Alice receives an AUTH signed with her own identity under bob's role.
    role = ind.role_of(DERIVED["alice_e"], DERIVED["bob_e"])
    keys = ind.AuthKeys(DERIVED["k_auth_lo"], DERIVED["k_auth_hi"])
    mirror = ind.build_auth(_signing_key("alice"), 1 - role, DERIVED["th"], keys)
    peers, _ = _replay(3)
    _violation("handshake-failed", lambda: peers["alice"].receive(mirror))


# --- Secrets stay out of repr -------------------------------------------------


def test_room_keys_repr_hides_the_room_key() -> None:
    room = _room()
    assert room.room_key.hex() not in repr(room)


def test_auth_keys_repr_hides_both_keys() -> None:
    keys = ind.AuthKeys(DERIVED["k_auth_lo"], DERIVED["k_auth_hi"])
    assert keys.lo.hex() not in repr(keys) and keys.hi.hex() not in repr(keys)


def test_peer_repr_hides_its_secrets() -> None:
    peers, _ = _replay(len(SESSION["steps"]))
    text = repr(peers["alice"])
    secrets = [DERIVED["root_1"], DERIVED["epoch1_k_hi2lo"], DERIVED["epoch1_k_lo2hi"]]
    assert not [s for s in secrets if s.hex() in text or repr(s) in text]
