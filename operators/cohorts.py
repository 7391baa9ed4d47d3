"""Cohorts from trades with addresses: "pros" (top) and "amateurs" (bottom).

Each address earns a skill score from its own flow: at every 5m close the score decays
and adds (its signed notional in the previous bar) x (this bar's return), so an address
whose buying precedes rises scores well. Ranked addresses split into a top and a bottom
cohort (`top_frac` each). Each cohort's signed flow in the bar, smoothed, over its gross
flow, smoothed, gives S_top and S_bot in [-1, 1]; S_mood = (S_top - S_bot) / 2 (pros
buying while amateurs sell is the strongest bullish mood).

Everything happens at bar closes in event-time order: the snapshot at close t uses flows
with event time < t and returns up to t only.

Bounded state, flat cost per bar (live Hyperliquid data brings ~11.5k new addresses a day):
- Decay is one number: scores are kept as `raw = score / scale` and a close multiplies
  `scale` by the decay, so only the addresses that traded are touched. A uniform decay
  never changes the ranking.
- Ranked addresses live in a sorted list by score; the deciles are its two ends and an
  address's cohort is its rank (O(log n)), so nothing is sorted or copied per bar.
- An address whose |score| decays below `_PRUNE_BELOW` is forgotten, as before.
- The table holds at most `cohorts.max_addresses`. Eviction rule: over the cap, the
  addresses with the smallest |score| (the least evidence either way; ties by address) go
  first. They sit next to zero in the sorted list, so eviction is O(log n) each. The
  deciles, made of the largest scores, are not affected until the cap is so small that
  the middle of the table is gone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from operators.bars import Bar
from operators.config import CohortConfig

_PRUNE_BELOW = 1e-6  # |score| under which an idle address is forgotten
_RESCALE_BELOW = 1e-100  # fold `scale` into the raw scores before it underflows (~1 a year)


@dataclass(slots=True)
class CohortValues:
    s_top: float
    s_bot: float
    s_mood: float
    n_top: int
    n_bot: int

    @property
    def ready(self) -> bool:
        return self.n_top > 0 and self.n_bot > 0


NEUTRAL = CohortValues(0.0, 0.0, 0.0, 0, 0)


def _decay(halflife_bars: float) -> float:
    return math.exp(math.log(0.5) / halflife_bars)


@dataclass
class CohortTracker:
    cfg: CohortConfig
    width_ms: int = 300_000
    buckets: dict[int, dict[str, float]] = field(default_factory=dict)  # bar start -> flows
    closed_through_ms: int | None = None  # trades before this belong to emitted bars
    prev_flows: dict[str, float] = field(default_factory=dict)
    prev_close: float | None = None
    raw: dict[str, float] = field(default_factory=dict)  # address -> score / scale
    scale: float = 1.0
    ranked: SortedList = field(default_factory=SortedList)  # (raw, address), ascending
    n_cohort: int = 0  # addresses in each of the top and bottom cohorts (0: not ready)
    net_top: float = 0.0
    gross_top: float = 0.0
    net_bot: float = 0.0
    gross_bot: float = 0.0
    evicted: int = 0  # addresses dropped by the cap (not by decay)

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the cohort settings are bound again on resume."""
        return {k: v for k, v in self.__dict__.items() if k != "cfg"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "skill" in state:  # a snapshot from before the bound: scores and decile sets
            skill, top = state.pop("skill"), state.pop("top")
            state.pop("bot")
            state.update(raw=dict(skill), scale=1.0, n_cohort=len(top), evicted=0)
            state["ranked"] = SortedList((r, a) for a, r in skill.items())
        self.__dict__.update(state)

    @property
    def skill(self) -> dict[str, float]:
        """Every address's current score (for inspection; O(n))."""
        return {a: r * self.scale for a, r in self.raw.items()}

    @property
    def top(self) -> frozenset[str]:
        return frozenset(a for _, a in self.ranked[len(self.ranked) - self.n_cohort :])

    @property
    def bot(self) -> frozenset[str]:
        return frozenset(a for _, a in self.ranked[: self.n_cohort])

    def add_trade(
        self, ts_ms: int, px: float, qty: float, buyer: str | None, seller: str | None
    ) -> bool:
        """Fold one trade's flow in; False if its bar is already closed (late)."""
        start = ts_ms - ts_ms % self.width_ms
        if self.closed_through_ms is not None and start < self.closed_through_ms:
            return False
        if buyer is None and seller is None:
            return True
        flows = self.buckets.get(start)
        if flows is None:
            flows = self.buckets[start] = {}
        notional = px * qty
        if buyer is not None:
            flows[buyer] = flows.get(buyer, 0.0) + notional
        if seller is not None:
            flows[seller] = flows.get(seller, 0.0) - notional
        return True

    def close_bar(self, bar: Bar) -> CohortValues:
        """Advance to the close of `bar` (5m, in order) and return the cohort values then."""
        flows = self.buckets.pop(bar.start_ms, {})
        self.closed_through_ms = bar.end_ms
        ret = 0.0 if self.prev_close is None else bar.close / self.prev_close - 1.0
        self.prev_close = bar.close
        self._update_skill(ret)
        self._evict_over_cap()
        n = len(self.ranked)
        self.n_cohort = 0 if n < self.cfg.min_ranked else max(1, int(n * self.cfg.top_frac))
        k = _decay(self.cfg.flow_halflife_bars)
        net_t = gross_t = net_b = gross_b = 0.0
        if self.n_cohort:
            # The cohorts are the two ends of the ranking: compare with their inner bounds.
            top_from, bot_to = self.ranked[n - self.n_cohort], self.ranked[self.n_cohort - 1]
            raw = self.raw
            for addr, f in flows.items():
                r = raw.get(addr)
                if r is None:
                    continue
                if (r, addr) >= top_from:  # top wins where the two overlap, as ranks do
                    net_t += f
                    gross_t += abs(f)
                elif (r, addr) <= bot_to:
                    net_b += f
                    gross_b += abs(f)
        self.net_top = k * self.net_top + net_t
        self.gross_top = k * self.gross_top + gross_t
        self.net_bot = k * self.net_bot + net_b
        self.gross_bot = k * self.gross_bot + gross_b
        self.prev_flows = flows
        s_top = self.net_top / self.gross_top if self.gross_top > 0 else 0.0
        s_bot = self.net_bot / self.gross_bot if self.gross_bot > 0 else 0.0
        return CohortValues(s_top, s_bot, (s_top - s_bot) / 2.0, self.n_cohort, self.n_cohort)

    def _set(self, addr: str, raw: float) -> None:
        old = self.raw.get(addr)
        if old is not None:
            self.ranked.remove((old, addr))
        self.raw[addr] = raw
        self.ranked.add((raw, addr))

    def _drop(self, addr: str) -> None:
        self.ranked.remove((self.raw.pop(addr), addr))

    def _update_skill(self, ret: float) -> None:
        self.scale *= _decay(self.cfg.skill_halflife_bars)
        if self.scale < _RESCALE_BELOW:
            self._rescale()
        limit = _PRUNE_BELOW / self.scale  # |raw| under this: |score| under _PRUNE_BELOW
        lo = self.ranked.bisect_left((-limit, ""))
        hi = self.ranked.bisect_left((limit, ""))
        for _, addr in list(self.ranked.islice(lo, hi)):
            if addr not in self.prev_flows and abs(self.raw[addr] * self.scale) < _PRUNE_BELOW:
                self._drop(addr)
        flows, raw = self.prev_flows, self.raw
        if 4 * len(flows) > len(raw):  # most addresses moved: one sort beats many moves
            for addr, f in flows.items():
                raw[addr] = raw.get(addr, 0.0) + f * ret / self.scale
            self.ranked = SortedList((r, a) for a, r in raw.items())
            return
        for addr, f in flows.items():
            self._set(addr, raw.get(addr, 0.0) + f * ret / self.scale)

    def _rescale(self) -> None:
        self.raw = {a: r * self.scale for a, r in self.raw.items()}
        self.ranked = SortedList((r, a) for a, r in self.raw.items())
        self.scale = 1.0

    def _evict_over_cap(self) -> None:
        over = len(self.raw) - self.cfg.max_addresses
        while over > 0:
            i = self.ranked.bisect_left((0.0, ""))  # walk out from zero: smallest |score|
            left = self.ranked[i - 1] if i > 0 else None
            right = self.ranked[i] if i < len(self.ranked) else None
            if right is None or (left is not None and (-left[0], left[1]) <= right):
                addr = left[1]  # type: ignore[index]
            else:
                addr = right[1]
            self._drop(addr)
            self.evicted += 1
            over -= 1
