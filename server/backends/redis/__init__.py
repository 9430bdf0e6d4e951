"""Redis backends: several relay processes sharing rooms and mailboxes.

Selected with ``--redis URL`` (environment ``SALTCHAT_RELAY_REDIS``). The
relay calls `open_backends`; the mailbox (`RedisMailbox`, streams) and the
fan-out (`RedisFanout`, sharded pub/sub and presence with heartbeats) share
one client. Operating it is described in docs/relay.md, "Scale-out".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from server.backends.base import MailboxBounds, StorageUnavailable
from server.backends.redis.fanout import RedisFanout
from server.backends.redis.link import RedisLink, redacted
from server.backends.redis.mailbox import RedisMailbox
from server.config import RelayConfig

__all__ = ["RedisFanout", "RedisLink", "RedisMailbox", "open_backends"]

logger = logging.getLogger("server.relay")


async def open_backends(
    config: RelayConfig, clock: Callable[[], float] = time.time
) -> tuple[RedisMailbox, RedisFanout]:
    """Make the Redis mailbox and fan-out for `config`.

    Redis need not be up: the relay then starts unhealthy (/healthz 503,
    refusals) and connects as soon as Redis answers.

    Raises:
        StorageUnavailable: ``--redis`` is not a Redis URL.
    """
    assert config.redis is not None
    link = RedisLink.open(
        config.redis,
        prefix=config.redis_prefix,
        timeout=config.redis_timeout,
        connections=config.redis_connections,
    )
    mailbox = RedisMailbox(
        link,
        MailboxBounds.from_config(config),
        clock=clock,
    )
    fanout = RedisFanout(
        link,
        mailbox,
        presence_ttl=config.presence_ttl,
        presence_interval=config.presence_interval,
        timeout=config.redis_timeout,
        backoff=config.redis_backoff,
        batch=config.mailbox_batch,
        clock=clock,
    )
    try:
        await link.ping()
        logger.info("using Redis at %s", redacted(config.redis))
    except StorageUnavailable as exc:
        logger.warning(
            "Redis at %s unavailable (%s); retrying", redacted(config.redis), exc
        )
    fanout.start()
    return mailbox, fanout
