"""`saltchat demo`: watch two clients agree on keys live over a real relay.

    saltchat demo            narrate the seven steps (pauses on a terminal)
    saltchat demo --step     pause for Enter before each step
    saltchat demo --no-step  run straight through
    saltchat demo --json     the narration as JSON lines (docs/demo.md)
    saltchat demo --plain    plain text even on a terminal

Exit status 0 when every check passed, 1 when one failed, 2 for bad flags.
docs/demo.md explains how to present it and the JSON format.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence

from chat.demo.narration import JsonSink, Narration, Pause, Sink, TextSink

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `saltchat demo`."""
    parser = argparse.ArgumentParser(
        prog="saltchat demo",
        description="A live key exchange between two clients over a real relay, "
        "narrated step by step, with three attacks by a meddling relay.",
        epilog="How to present it, and the JSON format: docs/demo.md",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--step",
        action="store_true",
        help="pause for Enter before each step (default on a terminal)",
    )
    pacing.add_argument(
        "--no-step",
        action="store_true",
        help="run straight through (default when not on a terminal)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="write the narration as JSON lines"
    )
    output.add_argument(
        "--plain", action="store_true", help="plain text, no colour, even on a terminal"
    )
    return parser


def _sink(args: argparse.Namespace) -> Sink:
    if args.json:
        return JsonSink(sys.stdout)
    return TextSink(sys.stdout, rich=sys.stdout.isatty() and not args.plain)


def _pacing(args: argparse.Namespace) -> Pause | None:
    # A presenter at a terminal gets pauses by default; a pipe never waits.
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    if args.no_step or not (args.step or on_terminal):
        return None
    finished = False

    async def wait_for_enter(_step: int) -> None:
        nonlocal finished
        if not finished:
            finished = await _read_line() == ""

    return wait_for_enter


async def _read_line() -> str:
    """Read one line of stdin while the relay and the clients keep running.

    A daemon thread, not the default executor: Ctrl-C during a pause must
    end the demo at once, not wait for a line that never comes.
    """
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        loop.call_soon_threadsafe(deliver, sys.stdin.readline())

    threading.Thread(target=read, name="demo-enter", daemon=True).start()
    return await line


def main(argv: Sequence[str] | None = None) -> int:
    """Run `saltchat demo`; return the exit status."""
    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    # Library warnings (a closing connection, say) would break the layout.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    narration = Narration(_sink(args))

    # Imported here: the client imports chat.demo.narration for
    # --show-handshake, and must not load the relay with it.
    from chat.demo.scenes import run_demo  # noqa: PLC0415

    try:
        ok = asyncio.run(run_demo(narration, pause=_pacing(args)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`); say nothing more on that pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0 if ok else 1
