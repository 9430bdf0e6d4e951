"""Relay settings: flags, environment, bounds, and their documentation."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from chat.envelope import MAX_PAYLOAD
from server.config import ConfigError, RelayConfig, env_name, load_config
from tests.relay_helpers import ROOT


def test_defaults_match_the_envelope_contract() -> None:
    config = load_config([], {})
    assert config.max_message == 65536
    assert config.max_payload == MAX_PAYLOAD
    assert config.mailbox_ttl == 7 * 24 * 3600
    assert config.port == 8765


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    env = {"SALTCHAT_RELAY_RATE": "5", "SALTCHAT_RELAY_BURST": "7"}
    config = load_config(["--rate", "9"], env)
    assert (config.rate, config.burst) == (9.0, 7)


@pytest.mark.parametrize("spec", dataclasses.fields(RelayConfig), ids=lambda f: f.name)
def test_every_setting_reads_from_its_environment_variable(
    spec: dataclasses.Field[object],
) -> None:
    text = {
        "log_format": "json",
        "log_level": "debug",
        "max_message": "4096",
        "outbound_bytes": "4096",
    }.get(spec.name, "3")
    if spec.name in ("tls_cert", "tls_key"):
        env = {env_name("tls_cert"): "c.pem", env_name("tls_key"): "k.pem"}
    else:
        env = {env_name(spec.name): text}
    config = load_config([], env)
    assert str(getattr(config, spec.name)).startswith(env.get(env_name(spec.name), ""))
    assert getattr(config, spec.name) != spec.default


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SALTCHAT_RELAY_PORT='x' is not a valid int"):
        load_config([], {"SALTCHAT_RELAY_PORT": "x"})


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--max-message", "70000"], "--max-message must be at most 65536"),
        (["--max-members-per-room", "5000"], "--max-members-per-room must be at most"),
        (["--rate", "0"], "--rate must be at least"),
        (["--log-format", "xml"], "--log-format must be 'text' or 'json'"),
        (["--log-level", "bogus"], "--log-level must be 'debug', 'info'"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    ],
)
def test_out_of_range_settings_are_refused(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(argv, {})


def test_every_flag_and_variable_is_documented() -> None:
    docs = (ROOT / "docs" / "relay.md").read_text()
    for spec in dataclasses.fields(RelayConfig):
        flag = "--" + spec.name.replace("_", "-")
        assert f"`{flag}`" in docs, flag
        assert env_name(spec.name) in docs, env_name(spec.name)


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["saltchat-relay"] == "server.__main__:main"
