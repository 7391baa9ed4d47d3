"""Trade identities seen recently, to drop a trade delivered twice.

A trade is identified by (venue, trade id): its id in the set of its venue's ids. The
window is the 5m bars still open: when a bar closes, the identities of its trades are
forgotten, so memory is bounded by the trades of the open bars. A copy arriving after its
bar closed is late anyway (the market step dead-letters it), so it can never be folded in
twice either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BAR_MS = 300_000


@dataclass
class RecentTrades:
    width_ms: int = BAR_MS
    # bar start -> venue -> trade ids. Ids per venue rather than a set of (venue, id)
    # tuples: a tuple per trade cost a Kafka bench of 2 x 1M trades about 4% of its time
    # (building, hashing and freeing them).
    by_bar: dict[int, dict[str | None, set[str]]] = field(default_factory=dict)

    def seen(self, ts_ms: int, venue: str | None, trade_id: str) -> bool:
        """True if `trade_id` of `venue` was already seen in its bar; otherwise remember it."""
        start = ts_ms - ts_ms % self.width_ms
        venues = self.by_bar.get(start)
        if venues is None:
            venues = self.by_bar[start] = {}
        ids = venues.get(venue)
        if ids is None:
            ids = venues[venue] = set()
        elif trade_id in ids:
            return True
        ids.add(trade_id)
        return False

    def forget_before(self, ts_ms: int) -> None:
        """Forget the bars that start before `ts_ms` (they are closed)."""
        for start in [s for s in self.by_bar if s < ts_ms]:
            del self.by_bar[start]

    def __len__(self) -> int:
        return sum(len(ids) for venues in self.by_bar.values() for ids in venues.values())

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A snapshot from before ids per venue holds a set of (venue, id) per bar."""
        by_bar = state.get("by_bar", {})
        for start, ids in by_bar.items():
            if isinstance(ids, set):
                venues: dict[str | None, set[str]] = {}
                for venue, trade_id in ids:
                    venues.setdefault(venue, set()).add(trade_id)
                by_bar[start] = venues
        self.__dict__.update(state)
