"""The plain mode used as a person would: typed into a terminal under tmux."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat.core.identity import Identity
from tests.client_helpers import (  # noqa: F401 (cluster is a fixture)
    DEADLINE,
    ROOT,
    Cluster,
    cluster_fixture,
)

POLL_SECONDS = 0.1


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is required in CI")
        pytest.skip("tmux is not installed")
    # A private server socket, so no one's own tmux sessions are touched.
    command = ["tmux", "-L", f"saltchat-test-{os.getpid()}", "-f", os.devnull]
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], check=False, capture_output=True)


def _capture(tmux: list[str]) -> str:
    result = subprocess.run(
        [*tmux, "capture-pane", "-p", "-J", "-t", "chat"],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


async def _screen_shows(tmux: list[str], text: str) -> str:
    """Poll the terminal until `text` is on it, or fail at the deadline."""
    async with asyncio.timeout(DEADLINE):
        while text not in (screen := _capture(tmux)):
            await asyncio.sleep(POLL_SECONDS)
    return screen


def _start(tmux: list[str], command: list[str]) -> None:
    """Run `command` in a new tmux session, then show its exit status."""
    shell = f"cd {shlex.quote(str(ROOT))} && PYTHONPATH=. {shlex.join(command)}"
    shell += "; echo EXITED $?; sleep 60"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", shell],
        check=True,
    )


def _type(tmux: list[str], line: str) -> None:
    subprocess.run([*tmux, "send-keys", "-t", "chat", "-l", line], check=True)
    subprocess.run([*tmux, "send-keys", "-t", "chat", "Enter"], check=True)


async def test_plain_mode_in_a_terminal(
    tmux: list[str], cluster: Cluster, tmp_path: Path
) -> None:
    relay = await cluster.relay()
    command = [
        sys.executable,
        "-m",
        "chat",
        "--plain",
        "--home",
        str(tmp_path / "alice"),
        "--name",
        "alice",
        "--relay",
        relay.url,
        "--room",
        "tmux-room",
    ]
    _start(tmux, command)
    await _screen_shows(tmux, "ready as alice")
    bob = await cluster.client("bob", "--relay", relay.url, "--room", "tmux-room")
    await _screen_shows(tmux, "secure session with bob")

    _type(tmux, "hello from a terminal")
    await bob.wait_for("message", text="hello from a terminal")
    await bob.say("hello back")
    await _screen_shows(tmux, "bob: hello back")
    _type(tmux, "/who")
    await _screen_shows(tmux, "bob: here, secure, unverified")
    await bob.quit()
    await _screen_shows(tmux, "bob left")
    _type(tmux, "anyone?")
    _type(tmux, "/quit")
    screen = await _screen_shows(tmux, "EXITED 0")

    assert "delivered" in screen
    assert "1 message(s) NOT delivered" in screen
    assert "'anyone?' for bob" in screen


async def test_passphrase_is_asked_at_the_terminal_without_echo(
    tmux: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "alice"
    home.mkdir()
    identity = Identity.generate()
    identity.save(home / "identity.json", b"old-pass-42")
    command = [sys.executable, "-m", "chat", "--home", str(home), "id"]
    _start(tmux, [*command, "--set-passphrase"])

    await _screen_shows(tmux, "Identity passphrase:")
    _type(tmux, "wrong-pass-13")
    await _screen_shows(tmux, "try again")
    _type(tmux, "old-pass-42")
    await _screen_shows(tmux, "New identity passphrase:")
    _type(tmux, "new-pass-97")
    await _screen_shows(tmux, "The same passphrase again:")
    _type(tmux, "new-pass-97")
    screen = await _screen_shows(tmux, "EXITED 0")

    assert identity.public.fingerprint() in screen
    assert "pass-" not in screen
    loaded = Identity.load(home / "identity.json", b"new-pass-97")
    assert loaded.public == identity.public
