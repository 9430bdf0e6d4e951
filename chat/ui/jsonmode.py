"""`--json`: the scripting contract, one JSON object per stdout line.

Every line on stdout is one object with an `"event"` field; docs/cli.md lists
the events and their fields, and they are kept stable (new fields and new
events may be added; consumers ignore what they do not know). stdin lines
are messages, or commands when they start with `/`. Diagnostics go to stderr
as log lines, never to stdout.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from chat.client import ClientEvent

__all__ = ["JsonRenderer"]


class JsonRenderer:
    """Writes each event as one JSON line, flushed at once."""

    def __init__(self, out: TextIO | None = None) -> None:
        """Write to `out` (default: stdout)."""
        self._out = out or sys.stdout

    def __call__(self, event: ClientEvent) -> None:
        """Print one event."""
        line = json.dumps(event.as_dict(), ensure_ascii=False, sort_keys=True)
        self._out.write(line + "\n")
        self._out.flush()
