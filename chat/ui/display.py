"""Text from the network made safe to show to a person.

A peer chooses its message text and its nickname, and a relay chooses its
close reasons and refusals: all of it is hostile. Shown raw, a newline
starts what looks like a message from someone else, an escape sequence
drives the terminal, and a bidi override reverses what the eye reads. Every
human-facing renderer (plain lines, the terminal interface, the handshake
steps) passes such text through this module; the `--json` mode does not,
because JSON escapes it and scripts need the exact text.

- Control characters (Unicode category Cc: C0, DEL, C1), format characters
  (Cf: bidi embeddings, overrides and isolates, invisible marks) and lone
  surrogates (Cs) become U+FFFD, visible where they were. A tab becomes one
  space. Zero width joiner and non-joiner (U+200D, U+200C) are kept: they
  cannot move text or the cursor, and emoji sequences and scripts such as
  Persian need them.
- A line break (anything `str.splitlines` splits on, including U+2028 and
  U+2029) never starts a line of its own: a message shows its further lines
  as continuation lines, each led by :data:`CONTINUATION`; a field shown
  inside a notice gets U+FFFD instead.
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["CONTINUATION", "REPLACEMENT", "clean_fields", "clean_line", "text_lines"]

CONTINUATION = "  | "
"""Leads each further line of a message, so it cannot pass for `NICK: text`."""

REPLACEMENT = "\ufffd"
"""Shown in place of a control or format character."""

_KEPT = frozenset({"\u200c", "\u200d"})
# Zl and Zp are the line and paragraph separators (U+2028, U+2029).
_REPLACED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _safe_char(char: str) -> str:
    if char == "\t":
        return " "
    if char in _KEPT or unicodedata.category(char) not in _REPLACED_CATEGORIES:
        return char
    return REPLACEMENT


def clean_line(text: str) -> str:
    """`text` as one safe line: every control, format or break character
    replaced (a tab by a space, the rest by U+FFFD)."""
    # Most text is plain: one pass over it to check costs less than rebuilding.
    if text.isprintable():
        return text
    return "".join(_safe_char(char) for char in text)


def text_lines(text: str) -> list[str]:
    """`text` split at its line breaks, each line made safe by clean_line.

    Always at least one line (empty text is one empty line).
    """
    return [clean_line(line) for line in text.splitlines()] or [""]


def clean_fields(value: Any) -> Any:
    """A copy of an event's fields with every string (keys too) made one safe
    line by clean_line; other values are kept as they are."""
    if isinstance(value, str):
        return clean_line(value)
    if isinstance(value, dict):
        return {clean_fields(key): clean_fields(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_fields(item) for item in value]
    return value
