"""Cohorts from trades with addresses: "pros" (top) and "amateurs" (bottom).

Each address earns a skill score from its own flow: at every 5m close the score decays
and adds (its signed notional in the previous bar) x (this bar's return), so an address
whose buying precedes rises scores well. Ranked addresses split into a top and a bottom
cohort (`top_frac` each). Each cohort's signed flow in the bar, smoothed, over its gross
flow, smoothed, gives S_top and S_bot in [-1, 1]; S_mood = (S_top - S_bot) / 2 (pros
buying while amateurs sell is the strongest bullish mood).

Everything happens at bar closes in event-time order: the snapshot at close t uses flows
with event time < t and returns up to t only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from operators.bars import Bar
from operators.config import CohortConfig

_PRUNE_BELOW = 1e-6  # |score| under which an idle address is forgotten


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
    skill: dict[str, float] = field(default_factory=dict)
    top: frozenset[str] = frozenset()
    bot: frozenset[str] = frozenset()
    net_top: float = 0.0
    gross_top: float = 0.0
    net_bot: float = 0.0
    gross_bot: float = 0.0

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the cohort settings are bound again on resume."""
        return {k: v for k, v in self.__dict__.items() if k != "cfg"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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
        self._rank()
        k = _decay(self.cfg.flow_halflife_bars)
        net_t = gross_t = net_b = gross_b = 0.0
        for addr, f in flows.items():
            if addr in self.top:
                net_t += f
                gross_t += abs(f)
            elif addr in self.bot:
                net_b += f
                gross_b += abs(f)
        self.net_top = k * self.net_top + net_t
        self.gross_top = k * self.gross_top + gross_t
        self.net_bot = k * self.net_bot + net_b
        self.gross_bot = k * self.gross_bot + gross_b
        self.prev_flows = flows
        s_top = self.net_top / self.gross_top if self.gross_top > 0 else 0.0
        s_bot = self.net_bot / self.gross_bot if self.gross_bot > 0 else 0.0
        return CohortValues(s_top, s_bot, (s_top - s_bot) / 2.0, len(self.top), len(self.bot))

    def _update_skill(self, ret: float) -> None:
        k = _decay(self.cfg.skill_halflife_bars)
        skill = self.skill
        for addr in list(skill):
            v = skill[addr] * k
            if abs(v) < _PRUNE_BELOW and addr not in self.prev_flows:
                del skill[addr]
            else:
                skill[addr] = v
        for addr, f in self.prev_flows.items():
            skill[addr] = skill.get(addr, 0.0) + f * ret

    def _rank(self) -> None:
        ranked = sorted(self.skill.items(), key=lambda kv: (kv[1], kv[0]))
        if len(ranked) < self.cfg.min_ranked:
            self.top, self.bot = frozenset(), frozenset()
            return
        n = max(1, int(len(ranked) * self.cfg.top_frac))
        self.bot = frozenset(a for a, _ in ranked[:n])
        self.top = frozenset(a for a, _ in ranked[-n:])
