"""The package exports exactly what docs/protocol.md says it does."""

from __future__ import annotations

import re
from pathlib import Path

import chat.core

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_names() -> set[str]:
    text = DOC.read_text()
    section = text.split("<!-- exports -->")[1].split("<!-- /exports -->")[0]
    return set(re.findall(r"`([A-Za-z_]+)`", section))


def test_all_matches_the_documented_api() -> None:
    assert set(chat.core.__all__) == documented_names()


def test_every_exported_name_exists() -> None:
    for name in chat.core.__all__:
        assert hasattr(chat.core, name), name


def test_every_error_kind_is_documented() -> None:
    text = DOC.read_text()
    kinds = {
        klass.default_kind
        for klass in vars(chat.core).values()
        if isinstance(klass, type)
        and issubclass(klass, chat.core.PeerError)
        and klass is not chat.core.PeerError
    }
    missing = {kind for kind in kinds if f"| {kind} |" not in text}
    assert not missing
