"""Imports flow one way: user interfaces -> client networking -> protocol core.

The relay reads the envelope and nothing of the crypto; the protocol core is
sans-I/O. These rules are checked on the source (every import statement) and,
for the relay, on what a running interpreter actually loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Modules a part of the code base may not import (prefix match).
FORBIDDEN = {
    "server": ("nacl", "chat.core", "chat.client", "chat.ui", "chat.demo"),
    "chat/core": (
        "asyncio",
        "socket",
        "websockets",
        "logging",
        "server",
        "chat.client",
        "chat.transport",
        "chat.ui",
        "chat.demo",
        "chat.envelope",
    ),
    "chat/envelope.py": ("nacl", "chat.core", "asyncio", "websockets", "server"),
    "chat/client.py": ("chat.ui", "chat.demo", "chat.cli", "server"),
    "chat/transport.py": ("chat.ui", "chat.demo", "chat.cli", "server"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _files(part: str) -> list[Path]:
    target = ROOT / part
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def _breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in forbidden)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_flow_one_way(part: str) -> None:
    files = _files(part)
    assert files, f"{part} has no Python file"
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imports(path))
        if _breaks(name, FORBIDDEN[part])
    ]
    assert wrong == []


def test_a_running_relay_loads_no_crypto() -> None:
    probe = (
        "import sys, server.__main__, server.relay, server.backends.sqlite\n"
        "loaded = [m for m in sys.modules if m == 'nacl' or m.startswith("
        "('nacl.', 'chat.core'))]\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
