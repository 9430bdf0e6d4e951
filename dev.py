#!/usr/bin/env python3
"""Set-up-and-run entry point for a fresh checkout: needs only Python 3.11+.

    python3 dev.py demo    # the live key-exchange demonstration
    python3 dev.py test    # the whole test suite
    python3 dev.py lint    # ruff and mypy --strict, as CI runs them

Each command creates `.venv` beside this file on first use and installs the
project into it (editable, with the extras the command needs), then runs the
command inside it. Extra arguments are passed through to the command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".saltchat-installed"


def ensure_venv(extras: str) -> None:
    """Create the virtual environment and install the project with `extras`."""
    # This file is the first thing a new machine runs, possibly with an older
    # Python than the project supports: say so instead of failing later.
    if sys.version_info < (3, 11):  # noqa: UP036
        found = sys.version.split()[0]
        sys.exit(f"saltchat needs Python 3.11 or newer; this is {found}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    version = str((ROOT / "pyproject.toml").stat().st_mtime_ns)
    if _installed(set(filter(None, extras.split(","))), version):
        return
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    target = f".[{extras}]" if extras else "."
    subprocess.run([*pip, "-e", target], cwd=ROOT, check=True)
    previous = STAMP.read_text().split() if STAMP.exists() else []
    STAMP.write_text("\n".join([*previous, f"{extras or 'base'}:{version}"]) + "\n")


def _installed(extras: set[str], version: str) -> bool:
    """Whether an install of this pyproject.toml already covers `extras`.

    The stamp holds one `extras:version` line per install; an install with
    more extras serves a command that needs fewer ("base" means none).
    """
    if not STAMP.exists():
        return False
    for line in STAMP.read_text().split():
        done, _, stamped = line.rpartition(":")
        if stamped == version and extras <= set(done.split(",")) - {"base"}:
            return True
    return False


def run(argv: list[str]) -> int:
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def main() -> int:
    command, *rest = sys.argv[1:] or ["help"]
    python = str(BIN / "python")
    if command == "demo":
        ensure_venv("")
        return run([python, "-m", "chat", "demo", *rest])
    if command == "test":
        ensure_venv("test,redis")
        return run([python, "-m", "pytest", *rest])
    if command == "lint":
        ensure_venv("test,dev,redis")
        for argv in (
            [python, "-m", "ruff", "check", "."],
            [python, "-m", "ruff", "format", "--check", "."],
            [python, "-m", "mypy", "--strict", "chat", "server", "tests", "bench"],
        ):
            if code := run(argv):
                return code
        return 0
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main())
