"""The client's home directory: identity, trust store, mailbox tokens.

Layout (directories 0700, files 0600)::

    HOME/
      identity.json        long-term identity key pair (written by chat.core)
      trust.json           pinned peer identities (chat.trust)
      rooms/
        <room id hex>.token   32-byte mailbox token for that room, in hex

The home is chosen, first match wins: `--home DIR`, `$SALTCHAT_HOME`,
`$XDG_DATA_HOME/saltchat`, `~/.local/share/saltchat`.

A mailbox token is the secret that proves ownership of a mailbox at the relay
(protocol.md, "Envelope"). It is kept per room so that the member's address
in that room is stable across runs and stored frames reach the next run.
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from chat.core.identity import write_private

__all__ = ["Home", "HomeError", "resolve_home", "write_private"]


_TOKEN_SIZE = 32


class HomeError(OSError):
    """The home directory or one of its files cannot be used."""


def resolve_home(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """Pick the home directory from the flag, then the environment.

    Args:
        explicit: the `--home` flag, or None.
        environ: the process environment.

    Returns:
        The home directory path (not created yet).
    """
    if explicit:
        return Path(explicit).expanduser()
    if environ.get("SALTCHAT_HOME"):
        return Path(environ["SALTCHAT_HOME"]).expanduser()
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]).expanduser() / "saltchat"
    return Path.home() / ".local" / "share" / "saltchat"


class Home:
    """One home directory, created with private permissions on first use."""

    def __init__(self, root: Path) -> None:
        """Open (and create if needed) the home at `root`.

        Raises:
            HomeError: the directory cannot be created or is not a directory.
        """
        self.root = root
        self._make_private_dir(root)
        self._make_private_dir(root / "rooms")

    @staticmethod
    def _make_private_dir(path: Path) -> None:
        # 0700 so that other local users cannot list rooms or read tokens.
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.is_dir():
                raise HomeError(f"{path} exists and is not a directory")
            if stat.S_IMODE(path.stat().st_mode) != 0o700:
                path.chmod(0o700)
        except HomeError:
            raise
        except OSError as exc:
            raise HomeError(
                f"cannot use {path} as the saltchat home ({exc.strerror}); "
                "choose another with --home or SALTCHAT_HOME"
            ) from exc

    @property
    def identity_path(self) -> Path:
        """Where the long-term identity key file lives."""
        return self.root / "identity.json"

    @property
    def trust_path(self) -> Path:
        """Where the trust store lives."""
        return self.root / "trust.json"

    def mailbox_token(self, room_id: bytes) -> bytes:
        """Return this home's mailbox token for a room, creating it once.

        Args:
            room_id: the 32-byte room id sent to the relay.

        Returns:
            The 32-byte token; the same on every run with this home.

        Raises:
            HomeError: the token file exists but is not a valid token.
        """
        path = self.root / "rooms" / f"{room_id.hex()}.token"
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            token = secrets.token_bytes(_TOKEN_SIZE)
            write_private(path, token.hex().encode("ascii") + b"\n")
            return token
        except (OSError, UnicodeDecodeError) as exc:
            raise HomeError(f"cannot read mailbox token {path}: {exc}") from exc

        try:
            token = bytes.fromhex(text)
        except ValueError:
            token = b""
        if len(token) != _TOKEN_SIZE:
            raise HomeError(
                f"mailbox token {path} is corrupt; delete it to get a new address "
                "in that room (frames stored for the old one are then lost)"
            )
        return token
