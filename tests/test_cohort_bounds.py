"""Cohort state is bounded (issue 12, item 3): a capped address table with a documented
eviction rule, deciles kept incrementally, and, under the cap, exactly the values of the
unbounded tracker it replaces (kept here as the reference)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest

from marketdata.generator import DEFAULT_START_MS, GeneratorConfig, generate
from operators.bars import Bar, BarBuilder
from operators.cohorts import CohortTracker, CohortValues
from operators.config import CohortConfig, ConfigError

M = 60_000
T0 = DEFAULT_START_MS


class _UnboundedReference:
    """The tracker before the bound (main at 5f62190): decay and full sort every bar."""

    def __init__(self, cfg: CohortConfig) -> None:
        self.cfg = cfg
        self.buckets: dict[int, dict[str, float]] = {}
        self.prev_flows: dict[str, float] = {}
        self.prev_close: float | None = None
        self.skill: dict[str, float] = {}
        self.top: frozenset[str] = frozenset()
        self.bot: frozenset[str] = frozenset()
        self.net_top = self.gross_top = self.net_bot = self.gross_bot = 0.0

    def add_trade(self, ts_ms, px, qty, buyer, seller) -> None:
        flows = self.buckets.setdefault(ts_ms - ts_ms % 300_000, {})
        if buyer is not None:
            flows[buyer] = flows.get(buyer, 0.0) + px * qty
        if seller is not None:
            flows[seller] = flows.get(seller, 0.0) - px * qty

    def close_bar(self, bar: Bar) -> CohortValues:
        flows = self.buckets.pop(bar.start_ms, {})
        ret = 0.0 if self.prev_close is None else bar.close / self.prev_close - 1.0
        self.prev_close = bar.close
        k = math.exp(math.log(0.5) / self.cfg.skill_halflife_bars)
        for addr in list(self.skill):
            v = self.skill[addr] * k
            if abs(v) < 1e-6 and addr not in self.prev_flows:
                del self.skill[addr]
            else:
                self.skill[addr] = v
        for addr, f in self.prev_flows.items():
            self.skill[addr] = self.skill.get(addr, 0.0) + f * ret
        ranked = sorted(self.skill.items(), key=lambda kv: (kv[1], kv[0]))
        if len(ranked) < self.cfg.min_ranked:
            self.top, self.bot = frozenset(), frozenset()
        else:
            n = max(1, int(len(ranked) * self.cfg.top_frac))
            self.bot = frozenset(a for a, _ in ranked[:n])
            self.top = frozenset(a for a, _ in ranked[-n:])
        kf = math.exp(math.log(0.5) / self.cfg.flow_halflife_bars)
        nt = gt = nb = gb = 0.0
        for addr, f in flows.items():
            if addr in self.top:
                nt, gt = nt + f, gt + abs(f)
            elif addr in self.bot:
                nb, gb = nb + f, gb + abs(f)
        self.net_top, self.gross_top = kf * self.net_top + nt, kf * self.gross_top + gt
        self.net_bot, self.gross_bot = kf * self.net_bot + nb, kf * self.gross_bot + gb
        self.prev_flows = flows
        s_top = self.net_top / self.gross_top if self.gross_top > 0 else 0.0
        s_bot = self.net_bot / self.gross_bot if self.gross_bot > 0 else 0.0
        return CohortValues(s_top, s_bot, (s_top - s_bot) / 2.0, len(self.top), len(self.bot))


def _replay(trackers, days: float, skill_halflife_bars: float = 288.0):
    """Generated trades into every tracker; per bar, each tracker's values."""
    cfg = GeneratorConfig(days=days, trade_symbols=("BTC-PERP",), candle_symbols=())
    builder = BarBuilder("BTC-PERP", 5_000)
    out: list[list[CohortValues]] = []
    for stream, r in generate(cfg):
        if stream != "trades":
            continue
        bars = builder.add_trade(r["ts_event_ms"], r["px"], r["qty"])
        for t in trackers:
            t.add_trade(r["ts_event_ms"], r["px"], r["qty"], r["buyer"], r["seller"])
        for bar in bars or ():
            out.append([t.close_bar(bar) for t in trackers])
    return out


def _one_off_addresses(trackers, bars: int, new_per_bar: int, seed: int = 5):
    """A market where most addresses trade once (as on Hyperliquid), 100 regulars."""
    import random

    rng = random.Random(seed)
    px, n_new, out = 100.0, 0, []
    for i in range(bars):
        start = T0 + i * 5 * M
        for j in range(new_per_bar + 20):
            if j < new_per_bar:
                a, n_new = f"new{n_new:07d}", n_new + 1
            else:
                a = f"reg{rng.randrange(100):03d}"
            b = f"reg{rng.randrange(100):03d}"
            buyer, seller = (a, b) if rng.random() < 0.5 else (b, a)
            qty = rng.uniform(0.1, 2.0)
            for t in trackers:
                t.add_trade(start + j * 100, px, qty, buyer, seller)
        px *= 1.0 + rng.gauss(0.0, 0.002)
        bar = Bar("BTC-PERP", "5m", start, start + 5 * M, px, px, px, px, 1.0, 1, True)
        out.append([t.close_bar(bar) for t in trackers])
    return out


@pytest.mark.parametrize("source", ["generated", "one_off"])
def test_under_the_cap_the_cohort_values_equal_the_unbounded_trackers(source: str):
    cfg = CohortConfig(skill_halflife_bars=4.0)  # short memory: idle addresses are pruned
    bounded, reference = CohortTracker(cfg), _UnboundedReference(cfg)
    if source == "generated":
        per_bar = _replay([bounded, reference], days=2.0)
    else:
        per_bar = _one_off_addresses([bounded, reference], bars=400, new_per_bar=40)
        assert len(reference.skill) < 40 * 400 / 2  # pruning was exercised
    assert len(per_bar) >= 400 and per_bar[-1][0].ready
    for new, old in per_bar:
        assert (new.n_top, new.n_bot) == (old.n_top, old.n_bot)
        assert new.s_top == pytest.approx(old.s_top, abs=1e-9)
        assert new.s_bot == pytest.approx(old.s_bot, abs=1e-9)
        assert new.s_mood == pytest.approx(old.s_mood, abs=1e-9)
    assert bounded.top == reference.top and bounded.bot == reference.bot
    assert bounded.skill.keys() == reference.skill.keys()  # the same addresses pruned
    assert bounded.evicted == 0


def _bar(i: int, close: float) -> Bar:
    start = T0 + i * 5 * M
    return Bar("BTC-PERP", "5m", start, start + 5 * M, close, close, close, close, 1.0, 1, True)


def test_over_the_cap_the_smallest_scores_go_first_and_ties_by_address():
    cfg = CohortConfig(min_ranked=2, max_addresses=4, skill_halflife_bars=1e9)
    t = CohortTracker(cfg)
    # bar 0: flows; bar 1 (+1%): each address scores its flow x 1%
    flows = {"a": 500.0, "b": -400.0, "c": 10.0, "d": -10.0, "e": 300.0, "f": 5.0}
    for addr, f in flows.items():
        t.add_trade(T0 + 1_000, abs(f), 1.0, addr if f > 0 else None, addr if f < 0 else None)
    t.close_bar(_bar(0, 100.0))
    t.close_bar(_bar(1, 101.0))
    # |scores|: a 5, b 4, e 3, c 0.1, d 0.1, f 0.05: f goes, then c (ties with d by name)
    assert set(t.skill) == {"a", "b", "e", "d"}
    assert t.evicted == 2
    assert t.top == {"a"} and t.bot == {"b"}


def test_the_table_never_exceeds_the_cap_and_the_deciles_stay_consistent():
    cfg = CohortConfig(max_addresses=300)
    t = CohortTracker(cfg)
    per_bar = _one_off_addresses([t], bars=200, new_per_bar=40)
    assert len(t.raw) <= 300 and len(t.ranked) == len(t.raw)
    assert t.evicted > 0
    assert per_bar[-1][0].ready and per_bar[-1][0].n_top == 30
    assert sorted(t.ranked) == sorted((r, a) for a, r in t.raw.items())


def test_a_snapshot_round_trips_and_holds_no_settings():
    t = CohortTracker(CohortConfig(max_addresses=300))
    _replay([t], days=0.3)
    blob = pickle.dumps(t)
    assert b"CohortConfig" not in blob
    back = pickle.loads(blob)
    back.cfg = t.cfg
    assert back.ranked == t.ranked and back.raw == t.raw and back.scale == t.scale


def test_a_cap_below_min_ranked_stops_the_start():
    with pytest.raises(ConfigError, match="cohorts.max_addresses"):
        CohortConfig(min_ranked=20, max_addresses=10)


def test_a_snapshot_taken_before_the_bound_resumes_with_the_same_scores_and_deciles():
    cfg = CohortConfig(skill_halflife_bars=4.0)
    old = _UnboundedReference(cfg)
    _one_off_addresses([old], bars=50, new_per_bar=10)
    state = copy.deepcopy({k: v for k, v in vars(old).items() if k != "cfg"})
    state.update(width_ms=300_000, closed_through_ms=None)  # fields the old tracker had too
    resumed = CohortTracker.__new__(CohortTracker)
    resumed.__setstate__(state)
    resumed.cfg = cfg
    assert resumed.skill == old.skill
    assert resumed.top == old.top and resumed.bot == old.bot
    after_new, after_old = _one_off_addresses([resumed, old], bars=20, new_per_bar=10)[-1]
    assert after_new.s_top == pytest.approx(after_old.s_top, abs=1e-9)
