"""The client's parts without a network: home, trust, invites, bounds, CLI."""

from __future__ import annotations

import importlib.util
import io
import itertools
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import cli
from chat import invite as invite_module
from chat.client import (
    ClientEvent,
    CommandError,
    backoff_delays,
    check_message_text,
    sanitize_nick,
)
from chat.home import Home, resolve_home
from chat.invite import Invite, InviteError, decode_invite, encode_invite
from chat.limits import (
    MAX_INPUT_LINE_BYTES,
    MAX_NAMES_PER_KEY,
    RECONNECT_CAP_SECONDS,
)
from chat.trust import TrustState, TrustStore, TrustStoreError
from chat.ui.lines import read_lines
from chat.ui.plain import PlainRenderer, describe

FINGERPRINT = "12345 67890 00001 99999 54321 00000"
SECRET = bytes(range(32))
ADDRESS = bytes(range(100, 132))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Home directory.


def test_home_flag_wins_over_environment(tmp_path: Path) -> None:
    env = {"SALTCHAT_HOME": "/env", "XDG_DATA_HOME": "/xdg"}
    assert resolve_home(str(tmp_path), env) == tmp_path


def test_home_from_saltchat_home_then_xdg() -> None:
    assert resolve_home(None, {"SALTCHAT_HOME": "/a", "XDG_DATA_HOME": "/x"}) == Path(
        "/a"
    )
    assert resolve_home(None, {"XDG_DATA_HOME": "/x"}) == Path("/x/saltchat")


def test_home_defaults_to_local_share() -> None:
    assert resolve_home(None, {}) == Path.home() / ".local/share/saltchat"


def test_home_directories_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    assert _mode(home.root) == 0o700
    assert _mode(home.root / "rooms") == 0o700


def test_mailbox_token_is_stable_and_private(tmp_path: Path) -> None:
    home = Home(tmp_path)
    first = home.mailbox_token(b"r" * 32)
    again = Home(tmp_path).mailbox_token(b"r" * 32)
    other_room = home.mailbox_token(b"s" * 32)

    assert first == again
    assert first != other_room
    assert len(first) == 32
    assert _mode(tmp_path / "rooms" / f"{(b'r' * 32).hex()}.token") == 0o600


def test_corrupt_mailbox_token_is_a_clear_error(tmp_path: Path) -> None:
    home = Home(tmp_path)
    (tmp_path / "rooms" / f"{(b'r' * 32).hex()}.token").write_text("nonsense")
    with pytest.raises(OSError, match="corrupt"):
        home.mailbox_token(b"r" * 32)


# Trust store.


def test_first_contact_is_pinned_unverified(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    decision = store.check(b"k" * 32, "bob", "room:addr")

    assert decision.state == TrustState.UNVERIFIED
    assert _mode(tmp_path / "trust.json") == 0o600
    reloaded = TrustStore.load(tmp_path / "trust.json")
    assert reloaded.check(b"k" * 32, "bob", "room:addr").state == TrustState.UNVERIFIED


def test_new_key_for_a_pinned_name_is_changed(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    store.check(b"k" * 32, "bob", "room:a1")
    decision = store.check(b"x" * 32, "bob", "room:a2")

    assert decision.state == TrustState.CHANGED
    assert decision.previous_key == b"k" * 32
    assert decision.pinned_by == "name"


def test_new_key_at_a_pinned_address_is_changed(tmp_path: Path) -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", "room:a1")
    assert store.check(b"x" * 32, "robert", "room:a1").pinned_by == "address"


def test_accepting_a_changed_key_pins_it(tmp_path: Path) -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", "room:a1")
    store.accept(b"x" * 32, "bob", "room:a1")
    assert store.check(b"x" * 32, "bob", "room:a1").state == TrustState.UNVERIFIED
    assert store.check(b"k" * 32, "bob", "room:a1").state == TrustState.CHANGED


def test_verified_state_is_kept(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    store.check(b"k" * 32, "bob", "room:a1")
    store.mark_verified(b"k" * 32, "bob")
    reloaded = TrustStore.load(tmp_path / "trust.json")
    assert reloaded.check(b"k" * 32, "bob", "room:a1").state == TrustState.VERIFIED


def test_a_verified_key_under_a_new_name_is_unverified() -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", "room:a1")
    store.mark_verified(b"k" * 32, "bob")

    assert store.check(b"k" * 32, "alice", "room:a2").state == TrustState.UNVERIFIED
    assert store.check(b"k" * 32, "bob", "room:a2").state == TrustState.VERIFIED


def test_the_key_pinned_at_an_address_is_what_handshakes_expect() -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", "room:a1")

    assert store.pinned_at("room:a1") == b"k" * 32
    assert store.pinned_at("room:a2") is None
    assert store.pinned_at(None) is None


def test_accepting_a_key_before_its_name_pins_the_address_only() -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", "room:a1")
    store.accept(b"x" * 32, None, "room:a1")

    assert store.pinned_at("room:a1") == b"x" * 32
    assert store.check(b"x" * 32, "robert", "room:a1").state == TrustState.UNVERIFIED
    assert store.check(b"x" * 32, "bob", "room:a1").pinned_by == "name"


def test_a_pin_that_is_not_a_key_is_refused_at_load(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust.json")
    store.check(b"k" * 32, "bob", "room:a1")
    text = (tmp_path / "trust.json").read_text()
    (tmp_path / "trust.json").write_text(text.replace((b"k" * 32).hex(), "6b6b", 1))

    with pytest.raises(TrustStoreError, match="malformed"):
        TrustStore.load(tmp_path / "trust.json")


def test_names_pinned_to_one_key_are_bounded() -> None:
    store = TrustStore(None)
    for n in range(MAX_NAMES_PER_KEY + 3):
        assert store.check(b"k" * 32, f"name{n}", None).state != TrustState.CHANGED

    pinned = [n for n in range(MAX_NAMES_PER_KEY + 3) if store._names.get(f"name{n}")]
    assert len(pinned) == MAX_NAMES_PER_KEY


def test_corrupt_trust_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "trust.json").write_text('{"version": 1, "identities": 3}')
    with pytest.raises(TrustStoreError, match="malformed"):
        TrustStore.load(tmp_path / "trust.json")


# Invite codes.


def test_invite_round_trip() -> None:
    invite = Invite(SECRET, FINGERPRINT, ADDRESS, "ws://relay.example:8765")
    assert decode_invite(encode_invite(invite)) == invite


def test_invite_forgives_case_dashes_and_look_alikes() -> None:
    code = encode_invite(Invite(SECRET, FINGERPRINT, ADDRESS, "ws://127.0.0.1:8765"))
    sloppy = code.lower().replace("0", "o").replace("1", "l").replace("-", " - ")
    assert decode_invite(sloppy).room_secret == SECRET


def test_invite_with_a_typo_is_refused() -> None:
    code = encode_invite(Invite(SECRET, FINGERPRINT, ADDRESS, "ws://127.0.0.1:8765"))
    position = 10
    swapped = "A" if code[position] != "A" else "B"
    typo = code[:position] + swapped + code[position + 1 :]
    with pytest.raises(InviteError, match="typo"):
        decode_invite(typo)


def test_invite_with_a_tampered_address_fails_the_checksum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = encode_invite(Invite(SECRET, FINGERPRINT, ADDRESS, "ws://127.0.0.1:8765"))
    text = code[len("sc1-") :].replace("-", "")
    # Characters 74 to 124 carry bits of the address only (bytes 46 to 77).
    position = 100
    swapped = "A" if text[position] != "A" else "B"
    tampered = "sc1-" + text[:position] + swapped + text[position + 1 :]

    with pytest.raises(InviteError, match="typo"):
        decode_invite(tampered)

    # The change lands in the address alone: without the checksum it reads.
    with monkeypatch.context() as patched:
        patched.setattr("chat.invite.hmac.compare_digest", lambda a, b: True)
        read = decode_invite(tampered)
    assert read.address != ADDRESS
    assert (read.room_secret, read.fingerprint) == (SECRET, FINGERPRINT)


def test_invite_from_an_older_version_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(invite_module, "_VERSION", 1)
        code = encode_invite(Invite(SECRET, FINGERPRINT, ADDRESS, "ws://x:1"))
    with pytest.raises(InviteError, match="older version"):
        decode_invite(code)


def test_invite_without_prefix_is_refused() -> None:
    with pytest.raises(InviteError, match="sc1-"):
        decode_invite("hello")


def test_invite_repr_hides_the_room_secret() -> None:
    invite = Invite(SECRET, FINGERPRINT, ADDRESS, "ws://x")
    assert SECRET.hex() not in repr(invite)
    assert "[secret]" in repr(invite)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_decodes_or_raises_invite_error(text: str) -> None:
    with pytest.raises(InviteError):
        decode_invite(text)


# Bounds and checks.


def test_backoff_grows_and_stays_under_the_cap() -> None:
    delays = list(itertools.islice(backoff_delays(rng=lambda: 0.0), 30))
    assert delays[0] < delays[1] < delays[2]
    assert max(delays) == RECONNECT_CAP_SECONDS


def test_backoff_jitter_lowers_the_delay_by_at_most_half() -> None:
    nominal = list(itertools.islice(backoff_delays(rng=lambda: 0.0), 5))
    jittered = list(itertools.islice(backoff_delays(rng=lambda: 0.999), 5))
    for full, low in zip(nominal, jittered, strict=True):
        assert full / 2 <= low < full


def test_nick_cannot_hold_the_fingerprint_separator() -> None:
    assert sanitize_nick("bob#12345") == "bob_12345"


def test_nick_is_made_printable_and_bounded() -> None:
    assert sanitize_nick("bob\x1b[31m\n") == "bob[31m"
    assert sanitize_nick("a b") == "a_b"
    assert len(sanitize_nick("x" * 100)) == 32
    assert sanitize_nick("\x00") == "anonymous"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_INPUT_LINE_BYTES + 1), "bytes"),
        ("bell\x07", "control"),
    ],
)
def test_bad_message_text_is_refused(text: str, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        check_message_text(text)


def test_longest_message_text_is_accepted() -> None:
    check_message_text("x" * MAX_INPUT_LINE_BYTES)


# Rendering.


def test_plain_prints_messages_on_stdout_and_notices_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render = PlainRenderer()
    render(ClientEvent("message", {"from": "bob", "text": "hi", "id": "00"}))
    render(ClientEvent("peer-joined", {"peer": "bob"}))
    out, err = capsys.readouterr()
    assert out == "bob: hi\n"
    assert err == "* bob joined\n"


def test_every_documented_event_has_a_description() -> None:
    fields = {
        "nick": "a",
        "fingerprint": "f",
        "peer": "p",
        "safety_number": "1",
        "verified": False,
        "trust": "unverified",
        "id": "00" * 16,
        "to": "p",
        "kind": "replay",
        "detail": "d",
        "reason": "r",
        "retry_in": 1,
        "code": "c",
        "peers": [],
        "sessions": 0,
        "connection": "connected",
        "commands": {},
        "undelivered": [],
        "step": "s",
        "side": "a",
        "fields": {},
    }
    names = ["ready", "peer-joined", "secure", "delivered", "alert", "peer-left"]
    names += ["disconnected", "reconnected", "error", "invite", "who", "verify"]
    names += ["help", "rekey", "handshake", "closed"]
    for name in names:
        assert describe(ClientEvent(name, fields)) != f"{name}: {fields}"


# Command line.


def test_bad_flag_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--bogus"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_bad_listen_address_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--listen", "nowhere"])
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_plain_and_json_together_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--plain", "--json"])
    assert "not allowed with" in capsys.readouterr().err


def test_bad_invite_code_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(tmp_path), "join", "sc1-nonsense"]) == 1
    assert "bad invite code" in capsys.readouterr().err


def test_room_name_from_the_environment_is_bounded_too(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SALTCHAT_ROOM", "x" * 257)
    assert cli.main(["--home", str(tmp_path), "--json"]) == 1
    assert "SALTCHAT_ROOM: a room name is 1 to 256 bytes" in capsys.readouterr().err


def test_id_prints_the_same_fingerprint_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--home", str(tmp_path), "id"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main(["id", "--home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == first
    assert len(first.replace(" ", "")) == 30
    assert _mode(tmp_path / "identity.json") == 0o600


def test_demo_dispatches_or_says_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert cli.main(["demo"]) == 1
    assert "not available" in capsys.readouterr().err


def test_flags_may_follow_the_subcommand() -> None:
    args = cli.build_parser().parse_intermixed_args(["join", "CODE", "--json"])
    assert (args.command, args.code, args.json) == ("join", "CODE", True)


# Reading stdin.


def _lines(data: bytes, limit: int = 10, chunk: int = 4) -> list[object]:
    stream = io.BytesIO(data)
    got: list[object] = []
    read_lines(lambda _size: stream.read(chunk), got.append, limit)
    return [str(item) if isinstance(item, ValueError) else item for item in got]


def test_stdin_lines_are_split_and_crlf_trimmed() -> None:
    assert _lines(b"one\r\ntwo\nthree") == [b"one", b"two", b"three", None]


def test_over_long_stdin_line_is_skipped_with_one_error() -> None:
    got = _lines(b"short\n" + b"x" * 50 + b"\nafter\n")
    assert got[0] == b"short"
    assert "longer than 10 bytes" in str(got[1])
    assert got[2:] == [b"after", None]


def test_line_of_exactly_the_limit_is_kept() -> None:
    assert _lines(b"x" * 10 + b"\n") == [b"x" * 10, None]


def test_without_an_address_only_the_name_is_pinned() -> None:
    store = TrustStore(None)
    store.check(b"k" * 32, "bob", None)
    assert store.check(b"x" * 32, "carol", None).state == TrustState.UNVERIFIED
    assert store.check(b"x" * 32, "bob", None).state == TrustState.CHANGED


def test_trust_store_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chat.trust.MAX_TRUST_ENTRIES", 2)
    store = TrustStore(None)
    store.check(b"a" * 32, "a", None)
    store.check(b"b" * 32, "b", None)
    with pytest.raises(TrustStoreError, match="full"):
        store.check(b"c" * 32, "c", None)


def test_every_emitted_event_is_documented_in_the_json_contract() -> None:
    root = Path(__file__).resolve().parents[1]
    source = "\n".join(
        path.read_text()
        for path in (root / "chat").rglob("*.py")
        if "core" not in path.parts
    )
    emitted = set(re.findall(r'ClientEvent\(\s*"([a-z-]+)"', source))
    emitted |= set(re.findall(r'_reply\("([a-z-]+)"', source))
    contract = (root / "docs" / "cli.md").read_text().split("## The JSON contract")[1]
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", contract, re.MULTILINE))

    assert emitted == documented
