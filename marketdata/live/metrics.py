"""Prometheus metrics of the live ingestor (served by `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LAG_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "ensemble_live_frames", "WebSocket frames received", ["venue", "stream"], registry=r
        )
        self.messages = Counter(
            "ensemble_live_messages",
            "records published to the input topics",
            ["venue", "stream"],
            registry=r,
        )
        self.duplicates = Counter(
            "ensemble_live_duplicates",
            "records dropped as already published (reconnect and backfill overlap)",
            ["venue", "stream"],
            registry=r,
        )
        self.reconnects = Counter(
            "ensemble_live_reconnects",
            "connections replaced, by reason",
            ["venue", "reason"],
            registry=r,
        )
        self.backfilled = Counter(
            "ensemble_live_backfilled",
            "records published from a REST backfill",
            ["venue", "stream"],
            registry=r,
        )
        self.gaps = Counter(
            "ensemble_live_gaps",
            "windows the backfill could not cover",
            ["venue", "stream"],
            registry=r,
        )
        self.dead_letters = Counter(
            "ensemble_live_dead_letters",
            "frames sent to the dead-letter topic",
            ["venue"],
            registry=r,
        )
        self.clock_skew = Counter(
            "ensemble_live_clock_skew",
            "records whose event time is ahead of our receive time by more than the bound",
            ["venue"],
            registry=r,
        )
        self.lag = Histogram(
            "ensemble_live_feed_lag_seconds",
            "receive time - venue event time of live records",
            ["venue", "stream"],
            buckets=LAG_BUCKETS_S,
            registry=r,
        )

    def for_venue(self, venue: str) -> None:
        """The records-published series of `venue` at 0 from the start: the alert on a
        venue that publishes nothing (EnsembleIngestorNoRecords) reads their increase,
        and a series that appears only at its first record cannot show none."""
        for stream in ("trades", "candles", "funding"):
            self.messages.labels(venue, stream)
