"""The relay as a real subprocess: restart durability, SIGTERM, compose, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat.envelope import Ack, Presence, Status, encode
from server import __main__ as relay_main
from tests.relay_helpers import (
    DEADLINE,
    ROOT,
    Client,
    RelayProcess,
    compose_command,
    compose_environment,
    http_get,
)

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    """Relay subprocesses started by a test, killed at its end."""
    started: list[RelayProcess] = []
    yield started
    for process in started:
        process.stop()


def start(
    processes: list[RelayProcess],
    tmp_path: Path,
    *argv: str,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> RelayProcess:
    log = tmp_path / f"relay-{len(processes)}.log"
    process = RelayProcess(argv, log, env=env, command=command)
    processes.append(process)
    process.wait_serving()
    return process


async def test_killed_relay_loses_no_acknowledged_frame(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    data = ["--port", "0", "--data-dir", str(tmp_path / "data")]
    relay = start(processes, tmp_path, *data)
    room_id = os.urandom(32)
    sender, absent = await Client.open(relay.url), await Client.open(relay.url)
    await sender.join(room_id)
    await absent.join(room_id)
    await sender.expect(Presence)
    await absent.close()
    await sender.expect(Presence)

    # Every frame the relay answered "stored" must survive a SIGKILL.
    payloads = [os.urandom(100 + n) for n in range(20)]
    for number, payload in enumerate(payloads):
        await sender.send_to(room_id, absent.address, payload, number)
        assert (await sender.result()).status == Status.STORED
    relay.process.send_signal(signal.SIGKILL)
    relay.process.wait(DEADLINE)

    again = start(processes, tmp_path, *data)
    back = await Client.open(again.url)
    back.token, back.address = absent.token, absent.address
    await back.join(room_id)
    delivered = [await back.deliver() for _ in payloads]
    assert [d.payload for d in delivered] == payloads
    await back.send(encode(Ack(room_id, delivered[0].frame_id)))
    await back.close()


async def test_sigterm_closes_1001_and_exits_0(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    relay = start(processes, tmp_path, "--port", "0", "--data-dir", str(tmp_path))
    client = await Client.open(relay.url)
    await client.join(os.urandom(32))

    relay.process.send_signal(signal.SIGTERM)
    code, _ = await client.closed()
    assert code == 1001
    assert await asyncio.to_thread(relay.process.wait, DEADLINE) == 0
    assert "stopped" in relay.log_text()


async def test_sigint_stops_too(tmp_path: Path, processes: list[RelayProcess]) -> None:
    relay = start(processes, tmp_path, "--port", "0", "--data-dir", str(tmp_path))
    relay.process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(relay.process.wait, DEADLINE) == 0


def test_json_logs_from_the_environment(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    relay = start(
        processes,
        tmp_path,
        env={
            "SALTCHAT_RELAY_LOG_FORMAT": "json",
            "SALTCHAT_RELAY_PORT": "0",
            "SALTCHAT_RELAY_DATA_DIR": str(tmp_path),
        },
    )
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(DEADLINE) == 0
    entries = [json.loads(line) for line in relay.log_text().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert f"serving {relay.url}" in messages
    assert all(
        entry["logger"].startswith(("server", "websockets")) for entry in entries
    )


def test_compose_command_serves_and_passes_its_healthcheck(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    command = compose_command(COMPOSE)
    assert command[0] == "saltchat-relay"

    # Same flags as the compose service; only the port (free one) and the
    # data directory (the volume) differ on a test machine. Without the
    # compose file's Redis it runs embedded (tests/test_redis_topology.py
    # runs it with Redis).
    argv = command[1:]
    argv[argv.index("--port") + 1] = "0"
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "data")
    env = compose_environment(COMPOSE)
    env.pop("SALTCHAT_RELAY_REDIS", None)
    relay = start(
        processes,
        tmp_path,
        *argv,
        env=env,
        command=[sys.executable, "-m", "server"],
    )
    port = relay.url.rsplit(":", 1)[1]
    assert http_get(f"ws://127.0.0.1:{port}", "/healthz") == (200, "ok\n")

    healthcheck = [
        part.replace(":8765/", f":{port}/") for part in _compose_healthcheck()
    ]
    assert healthcheck != _compose_healthcheck()
    done = subprocess.run(healthcheck[1:], timeout=DEADLINE, check=False)
    assert done.returncode == 0


def _compose_healthcheck() -> list[str]:
    for line in COMPOSE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("test:"):
            test = json.loads(stripped.removeprefix("test:").strip())
            assert test[:2] == ["CMD", "python"]
            return [test[0], sys.executable, *test[2:]]
    raise AssertionError("no healthcheck test in the compose file")


def test_compose_file_is_valid() -> None:
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


def test_redis_without_its_backend_exits_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A None entry in sys.modules makes the import fail as if absent.
    monkeypatch.setitem(sys.modules, "server.backends.redis", None)
    status = relay_main.main(
        ["--redis", "redis://127.0.0.1:1", "--port", "0", "--data-dir", str(tmp_path)]
    )
    assert status == 2
    assert "Redis backend" in capsys.readouterr().err


def test_bad_setting_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert relay_main.main(["--burst", "0"]) == 2
    assert "--burst must be at least 1" in capsys.readouterr().err
