"""Trade identities seen recently, to drop a trade delivered twice.

A trade is identified by (venue, trade id). The window is the 5m bars still open: when a
bar closes, the identities of its trades are forgotten, so memory is bounded by the
trades of the open bars. A copy arriving after its bar closed is late anyway (the market
step dead-letters it), so it can never be folded in twice either.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

BAR_MS = 300_000


@dataclass
class RecentTrades:
    width_ms: int = BAR_MS
    by_bar: dict[int, set[Hashable]] = field(default_factory=dict)  # bar start -> identities

    def seen(self, ts_ms: int, identity: Hashable) -> bool:
        """True if `identity` was already seen in its bar; otherwise remember it."""
        start = ts_ms - ts_ms % self.width_ms
        ids = self.by_bar.get(start)
        if ids is None:
            ids = self.by_bar[start] = set()
        elif identity in ids:
            return True
        ids.add(identity)
        return False

    def forget_before(self, ts_ms: int) -> None:
        """Forget the bars that start before `ts_ms` (they are closed)."""
        for start in [s for s in self.by_bar if s < ts_ms]:
            del self.by_bar[start]

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.by_bar.values())
