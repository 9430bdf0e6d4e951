"""Log set-up of the relay: text lines by default, JSON lines on request.

Level policy: INFO for start, stop, and each connection opened and closed;
WARNING for refusals caused by storage and for closes the relay imposed;
ERROR for failures of the relay itself; DEBUG for joins and leaves (room ids
cut to 4 bytes). Payloads, full room ids and tokens are never logged at any
level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

__all__ = ["JsonFormatter", "setup_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Send the relay's and websockets' logs to `stream` (stderr by default).

    Args:
        fmt: "text" or "json".
        level: a level name such as "info".
        stream: where lines go.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    # websockets logs each handshake failure at INFO and below; keep warnings.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
