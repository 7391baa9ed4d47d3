"""Event-time progress of one symbol's input, which one lie or a minority cannot drag forward.

The bars of a symbol close when its progress, less the allowed lateness, passes their end.
Progress used to be the latest event time seen, so one trade stamped 290 s ahead (inside
the allowed clock skew) made every real trade late for five minutes, and trades under a
null key, read ahead on other partitions, closed every bar.

Now each source keeps its own progress: a source is a Kafka topic partition, or the one
event-ordered stream of a file run (source None). A source's progress is the lowest of
the `quorum` latest event times it delivered, so a record stamped ahead moves it only
once `quorum - 1` more records agree (`QUORUM` for the trades that drive bars; 1 for
candles, funding, overlays, cohorts and commands, which are aggregates or rare). The
symbol's progress is the minimum over its active sources, never decreasing: a partition
read ahead of the others, or carrying misrouted records, cannot close another's bars, and
funding, overlay, cohort and control records are in the context join before the bar they
belong to closes (topic alignment by event time). A source that delivered nothing for
`idle_ms` of wall time is idle and holds nothing back; if every source is idle, the
least advanced still bounds progress. Sources that have not delivered yet cannot be
waited for by name, so with Kafka sources progress starts only `idle_ms` after the step
starts (or resumes): every partition has had that long to deliver its first record.

Wall-clock arrival times are not state: a resumed step starts its grace period afresh.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

QUORUM = 3
DEFAULT_SOURCE_IDLE_MS = 10_000


@dataclass
class SourceClock:
    """One source's progress: the lowest of its `quorum` latest event times."""

    quorum: int
    latest: list[int] = field(default_factory=list)  # min-heap of the `quorum` latest times

    def add(self, ts_ms: int) -> None:
        if len(self.latest) < self.quorum:
            heapq.heappush(self.latest, ts_ms)
        elif ts_ms > self.latest[0]:
            heapq.heapreplace(self.latest, ts_ms)

    @property
    def progress(self) -> int:
        return self.latest[0]


@dataclass
class Progress:
    """A symbol's event-time progress over its sources (see the module docstring)."""

    sources: dict[Hashable, SourceClock] = field(default_factory=dict)
    value: int | None = None  # never decreases
    arrivals: dict[Hashable, int] = field(default_factory=dict)  # wall ms of the last record
    started_ms: int = 0  # wall ms the step started or resumed

    def __getstate__(self) -> dict[str, Any]:
        """Event time only: wall-clock arrivals mean nothing to a resumed run."""
        return {"sources": self.sources, "value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, arrivals={}, started_ms=0)

    def restart(self, now_ms: int) -> None:
        """The step (re)started: give every source `idle_ms` to be heard from again."""
        self.started_ms = now_ms
        self.arrivals.clear()

    def observe(self, source: Hashable, ts_ms: int, now_ms: int, quorum: int) -> None:
        clock = self.sources.get(source)
        if clock is None:
            clock = self.sources[source] = SourceClock(quorum)
        clock.add(ts_ms)
        self.arrivals[source] = now_ms

    def source_progress(self, source: Hashable) -> int | None:
        clock = self.sources.get(source)
        return None if clock is None else clock.progress

    def advance(self, now_ms: int, idle_ms: int) -> int | None:
        """The symbol's progress now: the minimum over active sources (None: not yet)."""
        if not self.sources:
            return self.value
        if len(self.sources) == 1 and None in self.sources:  # one merged, ordered stream
            p = self.sources[None].progress
        else:
            if now_ms - self.started_ms < idle_ms:
                return self.value  # a partition may not have delivered its first record yet
            active = [
                c.progress
                for s, c in self.sources.items()
                if now_ms - self.arrivals.get(s, self.started_ms) <= idle_ms
            ]
            p = min(active) if active else min(c.progress for c in self.sources.values())
        if self.value is None or p > self.value:
            self.value = p
        return self.value
