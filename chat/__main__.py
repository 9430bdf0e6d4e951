"""`python -m chat` and the `saltchat` console script."""

from __future__ import annotations

import sys

from chat.cli import main as _main

__all__ = ["main"]


def main() -> None:
    """Entry point of the `saltchat` console script."""
    sys.exit(_main())


if __name__ == "__main__":
    main()
