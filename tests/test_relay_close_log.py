"""The relay logs a client's close reason without letting it forge log lines."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tests.relay_helpers import DEADLINE, Client, running_relay

# A close reason (at most 123 bytes) that would end the log line and forge
# another, then clear the screen of whoever reads the log in a terminal.
FORGED = "bye\nclosed peer=aaaa code=1000 reason=- rooms=0\x1b[2J"


class _Closes(logging.Handler):
    """Collects the relay's "closed" lines and signals the first one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if line.startswith("closed peer="):
            self.lines.append(line)
            self.seen.set()


async def test_close_reason_is_logged_on_one_line_without_controls(
    tmp_path: Path,
) -> None:
    closes = _Closes()
    logger = logging.getLogger("server.relay")
    level = logger.level
    logger.addHandler(closes)
    logger.setLevel(logging.INFO)
    try:
        async with running_relay(tmp_path) as relay:
            client = await Client.open(relay.url)
            await client.websocket.close(1000, FORGED)
            await asyncio.wait_for(closes.seen.wait(), DEADLINE)
    finally:
        logger.removeHandler(closes)
        logger.setLevel(level)

    (line,) = closes.lines
    assert "code=1000" in line
    assert "\n" not in line and "\x1b" not in line
