"""The live demonstration: its JSON narration checked step by step.

The demo runs once for the module, in this process, with a real relay on
127.0.0.1 port 0 and real clients; identities and the room secret are fixed
here so that the tests can look for the real secret bytes. The README's
first command is run as a real subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from chat import envelope
from chat.client import ClientEvent
from chat.core.frames import Hello, encode_hello, parse_hello
from chat.core.identity import Identity
from chat.demo import build_parser
from chat.demo.narration import WIDTH, JsonSink, Narration, describe
from chat.demo.scenes import FIRST_MESSAGE, SECOND_MESSAGE, THIRD_MESSAGE, Demo
from chat.demo.tap import KeySwapper
from chat.ui.plain import describe as describe_event

ROOT = Path(__file__).resolve().parent.parent
ALICE_SEED = bytes(range(32))
BOB_SEED = bytes(range(100, 132))
ROOM_SECRET = bytes(range(200, 232))
PROCESS_DEADLINE = 60.0
"""Seconds a demo subprocess may take before the test fails."""


@dataclass
class Run:
    ok: bool
    records: list[dict[str, Any]]
    secrets: dict[str, bytes]

    def of(self, record_type: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records
            if r["type"] == record_type
            and all(r.get(k) == v for k, v in fields.items())
        ]

    def taught(self, side: str, event: str, step: int) -> list[dict[str, str]]:
        return [
            r["fields"] for r in self.of("teach", side=side, event=event, step=step)
        ]


@pytest.fixture(scope="module")
def run() -> Run:
    alice, bob = Identity.from_seed(ALICE_SEED), Identity.from_seed(BOB_SEED)
    stream = io.StringIO()
    demo = Demo(
        Narration(JsonSink(stream)), identities=(alice, bob), room_secret=ROOM_SECRET
    )
    ok = asyncio.run(demo.run())
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    secrets = {
        "alice seed": ALICE_SEED,
        "bob seed": BOB_SEED,
        "alice signing key": nacl.bindings.crypto_sign_seed_keypair(ALICE_SEED)[1],
        "bob signing key": nacl.bindings.crypto_sign_seed_keypair(BOB_SEED)[1],
        "room secret": ROOM_SECRET,
        "room key": demo.room.room_key.reveal(),
    }
    return Run(ok, records, secrets)


def test_every_check_passes(run: Run) -> None:
    [end] = run.of("end")

    assert run.ok
    assert end["ok"] is True
    assert end["failures"] == []
    assert all(check["ok"] for check in run.of("check"))


def test_the_steps_come_in_order_and_every_record_names_its_step(run: Run) -> None:
    assert [r["step"] for r in run.of("step")] == [0, 1, 2, 3, 4, 5, 6, 7]
    steps = [r["step"] for r in run.records]
    assert steps == sorted(steps)
    assert all(set(r) >= {"type", "step"} for r in run.records)


def test_both_diffie_hellman_results_are_equal(run: Run) -> None:
    alice = run.taught("alice", "shared-secret", 3)
    bob = run.taught("bob", "shared-secret", 3)

    assert alice and bob
    assert re.fullmatch("[0-9a-f]{8}", alice[-1]["dh"])
    assert alice[-1]["dh"] == bob[-1]["dh"]
    [check] = run.of("check", name="shared secret")
    assert check["alice"] == check["bob"] == alice[-1]["dh"]


def test_each_direction_has_one_key_that_both_sides_hold(run: Run) -> None:
    [alice] = [f for f in run.taught("alice", "keys", 4) if "root" in f]
    [bob] = [f for f in run.taught("bob", "keys", 4) if "root" in f]

    assert alice["root"] == bob["root"]
    assert alice["send_key"] == bob["receive_key"]
    assert bob["send_key"] == alice["receive_key"]
    assert alice["send_key"] != alice["receive_key"]


def test_both_sides_show_the_same_safety_number(run: Run) -> None:
    alice = run.taught("alice", "established", 4)
    bob = run.taught("bob", "established", 4)

    assert alice[-1]["safety_number"] == bob[-1]["safety_number"]
    assert len(alice[-1]["safety_number"].replace(" ", "")) == 60


def test_the_message_step_shows_what_alice_sealed(run: Run) -> None:
    [sealed] = run.taught("alice", "seal", 5)

    assert FIRST_MESSAGE.encode().hex() in sealed["plaintext"]
    assert len(bytes.fromhex(sealed["nonce"])) == 24
    assert len(bytes.fromhex(sealed["ciphertext"])) == 16 + 256
    assert run.of("check", name="message text")[0]["ok"]


@pytest.mark.parametrize(
    ("attack", "receiver", "kind"),
    [
        ("replay", "bob", "replay"),
        ("bit-flip", "bob", "forgery"),
        ("key swap", "alice", "forgery"),
        ("key swap", "bob", "forgery"),
        ("replay into the new epoch", "bob", "replay"),
        ("replay after the grace time", "bob", "stale"),
    ],
)
def test_each_attack_is_rejected_by_the_check_that_should_reject_it(
    run: Run, attack: str, receiver: str, kind: str
) -> None:
    [verdict] = run.of("attack", attack=attack, receiver=receiver)

    assert verdict["rejected"] is True
    assert verdict["kind"] == verdict["expected"] == kind
    rejections = run.taught(receiver, "rejected", verdict["step"])
    assert any(
        r["kind"] == kind and r["reason"] == verdict["reason"] for r in rejections
    )


def test_the_meddling_relay_really_changed_one_bit(run: Run) -> None:
    [forged] = run.of("relay", meddled="bit-flip")
    [sealed] = [
        fields
        for fields in run.taught("alice", "seal", 6)
        if SECOND_MESSAGE.encode().hex() in fields["plaintext"]
    ]
    forged_box = bytes.fromhex(forged["frame_hex"])[14:]
    genuine_box = bytes.fromhex(sealed["ciphertext"])
    changed = bytes(a ^ b for a, b in zip(forged_box, genuine_box, strict=True))

    assert sum(bin(byte).count("1") for byte in changed) == 1


def test_the_swapping_relay_shared_a_secret_with_each_side_yet_no_session(
    run: Run,
) -> None:
    values = {(v["side"], v["name"]): v["value"] for v in run.of("value", step=6)}

    assert (
        values[("relay", "its secret with alice")] == values[("alice", "X25519 result")]
    )
    assert values[("relay", "its secret with bob")] == values[("bob", "X25519 result")]
    assert values[("alice", "key it received")] != values[("bob", "own ephemeral key")]
    assert not run.of("teach", step=6, event="established")


def test_rekeying_gives_new_keys_that_both_sides_hold(run: Run) -> None:
    alice = {k: v for f in run.taught("alice", "rekey", 7) for k, v in f.items()}
    bob = {k: v for f in run.taught("bob", "rekey", 7) for k, v in f.items()}
    [old] = [f for f in run.taught("alice", "keys", 4) if "root" in f]

    assert alice["root"] == bob["root"] != old["root"]
    assert alice["send_key"] == bob["receive_key"] != old["send_key"]
    assert bob["send_key"] == alice["receive_key"] != old["receive_key"]
    [later] = [
        fields
        for fields in run.taught("alice", "seal", 7)
        if THIRD_MESSAGE.encode().hex() in fields["plaintext"]
    ]
    assert later["epoch"] == "1"


def test_the_relay_view_shows_the_handshake_frames_both_ways(run: Run) -> None:
    delivered = {
        (r["person"], r["frame"])
        for r in run.of("relay", step=2, direction="from-relay", envelope="DELIVER")
    }

    assert {("alice", "hello"), ("bob", "hello")} <= delivered
    assert {("alice", "auth"), ("bob", "auth")} <= delivered


def _relay_view(run: Run) -> list[dict[str, Any]]:
    view = run.of("relay")
    assert len(view) > 20
    return view


@pytest.mark.parametrize(
    "name",
    [
        "alice seed",
        "bob seed",
        "alice signing key",
        "bob signing key",
        "room secret",
        "room key",
    ],
)
def test_no_secret_key_appears_in_the_relay_view(run: Run, name: str) -> None:
    secret = run.secrets[name]
    for record in _relay_view(run):
        assert secret not in bytes.fromhex(record["hex"])
        assert secret.hex() not in json.dumps(record)


@pytest.mark.parametrize(
    "name",
    ["alice seed", "bob seed", "alice signing key", "bob signing key", "room key"],
)
def test_no_secret_key_appears_anywhere_in_the_narration(run: Run, name: str) -> None:
    text = "\n".join(json.dumps(record) for record in run.records)

    assert run.secrets[name].hex() not in text


@pytest.mark.parametrize("text", [FIRST_MESSAGE, SECOND_MESSAGE, THIRD_MESSAGE])
def test_no_plaintext_appears_in_the_relay_view(run: Run, text: str) -> None:
    plaintext = text.encode()
    for record in _relay_view(run):
        assert plaintext not in bytes.fromhex(record["hex"])
        assert plaintext.hex() not in json.dumps(record)
        assert text not in json.dumps(record)


def test_the_text_output_fits_80_columns(run: Run) -> None:
    lines = [text for record in run.records for _, text in describe(record)]

    assert len(lines) > 100
    assert max(len(line) for line in lines) <= WIDTH


def test_a_bad_flag_is_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--json", "--plain"])

    assert exit_info.value.code == 2


def _run_process(
    argv: list[str], cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PROCESS_DEADLINE,
        check=False,
    )


def test_step_mode_pauses_before_each_step_and_reads_enter() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "chat", "demo", "--step", "--json"]

    result = _run_process(argv, ROOT, env, stdin="\n" * 6)

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["next"] for r in records if r["type"] == "pause"] == [2, 3, 4, 5, 6, 7]


def _readme_first_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    return block.group(1).splitlines()[0].split("#")[0].strip()


def _checkout_with_environment(target: Path) -> Path:
    """Copy the checkout to ``target`` with a `.venv` dev.py will reuse.

    The environment is made without pip and sees the packages of the Python
    running the tests, and carries dev.py's "installed" stamp for the base
    install, so dev.py runs the demo without installing anything.
    """
    ignore = shutil.ignore_patterns("__pycache__", ".venv", "*.egg-info")
    for name in ("chat", "server"):
        shutil.copytree(ROOT / name, target / name, ignore=ignore)
    for name in ("dev.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)

    environment = target / ".venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    purelib = sysconfig.get_path("purelib", vars={"base": str(environment)})
    Path(purelib, "saltchat-tests.pth").write_text(
        "\n".join([str(target), sysconfig.get_path("purelib")]) + "\n"
    )
    mtime = (target / "pyproject.toml").stat().st_mtime_ns
    (environment / ".saltchat-installed").write_text(f"base:{mtime}\n")
    return target


def test_the_readmes_first_command_runs_the_demo(tmp_path: Path) -> None:
    command = _readme_first_command()
    assert command == "python3 dev.py demo"
    checkout = _checkout_with_environment(tmp_path)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    result = _run_process(shlex.split(command), checkout, env)

    assert result.returncode == 0, result.stderr
    for step in range(1, 8):
        assert f"Step {step}." in result.stdout
    assert "Every check passed." in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= WIDTH


def test_show_handshake_describes_a_real_step_within_80_columns() -> None:
    fields = {"transcript": "ab" * 64, "k_auth_own": "0a1b2c3d"}
    event = ClientEvent("handshake", {"step": "keys", "side": "me", "fields": fields})

    lines = ["* " + line for line in describe_event(event).splitlines()]

    assert lines[0] == "* [me] keys derived (secrets as short hashes)"
    assert "* " + "    k_auth_own: 0a1b2c3d" in lines
    assert max(len(line) for line in lines) <= WIDTH
    wrapped = "".join(line.removeprefix("*       ") for line in lines[2:-1])
    assert wrapped == fields["transcript"]


ROOM_ID = bytes(range(32))
SENDER = bytes(32)


def _deliver(payload: bytes, room_id: bytes = ROOM_ID) -> envelope.Deliver:
    return envelope.Deliver(room_id, SENDER, 0, payload)


def _delivered_hello(out: list[tuple[bytes, str | None]]) -> Hello:
    [(data, _)] = out
    message = envelope.decode_relay(data)
    assert isinstance(message, envelope.Deliver)
    return parse_hello(message.payload)


def test_the_key_swapper_answers_each_side_with_a_consistent_exchange() -> None:
    swapper = KeySwapper(ROOM_ID)
    alice, bob = bytes([9]) * 32, bytes([7]) * 32

    to_bob = _delivered_hello(swapper(_deliver(encode_hello(alice))))
    to_alice = _delivered_hello(swapper(_deliver(encode_hello(bob, to_bob.ephemeral))))

    assert to_bob.ephemeral not in (alice, bob)
    assert to_alice.ephemeral not in (alice, bob, to_bob.ephemeral)
    assert to_alice.echo == alice


@pytest.mark.parametrize(
    "message",
    [
        _deliver(encode_hello(bytes([9]) * 32), room_id=bytes(32)),
        _deliver(bytes([1, 3]) + bytes(284)),
    ],
    ids=["another room", "a record"],
)
def test_the_key_swapper_passes_other_frames_on_unchanged(
    message: envelope.Deliver,
) -> None:
    assert KeySwapper(ROOM_ID)(message) == [(envelope.encode(message), None)]
