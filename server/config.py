"""Every setting and bound of the relay, with its default, in one place.

Each field of `RelayConfig` is a command-line flag (``--max-message``) and an
environment variable (``SALTCHAT_RELAY_MAX_MESSAGE``); a flag given on the
command line wins over the environment, which wins over the default.
docs/relay.md lists every field with its flag, variable and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chat.envelope import DELIVER_HEADER_SIZE, JOINED_MAX_MEMBERS, MAX_MESSAGE_SIZE

__all__ = [
    "ENV_PREFIX",
    "PRESENCE_BEATS",
    "ConfigError",
    "RelayConfig",
    "build_parser",
    "load_config",
]

ENV_PREFIX = "SALTCHAT_RELAY_"

DAY = 24 * 3600

PRESENCE_BEATS = 3
"""Presence heartbeats per ``--presence-ttl``: a member outlives two missed beats."""


class ConfigError(ValueError):
    """A setting is out of range; the message names the flag and the range."""


def _setting(default: Any, help: str, *, low: float | None = None) -> Any:
    """Declare one setting: its default, its doc line, its lowest value."""
    return field(default=default, metadata={"help": help, "low": low})


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay's settings. Field names are the flags without ``--``."""

    # Serving.
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8765, "TCP port; 0 picks a free one", low=0)
    data_dir: str = _setting("saltchat-relay-data", "directory of the SQLite mailbox")
    tls_cert: str | None = _setting(None, "TLS certificate (PEM) to serve wss://")
    tls_key: str | None = _setting(None, "TLS private key (PEM) for --tls-cert")
    redis: str | None = _setting(
        None, "Redis URL: share rooms and mailboxes between relays"
    )
    log_format: str = _setting("text", "log lines as 'text' or 'json'")
    log_level: str = _setting("info", "debug, info, warning or error")

    # Limits per message and per connection (protocol.md, "Envelope").
    max_message: int = _setting(
        MAX_MESSAGE_SIZE,
        "largest WebSocket message in bytes; larger closes 1009",
        low=128,
    )
    rate: float = _setting(
        100.0, "frames per second a connection may send (token bucket)", low=0.001
    )
    burst: int = _setting(200, "frames a connection may send at once", low=1)
    join_rate: float = _setting(
        1.0,
        "JOINs and LEAVEs per second a connection may send, apart from --rate;"
        " more close 1008",
        low=0.001,
    )
    join_burst: int = _setting(
        32, "JOINs and LEAVEs a connection may send at once", low=1
    )
    max_connections_per_address: int = _setting(
        32, "open connections per client IP address; more close 1013", low=1
    )
    max_connections: int = _setting(10000, "open connections in all", low=1)
    max_rooms_per_connection: int = _setting(
        16, "rooms one connection may join; more close 1008", low=1
    )
    max_members_per_room: int = _setting(
        256, "members present in a room; more close 1008", low=2
    )
    join_timeout: float = _setting(
        10.0, "seconds to send the first JOIN; later closes 1008", low=0.01
    )
    idle_timeout: float = _setting(
        900.0, "seconds without any message either way; then close 4001", low=0.01
    )
    ping_interval: float = _setting(20.0, "seconds between keepalive pings", low=0.01)
    ping_timeout: float = _setting(20.0, "seconds to answer a ping", low=0.01)
    outbound_frames: int = _setting(
        1024, "frames queued to one connection; more close 4000", low=1
    )
    outbound_bytes: int = _setting(
        1 << 20, "bytes queued to one connection; more close 4000", low=1024
    )

    # The mailbox.
    mailbox_ttl: float = _setting(
        7.0 * DAY, "seconds a stored frame and a membership are kept", low=1
    )
    mailbox_max_frames: int = _setting(1000, "frames one mailbox may hold", low=1)
    mailbox_max_bytes: int = _setting(
        16 << 20, "payload bytes one mailbox may hold", low=1
    )
    mailbox_sender_frames: int = _setting(
        500,
        "frames one sender may hold in one mailbox; more are refused (0x10)",
        low=1,
    )
    mailbox_sender_bytes: int = _setting(
        8 << 20,
        "payload bytes one sender may hold in one mailbox; more are refused (0x10)",
        low=1,
    )
    store_max_frames: int = _setting(
        1_000_000,
        "frames all mailboxes together may hold; more are refused (0x12)",
        low=1,
    )
    store_max_bytes: int = _setting(
        1 << 30,
        "payload bytes all mailboxes together may hold; more are refused (0x12)",
        low=1,
    )
    membership_probation: float = _setting(
        3600.0,
        "seconds a never used membership is kept after last seen (at most the TTL)",
        low=1,
    )
    new_memberships_per_connection: int = _setting(
        32, "memberships one connection may create; more close 1008", low=1
    )
    new_memberships_per_address: int = _setting(
        64,
        "memberships one client IP address may create per hour; more close 1013",
        low=1,
    )
    mailbox_batch: int = _setting(64, "stored frames fetched at a time", low=1)
    purge_interval: float = _setting(
        600.0, "seconds between removals of expired frames", low=0.01
    )

    # Scale-out through Redis (used only with --redis; see docs/relay.md).
    redis_prefix: str = _setting("saltchat", "prefix of every Redis key and channel")
    redis_timeout: float = _setting(
        2.0, "seconds a Redis command may take before it counts as failed", low=0.05
    )
    redis_connections: int = _setting(
        32, "most connections to Redis from one relay", low=2
    )
    redis_backoff: float = _setting(
        5.0, "most seconds between attempts to reconnect to Redis", low=0.05
    )
    presence_ttl: float = _setting(
        15.0,
        "seconds a member stays present after its relay's last heartbeat"
        " (a relay beats PRESENCE_BEATS times per ttl)",
        low=0.1,
    )

    # Stopping.
    shutdown_timeout: float = _setting(
        10.0, "seconds to close connections on SIGTERM before exiting", low=0.01
    )

    @property
    def max_payload(self) -> int:
        """Largest payload accepted: a DELIVER carrying it fits one message."""
        return self.max_message - DELIVER_HEADER_SIZE - 2

    def check(self) -> RelayConfig:
        """Check every bound; return self.

        Raises:
            ConfigError: a setting is out of range.
        """
        for spec in dataclasses.fields(self):
            low = spec.metadata["low"]
            value = getattr(self, spec.name)
            if low is not None and value < low:
                raise ConfigError(f"--{_flag(spec.name)} must be at least {low}")

        if self.max_message > MAX_MESSAGE_SIZE:
            raise ConfigError(f"--max-message must be at most {MAX_MESSAGE_SIZE}")
        if self.max_members_per_room > JOINED_MAX_MEMBERS + 1:
            raise ConfigError(
                f"--max-members-per-room must be at most {JOINED_MAX_MEMBERS + 1}"
                " (a JOINED must list the others in one message)"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError("--log-format must be 'text' or 'json'")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                "--log-level must be 'debug', 'info', 'warning' or 'error'"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        return self

    @property
    def presence_interval(self) -> float:
        """Seconds between presence heartbeats (with ``--redis``)."""
        return self.presence_ttl / PRESENCE_BEATS

    @property
    def mailbox_path(self) -> Path:
        """Where the SQLite mailbox lives."""
        return Path(self.data_dir) / "mailbox.sqlite3"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    return ENV_PREFIX + name.upper()


def _kind(spec: dataclasses.Field[Any]) -> type:
    """The Python type a setting's text converts to."""
    text = str(spec.type)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def build_parser() -> argparse.ArgumentParser:
    """A parser with one flag per setting, defaults shown in --help."""
    parser = argparse.ArgumentParser(
        prog="saltchat-relay",
        description="Relay for saltchat: forwards end-to-end encrypted frames "
        "it cannot read, and keeps them for members who are away.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> in the environment.",
    )
    for spec in dataclasses.fields(RelayConfig):
        parser.add_argument(
            f"--{_flag(spec.name)}",
            dest=spec.name,
            type=_kind(spec),
            default=None,
            metavar=spec.name.upper(),
            help=f"{spec.metadata['help']} (default: {spec.default})",
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> RelayConfig:
    """Build the configuration from flags, then environment, then defaults.

    Raises:
        ConfigError: a value does not parse or is out of range.
        SystemExit: argparse rejected the command line (it prints why).
    """
    environ = os.environ if environ is None else environ
    given = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(RelayConfig):
        if given[spec.name] is not None:
            values[spec.name] = given[spec.name]
            continue

        # Fall back to the environment, converted like the flag would be.
        text = environ.get(env_name(spec.name))
        if text is not None:
            try:
                values[spec.name] = _kind(spec)(text)
            except ValueError:
                kind = _kind(spec).__name__
                raise ConfigError(
                    f"{env_name(spec.name)}={text!r} is not a valid {kind}"
                ) from None
    return RelayConfig(**values).check()
