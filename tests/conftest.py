"""Shared fixtures, one section per area."""

# Redis and nginx: a real redis-server for the session (tests/redis_helpers.py).
from tests.redis_helpers import redis_server

__all__ = ["redis_server"]
