"""A cohort proxy from trade size, for trades without addresses (Binance).

Without addresses there are no traders to rank; a print still has a size and an aggressor
side. So prints split into two groups, large and small, and each group is treated like one
address of operators/cohorts.py:

- A print is *large* when its notional is at or above the lower edge of the size bin that
  holds the `large_quantile` of the prints of *earlier* bars (a decayed histogram with 20
  log bins per decade, each about 12% wide). A bar's prints are classified at its close,
  before its own sizes join the histogram, so no print's group depends on itself or on
  anything later. Until `min_prints` earlier prints exist, nothing is classified.
- Each group earns a skill score as an address does: at every 5m close the score decays
  (`cohorts.skill_halflife_bars`) and adds (the group's signed aggressor notional in the
  previous bar) x (this bar's return), so the score at close t uses flows before t's bar
  and returns up to t only.
- The group with the higher score stands in for the pros, the other for the amateurs.
  Each group's smoothed signed flow (`cohorts.flow_halflife_bars`) over its smoothed gross
  flow gives the proxy's S_top and S_bot in [-1, 1]; S_mood = (S_top - S_bot) / 2.

The proxy is named as such wherever it shows: its own arms (`pros_size_proxy`,
`amateurs_size_proxy`, operators/gating.py) and the signals record's `size_proxy` field. It
never feeds the address cohorts' S_top/S_bot or the model's cohort features, which the
shipped model was trained without.

State is bounded: a histogram of N_BINS numbers, the open bars' flows by size bin, a few
numbers per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from operators.bars import Bar
from operators.config import CohortConfig, SizeProxyConfig

GROUPS = ("large", "small")
LOG10_MIN_USD = -2.0  # the first bin starts at 1 cent; smaller prints fall into it
BINS_PER_DECADE = 20
N_BINS = 12 * BINS_PER_DECADE  # up to 1e10 USD; larger prints fall into the last bin


def size_bin(notional_usd: float) -> int:
    """The histogram bin of a print's notional (USD)."""
    if not notional_usd > 0.0:
        return 0
    i = math.floor((math.log10(notional_usd) - LOG10_MIN_USD) * BINS_PER_DECADE)
    return min(max(i, 0), N_BINS - 1)


def bin_floor_usd(i: int) -> float:
    """The lower edge of bin `i`, in USD."""
    return 10.0 ** (LOG10_MIN_USD + i / BINS_PER_DECADE)


def _decay(halflife_bars: float) -> float:
    return math.exp(math.log(0.5) / halflife_bars)


@dataclass(slots=True)
class ProxyValues:
    """The proxy at one 5m close."""

    s_top: float  # flow of the group standing in for the pros, in [-1, 1]
    s_bot: float  # flow of the group standing in for the amateurs
    s_mood: float
    top_group: str | None  # "large" or "small"; None until both groups are ranked
    large_min_usd: float | None  # prints from this notional counted as large in this bar
    skill_large: float
    skill_small: float

    @property
    def ready(self) -> bool:
        return self.top_group is not None


@dataclass
class SizeProxy:
    cfg: SizeProxyConfig
    cohort_cfg: CohortConfig  # the halflives, shared with the address cohorts
    width_ms: int = 300_000
    # bar start -> size bin -> [signed notional, gross notional, prints]
    buckets: dict[int, dict[int, list[float]]] = field(default_factory=dict)
    closed_through_ms: int | None = None  # prints before this belong to closed bars
    sizes: list[float] = field(default_factory=lambda: [0.0] * N_BINS)  # decayed counts
    n_prints: int = 0  # prints of closed bars, not decayed (for min_prints)
    prev_flow: dict[str, float] | None = None  # each group's signed flow in the last bar
    prev_close: float | None = None
    skill: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0.0))
    scored: int = 0  # closes at which the groups' skill was updated
    net: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0.0))
    gross: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0.0))

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the settings are bound again on resume (`bind`)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("cfg", "cohort_cfg")}

    def add_trade(self, ts_ms: int, px: float, qty: float, side: int) -> None:
        """Fold one print in (`side` +1: the aggressor bought); a print for a closed bar is
        left out (the market step has already dead-lettered it)."""
        start = ts_ms - ts_ms % self.width_ms
        if self.closed_through_ms is not None and start < self.closed_through_ms:
            return
        notional = px * qty
        flows = self.buckets.get(start)
        if flows is None:
            flows = self.buckets[start] = {}
        cell = flows.get(i := size_bin(notional))
        if cell is None:
            flows[i] = [side * notional, notional, 1]
        else:
            cell[0] += side * notional
            cell[1] += notional
            cell[2] += 1

    def large_from_bin(self) -> int | None:
        """The first bin counted as large, from closed bars' prints; None before min_prints."""
        if self.n_prints < self.cfg.min_prints:
            return None
        target = self.cfg.large_quantile * math.fsum(self.sizes)
        cum = enumerate(accumulate(self.sizes))
        return next((i for i, c in cum if c >= target), N_BINS - 1)  # last: float rounding

    def close_bar(self, bar: Bar) -> ProxyValues:
        """Advance to the close of `bar` (5m, in order) and return the proxy then."""
        flows = self.buckets.pop(bar.start_ms, {})
        self.closed_through_ms = bar.end_ms
        ret = 0.0 if self.prev_close is None else bar.close / self.prev_close - 1.0
        self.prev_close = bar.close
        k_skill = _decay(self.cohort_cfg.skill_halflife_bars)
        for g in GROUPS:
            self.skill[g] *= k_skill
            if self.prev_flow is not None:
                self.skill[g] += self.prev_flow[g] * ret
        if self.prev_flow is not None:
            self.scored += 1
        # classify this bar's prints by earlier bars' sizes, then let its sizes in
        k = self.large_from_bin()
        net, gross = dict.fromkeys(GROUPS, 0.0), dict.fromkeys(GROUPS, 0.0)
        if k is not None:
            for i, (signed, notional, _) in flows.items():
                g = "large" if i >= k else "small"
                net[g] += signed
                gross[g] += notional
        self.prev_flow = None if k is None else net
        k_size = _decay(self.cfg.size_halflife_bars)
        self.sizes = [c * k_size for c in self.sizes]
        for i, (_, _, count) in flows.items():
            self.sizes[i] += count
            self.n_prints += int(count)
        k_flow = _decay(self.cohort_cfg.flow_halflife_bars)
        s: dict[str, float] = {}
        for g in GROUPS:
            self.net[g] = k_flow * self.net[g] + net[g]
            self.gross[g] = k_flow * self.gross[g] + gross[g]
            s[g] = self.net[g] / self.gross[g] if self.gross[g] > 0 else 0.0
        top = self._top_group()
        large_min = None if k is None else bin_floor_usd(k)
        sk_l, sk_s = self.skill["large"], self.skill["small"]
        if top is None:
            return ProxyValues(0.0, 0.0, 0.0, None, large_min, sk_l, sk_s)
        bot = "small" if top == "large" else "large"
        return ProxyValues(s[top], s[bot], (s[top] - s[bot]) / 2.0, top, large_min, sk_l, sk_s)

    def _top_group(self) -> str | None:
        """The group with the better record; None before any score or on a tie."""
        if self.scored == 0 or self.skill["large"] == self.skill["small"]:
            return None
        return "large" if self.skill["large"] > self.skill["small"] else "small"


def bind(
    proxy: SizeProxy | None, cfg: SizeProxyConfig, cohort_cfg: CohortConfig
) -> SizeProxy | None:
    """The proxy under the running settings: a new one when it is switched on, none when
    it is off (its state is dropped), else the same one with the settings bound again."""
    if not cfg.enabled:
        return None
    if proxy is None:
        return SizeProxy(cfg, cohort_cfg)
    proxy.cfg, proxy.cohort_cfg = cfg, cohort_cfg
    return proxy
