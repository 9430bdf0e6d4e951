"""`saltchat-relay` / `python -m server`: run a relay until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from server.backends.base import StorageUnavailable
from server.config import ConfigError, RelayConfig, load_config
from server.logs import setup_logging
from server.relay import BackendMissing, Relay

__all__ = ["main"]

logger = logging.getLogger("server.relay")

EXIT_CONFIG = 2
"""Exit status for a configuration the relay cannot run with."""


async def serve(config: RelayConfig) -> int:
    """Run a relay until a stop signal; return the exit status."""
    # SIGTERM (docker stop) and SIGINT (Ctrl-C) both stop gracefully. The
    # handlers go in before the relay starts: whoever reads the "serving"
    # line may signal at once, and must not meet the default (kill) action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    relay = Relay(config)
    try:
        await relay.start()
    except (BackendMissing, StorageUnavailable, OSError) as exc:
        logger.error("cannot start: %s", exc)
        await relay.stop()
        return EXIT_CONFIG

    await stop.wait()
    await relay.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"saltchat-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_format, config.log_level)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
