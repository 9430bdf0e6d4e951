"""Line-driven interfaces (plain and JSON): stdin in, events out.

Each stdin line is a message, or a command if it starts with `/`. Input is
hostile until checked: a line longer than the bound, or not UTF-8, gets a
clear `error` event and is skipped; the client keeps running.

End of input does not drop anything: the client stays until every message
has its receipt, then leaves. Ctrl-C (SIGINT), SIGTERM and `/quit` leave at
once, and the `closed` event lists what is undelivered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from typing import BinaryIO

from chat.client import ChatClient, ClientEvent
from chat.commands import handle_line
from chat.limits import MAX_INPUT_LINE_BYTES

__all__ = ["read_lines", "run_lines"]

_EOF = None
_CHUNK = 65536


def read_lines(
    read: Callable[[int], bytes],
    deliver: Callable[[bytes | ValueError | None], None],
    limit: int = MAX_INPUT_LINE_BYTES,
) -> None:
    """Split what `read` returns into lines (in a thread), bounding each.

    Calls `deliver` with each line (bytes, without the newline), with a
    ValueError describing a line over `limit` (skipped whole), and with None
    at end of input. Never holds more than `limit` bytes of one line.
    """
    pending = b""
    skipping = False
    while chunk := read(_CHUNK):
        pending += chunk
        while True:
            line, newline, rest = pending.partition(b"\n")
            if not newline:
                break
            pending = rest
            if skipping:
                skipping = False
            elif len(line.rstrip(b"\r")) > limit:
                deliver(ValueError(f"input line longer than {limit} bytes; skipped"))
            else:
                deliver(line.rstrip(b"\r"))

        # Too long and no newline yet: drop what we have, report it once.
        if len(pending) > limit:
            if not skipping:
                deliver(ValueError(f"input line longer than {limit} bytes; skipped"))
            skipping = True
            pending = b""
    if pending and not skipping:
        deliver(pending.rstrip(b"\r"))
    deliver(_EOF)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"input line is not valid UTF-8 (byte {exc.start}); skipped"
        ) from exc


async def run_lines(
    client: ChatClient, show: Callable[[ClientEvent], None], stdin: BinaryIO
) -> int:
    """Drive `client` from `stdin` until /quit, a signal, or end of input.

    Returns:
        The process exit status (0).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | ValueError | None] = asyncio.Queue()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    # A daemon thread, so that a read blocked on a terminal never keeps the
    # process alive after /quit. It reads the file descriptor directly: a
    # daemon thread blocked inside a buffered reader aborts the interpreter
    # at exit (the reader's lock cannot be taken).
    fd = stdin.fileno()
    threading.Thread(
        target=read_lines,
        args=(
            lambda size: os.read(fd, size),
            lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
        ),
        daemon=True,
        name="stdin",
    ).start()

    running = asyncio.create_task(client.run())
    inputs = asyncio.create_task(_consume(client, show, queue, stop))
    await stop.wait()
    inputs.cancel()
    await client.close()
    await running
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
    return 0


async def _consume(
    client: ChatClient,
    show: Callable[[ClientEvent], None],
    queue: asyncio.Queue[bytes | ValueError | None],
    stop: asyncio.Event,
) -> None:
    while True:
        item = await queue.get()
        if item is _EOF:
            # Stay until every message is delivered (Ctrl-C leaves sooner).
            await client.drained.wait()
            stop.set()
            return
        try:
            if isinstance(item, ValueError):
                raise item
            line = _decode(item)
        except ValueError as exc:
            show(ClientEvent("error", {"detail": str(exc)}))
            continue
        if not line.strip():
            continue

        outcome = handle_line(client, line)
        for event in outcome.events:
            show(event)
        if outcome.quit:
            stop.set()
            return
