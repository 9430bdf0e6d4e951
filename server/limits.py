"""Token buckets for the relay's rate bounds other than the frame rate.

The frame rate of a connection is counted inline in `server.session`, on the
forwarding path. The rarer bounds use `Bucket`: the rate of JOINs and LEAVEs
of a connection, and `AddressBudget`, the memberships each client IP address
may create per hour (see docs/relay.md, "Settings").
"""

from __future__ import annotations

__all__ = ["AddressBudget", "Bucket"]

HOUR = 3600.0


class Bucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved.

    Args:
        rate: tokens added per second.
        burst: most tokens saved; the bucket starts full.
        now: the time (monotonic seconds) the bucket starts at.
    """

    __slots__ = ("_burst", "_rate", "_refilled", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._refilled = now

    def take(self, now: float) -> bool:
        """Take one token at `now`; False if the bucket is empty."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def full(self, now: float) -> bool:
        """True if the bucket is full at `now` (it can be forgotten)."""
        self._refill(now)
        return self._tokens >= self._burst

    def _refill(self, now: float) -> None:
        self._tokens = min(
            self._burst, self._tokens + (now - self._refilled) * self._rate
        )
        self._refilled = now


class AddressBudget:
    """New memberships per client IP address: `per_hour`, refilled evenly.

    One bucket per address that created a membership recently; `forget_full`
    drops the buckets that refilled, so memory follows the addresses active
    within the last hour, not every address ever seen.

    Args:
        per_hour: memberships an address may create per hour (also its burst).
    """

    __slots__ = ("_buckets", "_per_hour")

    def __init__(self, per_hour: int) -> None:
        self._per_hour = per_hour
        self._buckets: dict[str, Bucket] = {}

    def take(self, client: str, now: float) -> bool:
        """Spend one membership of `client` at `now`; False if none is left."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = Bucket(self._per_hour / HOUR, self._per_hour, now)
            self._buckets[client] = bucket
        return bucket.take(now)

    def forget_full(self, now: float) -> None:
        """Drop the buckets of addresses that have their whole budget again."""
        for client in [c for c, b in self._buckets.items() if b.full(now)]:
            del self._buckets[client]

    def __len__(self) -> int:
        return len(self._buckets)
