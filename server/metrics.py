"""The relay's metrics, exposed in Prometheus text format on /metrics.

The forwarding path counts with plain integers (`RelayStats`): a
prometheus_client Counter takes a lock on every increment, which would cost
more than forwarding a small frame. A collector turns the integers into
metric families when /metrics is scraped. Each relay has its own registry, so
several relays in one process (as in the tests) do not mix their figures.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "RelayStats", "StatsCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Upper bounds in seconds of the forwarding latency histogram."""


@dataclass(slots=True)
class RelayStats:
    """Running figures of one relay; plain integers, cheap to update."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1)
    )
    latency_sum: float = 0.0
    mailbox_frames: int = 0
    mailbox_bytes: int = 0

    def observe_latency(self, seconds: float) -> None:
        """Count one SEND handled in `seconds`."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class StatsCollector(Collector):
    """Turns a `RelayStats` and live gauges into Prometheus metric families.

    Args:
        stats: the relay's running figures.
        connections: returns the number of open connections.
        rooms: returns the number of rooms with a member on this relay.
    """

    def __init__(
        self,
        stats: RelayStats,
        connections: Callable[[], int],
        rooms: Callable[[], int],
    ) -> None:
        self._stats = stats
        self._connections = connections
        self._rooms = rooms

    def collect(self) -> Iterator[Metric]:
        """Yield every metric; called on each scrape."""
        stats = self._stats
        yield GaugeMetricFamily(
            "saltchat_relay_connections", "Open connections", value=self._connections()
        )
        yield GaugeMetricFamily(
            "saltchat_relay_rooms", "Rooms with a member here", value=self._rooms()
        )
        yield from _counters(stats)
        yield from _by_reason(stats)
        yield GaugeMetricFamily(
            "saltchat_relay_mailbox_frames",
            "Frames held in mailboxes",
            value=stats.mailbox_frames,
        )
        yield GaugeMetricFamily(
            "saltchat_relay_mailbox_bytes",
            "Payload bytes held in mailboxes",
            value=stats.mailbox_bytes,
        )
        yield _latency(stats)


def _counters(stats: RelayStats) -> Iterator[CounterMetricFamily]:
    for name, text, value in (
        ("frames_received", "Messages received from clients", stats.frames_in),
        ("bytes_received", "Bytes received from clients", stats.bytes_in),
        ("frames_sent", "Messages sent to clients", stats.frames_out),
        ("bytes_sent", "Bytes sent to clients", stats.bytes_out),
    ):
        yield CounterMetricFamily(f"saltchat_relay_{name}", text, value=value)


def _by_reason(stats: RelayStats) -> Iterator[CounterMetricFamily]:
    for name, text, counts in (
        ("drops", "Frames dropped, by reason", stats.drops),
        ("closes", "Connections closed, by reason", stats.closes),
        ("refusals", "SENDs refused, by status", stats.refusals),
    ):
        family = CounterMetricFamily(f"saltchat_relay_{name}", text, labels=["reason"])
        for reason, value in sorted(counts.items()):
            family.add_metric([reason], value)
        yield family


def _latency(stats: RelayStats) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(LATENCY_BUCKETS, stats.latency_counts, strict=False):
        running += count
        buckets.append((repr(bound), running))
    running += stats.latency_counts[-1]
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(
        "saltchat_relay_send_seconds",
        "Time from receiving a SEND to queueing its frames",
        buckets=buckets,
        sum_value=stats.latency_sum,
    )


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)
