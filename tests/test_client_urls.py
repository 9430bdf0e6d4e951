"""Malformed WebSocket URLs get a clear error and an exit status, never a
traceback: from --relay, --connect, SALTCHAT_RELAY and invite codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat import cli, invite
from chat.invite import Invite, InviteError, decode_invite, encode_invite
from chat.transport import LinkError, check_url, connect_direct

# Each passes a "starts with ws://" check and used to fail only when a
# connection was opened (urllib raises ValueError there).
MALFORMED = [
    "ws://[evil",  # a bracket left open
    "ws://a:99999",  # port out of range
    "ws://a:-1",  # port not a number
    "ws://host/#part",  # a fragment
    "ws://",  # no host
]

FINGERPRINT = "12345 67890 00001 99999 54321 00000"


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_url_is_refused_with_the_reason(url: str) -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        check_url(url)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765", "wss://[::1]/relay?x=1"])
def test_wellformed_url_is_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize("flag", ["--relay", "--connect"])
@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_url_flag_exits_2_with_usage(
    flag: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([flag, url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: not a WebSocket URL" in err
    assert "Traceback" not in err


def test_malformed_relay_from_the_environment_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SALTCHAT_RELAY", "ws://[evil")
    assert cli.main(["--home", str(tmp_path), "--plain"]) == 1
    assert "SALTCHAT_RELAY: not a WebSocket URL" in capsys.readouterr().err


def _code_with_relay(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # Made as a hostile inviter would: without the encoder's own check.
    with monkeypatch.context() as patched:
        patched.setattr(invite, "_check_url", lambda text: text)
        return encode_invite(Invite(bytes(32), FINGERPRINT, bytes(32), url))


@pytest.mark.parametrize("url", MALFORMED)
def test_invite_with_a_malformed_relay_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = _code_with_relay(url, monkeypatch)
    with pytest.raises(InviteError, match="not a WebSocket URL"):
        decode_invite(code)


def test_joining_with_a_malformed_relay_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _code_with_relay("ws://a:99999", monkeypatch)
    assert cli.main(["--home", str(tmp_path), "join", code]) == 1
    err = capsys.readouterr().err
    assert "bad invite code" in err and "not a WebSocket URL" in err


async def test_opening_a_malformed_url_is_a_link_error() -> None:
    # The client's reconnect loop handles LinkError; nothing else escapes.
    with pytest.raises(LinkError, match="not a WebSocket URL"):
        await connect_direct("ws://[evil")
