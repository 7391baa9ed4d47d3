"""SPEC 3 and 4: cohorts from addressed trades, as-of buffers and the context join."""

from __future__ import annotations

import copy

import pytest

from marketdata.generator import DEFAULT_START_MS, GeneratorConfig, generate
from operators.bars import Bar, BarBuilder
from operators.cohorts import CohortTracker, CohortValues
from operators.config import CohortConfig
from operators.events import CohortSnapshot, OverlaySignal
from operators.overlays import AsOf, ContextJoin, Staleness

M = 60_000
H = 60 * M
T0 = DEFAULT_START_MS  # 2024-01-01T00:00:00Z
LATENESS_MS = 5_000
WIDTH = {"5m": 5 * M, "15m": 15 * M, "1h": H}


def _bar(tf: str, end_ms: int, o=100.0, c=101.0, count=10) -> Bar:
    start = end_ms - WIDTH[tf]
    return Bar("BTC-PERP", tf, start, end_ms, o, max(o, c), min(o, c), c, 1.0, count, True)


def _generated_trades(days: float = 1.0) -> list[dict]:
    cfg = GeneratorConfig(days=days, trade_symbols=("BTC-PERP",), candle_symbols=())
    return [r for stream, r in generate(cfg) if stream == "trades"]


def _run_cohorts(trades: list[dict]) -> tuple[CohortTracker, dict[int, CohortValues]]:
    """Trades through the bar builder and the tracker in the order the market step uses."""
    builder = BarBuilder("BTC-PERP", LATENESS_MS)
    tracker = CohortTracker(CohortConfig())
    snaps: dict[int, CohortValues] = {}
    for r in trades:
        bars = builder.add_trade(r["ts_event_ms"], r["px"], r["qty"])
        assert bars is not None
        tracker.add_trade(r["ts_event_ms"], r["px"], r["qty"], r["buyer"], r["seller"])
        for bar in bars:
            snaps[bar.end_ms] = tracker.close_bar(bar)
    return tracker, snaps


# CohortTracker


def test_fewer_addresses_than_min_ranked_give_no_cohorts():
    tracker = CohortTracker(CohortConfig(min_ranked=20))
    px = 100.0
    for i in range(12):
        start = T0 + i * 5 * M
        for k in range(5):
            tracker.add_trade(start + k * 1_000, px, 1.0, f"buyer{k}", f"seller{k}")
        px *= 1.01
        values = tracker.close_bar(_bar("5m", start + 5 * M, c=px))
    assert (values.s_top, values.s_bot, values.s_mood) == (0.0, 0.0, 0.0)
    assert (values.n_top, values.n_bot) == (0, 0)
    assert not values.ready


def test_informed_addresses_end_up_over_represented_in_the_top_cohort():
    tracker, snaps = _run_cohorts(_generated_trades(days=1.0))
    assert snaps[max(snaps)].ready
    informed_top = sum("inf" in a for a in tracker.top)
    informed_bot = sum("inf" in a for a in tracker.bot)
    base_share = sum("inf" in a for a in tracker.skill) / len(tracker.skill)
    assert informed_top / len(tracker.top) > 3 * base_share
    assert informed_top > informed_bot


def test_trade_for_an_already_closed_bar_is_refused():
    tracker = CohortTracker(CohortConfig())
    assert tracker.add_trade(T0 + 1_000, 100.0, 1.0, "a", "b")
    tracker.close_bar(_bar("5m", T0 + 5 * M))
    assert tracker.add_trade(T0 + 5 * M - 1, 100.0, 1.0, "a", "b") is False
    assert tracker.add_trade(T0 + 5 * M, 100.0, 1.0, "a", "b") is True


def test_snapshot_at_close_t_does_not_change_when_trades_after_t_are_altered():
    trades = _generated_trades(days=1.0)
    t = T0 + 200 * 5 * M
    altered = copy.deepcopy(trades)
    for r in altered:
        if r["ts_event_ms"] >= t:
            r["buyer"], r["seller"] = r["seller"], r["buyer"]
            r["px"] = round(r["px"] * 1.03, 2)
            r["qty"] *= 7.0
    _, base = _run_cohorts(trades)
    _, moved = _run_cohorts(altered)
    assert {e: v for e, v in base.items() if e <= t} == {e: v for e, v in moved.items() if e <= t}
    assert any(base[e] != moved[e] for e in base if e > t)  # the alteration does matter later


# AsOf


def test_latest_returns_the_last_value_at_or_before_t_even_when_a_later_one_came_first():
    buf: AsOf[str] = AsOf()
    buf.add(T0 + 20 * M, "later")
    buf.add(T0 + 10 * M, "earlier")
    assert buf.latest(T0 + 15 * M) == (T0 + 10 * M, "earlier")
    assert buf.latest(T0 + 20 * M) == (T0 + 20 * M, "later")


def test_latest_before_the_first_value_is_none():
    buf: AsOf[str] = AsOf()
    buf.add(T0 + 10 * M, "x")
    assert buf.latest(T0 + 10 * M - 1) is None


def test_take_due_returns_values_up_to_t_in_time_order_and_keeps_the_rest():
    buf: AsOf[str] = AsOf()
    for ts, v in [(30, "c"), (10, "a"), (40, "d"), (20, "b")]:
        buf.add(T0 + ts, v)
    assert buf.take_due(T0 + 30) == ["a", "b", "c"]
    assert buf.take_due(T0 + 30) == []
    assert buf.take_due(T0 + 40) == ["d"]


# ContextJoin: overlays usable from their close, staleness, no lookahead

LIMITS = Staleness(overlay_intervals=2.0, cohort_intervals=2.0)


def _feed_market_order(join: ContextJoin, first_end: int, last_end: int) -> Bar:
    """Higher bars first at each end, as the market step emits them; the last 5m bar."""
    end = first_end
    while True:
        for tf in ("15m", "1h"):
            if end % WIDTH[tf] == 0:
                join.add(_bar(tf, end, o=100.0, c=100.0 + (end - T0) / H))
        if end == last_end:
            return _bar("5m", end)
        end += 5 * M


def test_at_14_35_the_latest_15m_closed_at_14_30_and_the_1h_at_14_00():
    join = ContextJoin()
    bar_5m = _feed_market_order(join, T0 + 12 * H + 5 * M, T0 + 14 * H + 35 * M)
    ctx = join.at_close(bar_5m, None, LIMITS)
    o15, o1h = ctx.overlays["15m"], ctx.overlays["1h"]
    assert o15.close_ms == T0 + 14 * H + 30 * M
    assert o1h.close_ms == T0 + 14 * H
    assert (o15.age_ms, o1h.age_ms) == (5 * M, 35 * M)
    assert not (o15.stale or o15.missing or o1h.stale or o1h.missing)
    assert o1h.trend == o1h.usable_trend == _bar("1h", T0 + 14 * H, c=114.0).ret


def test_1h_bar_opening_13_00_is_used_from_14_00():
    join = ContextJoin()
    bar_5m = _feed_market_order(join, T0 + 12 * H + 5 * M, T0 + 13 * H + 55 * M)
    assert join.at_close(bar_5m, None, LIMITS).overlays["1h"].close_ms == T0 + 13 * H
    join.add(_bar("1h", T0 + 14 * H))
    view = join.at_close(_bar("5m", T0 + 14 * H), None, LIMITS).overlays["1h"]
    assert view.close_ms == T0 + 14 * H


def test_higher_bar_closing_after_t_is_not_used_for_t():
    join = ContextJoin()
    join.add(_bar("1h", T0 + 15 * H, o=100.0, c=110.0))
    view = join.at_close(_bar("5m", T0 + 14 * H + 35 * M), None, LIMITS).overlays["1h"]
    assert view.trend == 0.0 and view.usable_trend is None


def test_overlay_older_than_two_intervals_is_stale_and_neutral():
    join = ContextJoin()
    join.add(_bar("15m", T0 + 14 * H, o=100.0, c=105.0))
    join.add(_bar("1h", T0 + 12 * H, o=100.0, c=105.0))
    ctx = join.at_close(_bar("5m", T0 + 14 * H + 35 * M), None, LIMITS)
    for tf in ("15m", "1h"):
        view = ctx.overlays[tf]
        assert view.stale and not view.missing, tf
        assert view.trend == 0.0 and view.usable_trend is None, tf


def test_overlay_exactly_two_intervals_old_is_still_used():
    join = ContextJoin()
    join.add(_bar("15m", T0 + 14 * H, o=100.0, c=105.0))
    view = join.at_close(_bar("5m", T0 + 14 * H + 30 * M), None, LIMITS).overlays["15m"]
    assert not view.stale
    assert view.usable_trend == pytest.approx(0.05)


def test_overlay_bar_without_trades_is_stale_and_neutral():
    join = ContextJoin()
    join.add(_bar("15m", T0 + 14 * H + 30 * M, count=0))
    view = join.at_close(_bar("5m", T0 + 14 * H + 35 * M), None, LIMITS).overlays["15m"]
    assert view.stale and view.usable_trend is None


def test_missing_overlay_is_neutral():
    ctx = ContextJoin().at_close(_bar("5m", T0 + 14 * H + 35 * M), None, LIMITS)
    for view in ctx.overlays.values():
        assert view.missing and not view.stale
        assert (view.trend, view.usable_trend, view.ext_signal) == (0.0, None, 0.0)


def _signal(ts_ms: int, signal: float, tf: str = "1h") -> OverlaySignal:
    return OverlaySignal("BTC-PERP", ts_ms, tf, signal, 0.8, "test")


def test_external_overlay_signal_after_t_is_not_used_for_t():
    t = T0 + 14 * H + 35 * M
    join = ContextJoin()
    join.add(_signal(t + 1, 0.9))
    view = join.at_close(_bar("5m", t), None, LIMITS).overlays["1h"]
    assert (view.ext_signal, view.ext_confidence, view.ext_age_ms) == (0.0, 0.0, None)


def test_external_overlay_signal_at_or_before_t_is_used_even_if_a_later_one_arrived_first():
    t = T0 + 14 * H + 35 * M
    join = ContextJoin()
    join.add(_signal(t + 1, 0.9))
    join.add(_signal(t - 10 * M, -0.3))
    view = join.at_close(_bar("5m", t), None, LIMITS).overlays["1h"]
    assert (view.ext_signal, view.ext_confidence, view.ext_age_ms) == (-0.3, 0.8, 10 * M)


def test_external_overlay_signal_older_than_two_intervals_is_stale_and_neutral():
    t = T0 + 14 * H + 35 * M
    join = ContextJoin()
    join.add(_signal(t - 31 * M, 0.7, tf="15m"))
    view = join.at_close(_bar("5m", t), None, LIMITS).overlays["15m"]
    assert view.ext_stale and view.ext_signal == 0.0


# ContextJoin: cohorts


def test_missing_cohort_is_neutral():
    view = ContextJoin().at_close(_bar("5m", T0 + 5 * M), None, LIMITS).cohort
    assert (view.s_top, view.s_bot, view.s_mood, view.source) == (0.0, 0.0, 0.0, "none")


def test_external_cohort_snapshot_older_than_two_5m_bars_is_stale_and_neutral():
    t = T0 + H
    join = ContextJoin()
    join.add(CohortSnapshot("BTC-PERP", t - 10 * M - 1, 0.5, -0.5, 0.5, "ext"))
    view = join.at_close(_bar("5m", t), None, LIMITS).cohort
    assert view.stale and (view.s_top, view.s_mood) == (0.0, 0.0)


def test_ready_internal_cohorts_take_precedence_over_an_external_snapshot():
    t = T0 + H
    join = ContextJoin()
    join.add(CohortSnapshot("BTC-PERP", t - M, 0.5, -0.5, 0.5, "ext"))
    view = join.at_close(_bar("5m", t), CohortValues(0.2, -0.1, 0.15, 3, 3), LIMITS).cohort
    assert (view.source, view.s_top) == ("trades", 0.2)
