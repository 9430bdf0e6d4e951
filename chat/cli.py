"""The `saltchat` command line: flags, subcommands, and wiring.

    saltchat [FLAGS]              chat in a room (by name) through a relay
    saltchat [FLAGS] id           print my identity fingerprint
    saltchat id --set-passphrase  protect the identity with a passphrase
    saltchat [FLAGS] invite       make an invite code for a new room, and join it
    saltchat [FLAGS] join CODE    join the room of an invite code
    saltchat demo [...]           the live key-exchange demonstration

docs/cli.md describes every flag, the environment variables and the JSON
contract. Bad flags exit with status 2 and a usage message; a setup problem
(unreadable identity, bad invite code, home not writable) exits with status
1 and one line saying what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from chat.client import ChatClient, ClientEvent, sanitize_nick
from chat.core.errors import KeyFileError
from chat.core.identity import Identity
from chat.core.rooms import RoomKeys
from chat.core.teaching import TeachingEvent
from chat.envelope import mailbox_address
from chat.home import Home, HomeError, resolve_home
from chat.invite import Invite, InviteError, decode_invite, encode_invite
from chat.limits import DEFAULT_RELAY, DEFAULT_ROOM, MAX_ROOM_NAME_BYTES
from chat.passphrase import PassphraseError, load_identity, set_passphrase
from chat.steps import RECORDED_STEPS
from chat.transport import (
    DIRECT_PEER,
    DirectListener,
    Link,
    LinkError,
    check_url,
    connect_direct,
    connect_relay,
)
from chat.trust import TrustStore, TrustStoreError
from chat.ui.jsonmode import JsonRenderer
from chat.ui.lines import run_lines
from chat.ui.plain import PlainRenderer
from chat.ui.tui import TuiBridge, run_tui

__all__ = ["build_parser", "main"]

logger = logging.getLogger("chat.client")

# Handshake steps shown by --show-handshake: the ones /keys keeps, and
# rejected frames. Per-message steps ("seal", "open") are left out: a real
# session never prints message material.
_HANDSHAKE_STEPS = RECORDED_STEPS | {"rejected"}


class SetupError(Exception):
    """Something prevents starting; the message says what to do."""


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (for example 127.0.0.1:9000), got {value!r}"
        )
    return host.strip("[]"), int(port)


def _ws_url(value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(
            f"expected a ws:// or wss:// URL, got {value!r}"
        )
    try:
        return check_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _room_name(value: str) -> str:
    if not value.strip() or len(value.encode("utf-8")) > MAX_ROOM_NAME_BYTES:
        raise argparse.ArgumentTypeError(
            f"a room name is 1 to {MAX_ROOM_NAME_BYTES} bytes of text"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags may come before or after the subcommand)."""
    parser = argparse.ArgumentParser(
        prog="saltchat",
        description="End-to-end encrypted chat through a relay that reads nothing.",
        epilog="Commands in chat: /help /who /verify NICK /trust NICK /keys "
        "/rekey /quit.  Full guide: docs/cli.md",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["chat", "id", "invite", "join"],
        default="chat",
        help="what to do (default: chat); `saltchat demo` runs the demonstration",
    )
    parser.add_argument("code", nargs="?", help="the invite code, for `join`")
    parser.add_argument(
        "--relay",
        type=_ws_url,
        help=f"relay URL (env SALTCHAT_RELAY; default {DEFAULT_RELAY})",
    )
    parser.add_argument(
        "--room",
        type=_room_name,
        help=f"room name (env SALTCHAT_ROOM; default {DEFAULT_ROOM!r}); "
        "invite codes are safer: a name can be guessed",
    )
    parser.add_argument(
        "--name", help="your nickname (env SALTCHAT_NAME; default: your user name)"
    )
    parser.add_argument(
        "--home", help="home directory for identity and trust store (env SALTCHAT_HOME)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="line mode: NICK: text")
    mode.add_argument("--json", action="store_true", help="JSON lines (scripting)")
    direct = parser.add_mutually_exclusive_group()
    direct.add_argument(
        "--listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="direct mode: wait for a peer to --connect here (no relay)",
    )
    direct.add_argument(
        "--connect",
        type=_ws_url,
        metavar="ws://HOST:PORT",
        help="direct mode: connect to a peer started with --listen (no relay)",
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="the identity's passphrase, read from FILE (without it, a protected "
        "identity asks at the terminal)",
    )
    parser.add_argument(
        "--set-passphrase",
        action="store_true",
        help="with `id`: protect the identity with a new passphrase, or change it",
    )
    parser.add_argument(
        "--new-passphrase-file",
        metavar="FILE",
        help="with `id --set-passphrase`: read the new passphrase from FILE",
    )
    parser.add_argument(
        "--show-handshake",
        action="store_true",
        help="print the steps of this session's handshake (public values only)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output on stderr"
    )
    return parser


@dataclass
class _Plan:
    """Everything decided from the flags, before anything runs."""

    room: RoomKeys
    relay: str
    expected: str | None
    expected_address: bytes | None
    invite_code: str | None


def _plan(
    args: argparse.Namespace, identity: Identity, home: Home, environ: dict[str, str]
) -> _Plan:
    relay = args.relay or environ.get("SALTCHAT_RELAY") or DEFAULT_RELAY
    try:
        check_url(relay)
    except ValueError as exc:
        raise SetupError(f"SALTCHAT_RELAY: {exc}") from exc
    if args.command == "join":
        if not args.code:
            raise SetupError(
                "usage: saltchat join CODE (the code from `saltchat invite`)"
            )
        try:
            invite = decode_invite(args.code)
        except InviteError as exc:
            raise SetupError(f"bad invite code: {exc}") from exc
        own = identity.public.fingerprint()
        expected = None if invite.fingerprint == own else invite.fingerprint
        # Over a direct link the one peer stands at DIRECT_PEER, and the
        # inviter is whoever is at the other end.
        direct = bool(args.connect or args.listen)
        address = DIRECT_PEER if direct else invite.address
        return _Plan(
            RoomKeys.from_secret(invite.room_secret),
            args.relay or invite.relay,
            expected,
            None if expected is None else address,
            None,
        )
    if args.code:
        raise SetupError(f"unexpected argument {args.code!r}; only `join` takes a code")
    if args.command == "invite":
        # The code names our address in the new room, from the mailbox
        # token this home keeps for it (the one _connector presents).
        secret = RoomKeys.new_secret()
        room = RoomKeys.from_secret(secret)
        address = mailbox_address(home.mailbox_token(room.room_id))
        fingerprint = identity.public.fingerprint()
        code = encode_invite(Invite(secret, fingerprint, address, relay))
        return _Plan(room, relay, None, None, code)
    name = args.room or environ.get("SALTCHAT_ROOM") or DEFAULT_ROOM
    if not args.room:
        # The flag's value was checked by argparse; the variable's is not.
        try:
            _room_name(name)
        except argparse.ArgumentTypeError as exc:
            raise SetupError(f"SALTCHAT_ROOM: {exc}") from exc
    return _Plan(RoomKeys.from_name(name), relay, None, None, None)


def _connector(
    args: argparse.Namespace, plan: _Plan, home: Home
) -> tuple[Callable[[], Awaitable[Link]], DirectListener | None, dict[str, str]]:
    if args.connect:
        url = args.connect
        return (lambda: connect_direct(url)), None, {"mode": "direct", "connect": url}
    if args.listen:
        listener = DirectListener()
        return listener.accept, listener, {"mode": "direct"}
    token = home.mailbox_token(plan.room.room_id)
    room_id = plan.room.room_id
    relay = plan.relay
    return (
        (lambda: connect_relay(relay, room_id, token)),
        None,
        {"mode": "relay", "relay": relay},
    )


def _teacher(show: Callable[[ClientEvent], None]) -> Callable[[TeachingEvent], None]:
    def observe(event: TeachingEvent) -> None:
        if event.step in _HANDSHAKE_STEPS:
            show(
                ClientEvent(
                    "handshake",
                    {
                        "step": event.step,
                        "side": event.side,
                        "fields": dict(event.fields),
                    },
                )
            )

    return observe


def _choose_ui(args: argparse.Namespace) -> str:
    if args.json:
        return "json"
    if args.plain:
        return "plain"
    return "tui" if sys.stdin.isatty() and sys.stdout.isatty() else "plain"


async def _chat(args: argparse.Namespace, home: Home, identity: Identity) -> int:
    environ = dict(os.environ)
    plan = _plan(args, identity, home, environ)
    try:
        trust = TrustStore.load(home.trust_path)
    except TrustStoreError as exc:
        raise SetupError(str(exc)) from exc
    connect, listener, info = _connector(args, plan, home)
    ui = _choose_ui(args)
    show = _renderer(ui)

    if listener is not None:
        try:
            info["listening"] = await listener.start(*args.listen)
        except LinkError as exc:
            raise SetupError(str(exc)) from exc
    if plan.invite_code is not None:
        show(ClientEvent("invite", {"code": plan.invite_code}))

    nick = args.name or environ.get("SALTCHAT_NAME") or _user_name()
    client = ChatClient(
        identity=identity,
        room=plan.room,
        nick=nick,
        trust=trust,
        connect=connect,
        emit=show,
        expected_fingerprint=plan.expected,
        expected_address=plan.expected_address,
        observer=_teacher(show) if args.show_handshake else None,
    )
    client.ready_info = info
    try:
        return await _run_ui(ui, client, show)
    finally:
        if listener is not None:
            await listener.close()


def _user_name() -> str:
    try:
        return sanitize_nick(getpass.getuser())
    except (KeyError, OSError):
        return "anonymous"


def _renderer(ui: str) -> Callable[[ClientEvent], None]:
    if ui == "json":
        return JsonRenderer()
    if ui == "plain":
        return PlainRenderer()
    return TuiBridge()


async def _run_ui(
    ui: str, client: ChatClient, show: Callable[[ClientEvent], None]
) -> int:
    if ui == "tui":
        return await run_tui(client, show)
    return await run_lines(client, show, sys.stdin.buffer)


def _run_demo(argv: Sequence[str]) -> int:
    # The demonstration is its own module; this command only dispatches to it.
    if importlib.util.find_spec("chat.demo") is None:
        print(
            "saltchat: the demo is not available in this installation "
            "(module chat.demo is missing)",
            file=sys.stderr,
        )
        return 1
    demo = importlib.import_module("chat.demo")
    result: int | None = demo.main(list(argv))
    return result or 0


def _identity(args: argparse.Namespace, home: Home) -> Identity:
    """Load (or create) the identity, unlocking or protecting it as asked."""
    # The prompt needs a person at a terminal; getpass reads from it.
    interactive = sys.stdin.isatty()
    if args.set_passphrase:
        identity = set_passphrase(
            home.identity_path,
            args.passphrase_file,
            args.new_passphrase_file,
            interactive=interactive,
            notice=_notice,
        )
        _notice(f"{home.identity_path} is now protected by the new passphrase")
        return identity
    return load_identity(
        home.identity_path,
        args.passphrase_file,
        interactive=interactive,
        notice=_notice,
    )


def _notice(text: str) -> None:
    print(f"saltchat: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `saltchat` command; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return _run_demo(argv[1:])

    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.set_passphrase and args.command != "id":
        parser.error("--set-passphrase goes with the `id` command")
    if args.new_passphrase_file and not args.set_passphrase:
        parser.error("--new-passphrase-file goes with `id --set-passphrase`")
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # websockets dumps every frame at DEBUG, the JOIN with its mailbox token
    # among them: its own lines stop at warnings, whatever -v says.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        home = Home(resolve_home(args.home, os.environ))
        identity = _identity(args, home)
        if args.command == "id":
            print(identity.public.fingerprint())
            return 0
        return asyncio.run(_chat(args, home, identity))
    except (SetupError, HomeError, KeyFileError, PassphraseError) as exc:
        print(f"saltchat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
