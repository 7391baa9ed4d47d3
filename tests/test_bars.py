"""SPEC 3 bars: event-time 5m bars with lateness and gaps; 15m and 1h composed from them.

Parity: every timeframe equals a pandas resample (label left, closed left, origin epoch,
UTC) of the same records, on real trades and candles from ../shared/data and on generated
trades.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.files import FileSpec, load_candles, load_trades
from marketdata.generator import GeneratorConfig, generate
from operators.bars import Bar, BarAggregator, BarBuilder

M = 60_000  # one minute in ms
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, on every bar boundary
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LATENESS_MS = 5_000


def _bar(tf: str, start_ms: int, o, h, lo, c, v=1.0, count=1, complete=True) -> Bar:
    width = {"5m": 5 * M, "15m": 15 * M, "1h": 60 * M}[tf]
    return Bar("BTC-PERP", tf, start_ms, start_ms + width, o, h, lo, c, v, count, complete)


# BarBuilder: watermark, lateness, gaps


def test_5m_bar_is_emitted_only_once_the_watermark_passes_its_end():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    assert b.add_trade(T0 + 10_000, 100.0, 1.0) == ()
    assert b.add_trade(T0 + 5 * M + 4_999, 101.0, 1.0) == ()  # watermark 1 ms short of the end
    bars = b.add_trade(T0 + 5 * M + 5_000, 102.0, 1.0)  # watermark exactly at the end
    assert [(x.start_ms, x.end_ms) for x in bars] == [(T0, T0 + 5 * M)]


def test_emitted_bar_has_ohlcv_and_count_of_its_trades():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    for ts, px, qty in [(T0 + 1, 100.0, 1.0), (T0 + 2, 105.0, 2.0), (T0 + 3, 98.0, 0.5)]:
        b.add_trade(ts, px, qty)
    (bar,) = b.add_trade(T0 + 5 * M, 99.0, 1.0)
    assert (bar.open, bar.high, bar.low, bar.close) == (100.0, 105.0, 98.0, 98.0)
    assert (bar.volume, bar.count, bar.complete) == (3.5, 3, True)
    assert (bar.symbol, bar.timeframe) == ("BTC-PERP", "5m")


def test_late_trade_within_lateness_folds_into_the_open_bar_by_event_time():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    b.add_trade(T0 + 60_000, 100.0, 1.0)
    b.add_trade(T0 + 120_000, 101.0, 1.0)
    b.add_trade(T0 + 5 * M + 500, 200.0, 1.0)  # next bar; watermark still before T0 + 5m
    assert b.add_trade(T0 + 30_000, 99.0, 1.0) == ()  # earlier than the first: the new open
    assert b.add_trade(T0 + 5 * M - 1_000, 97.0, 1.0) == ()  # later than the last: the close
    (bar,) = b.add_trade(T0 + 5 * M + 5_000, 201.0, 1.0)
    assert (bar.open, bar.high, bar.low, bar.close) == (99.0, 101.0, 97.0, 97.0)
    assert (bar.volume, bar.count) == (4.0, 4)


def test_trade_for_an_already_emitted_bar_is_returned_as_late():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    b.add_trade(T0 + 1_000, 100.0, 1.0)
    assert len(b.add_trade(T0 + 5 * M + 5_000, 101.0, 1.0)) == 1
    assert b.add_trade(T0 + 5 * M - 1, 50.0, 1.0) is None
    (bar,) = b.flush()  # the late trade was not folded into the next bar either
    assert (bar.start_ms, bar.low, bar.count) == (T0 + 5 * M, 101.0, 1)


def test_empty_window_between_two_trades_is_a_gap_bar_flat_at_the_previous_close():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    b.add_trade(T0 + 1_000, 100.0, 1.0)
    b.add_trade(T0 + 2_000, 104.0, 1.0)
    bars = b.add_trade(T0 + 10 * M + 1, 110.0, 1.0)
    assert [x.start_ms for x in bars] == [T0, T0 + 5 * M]
    gap = bars[1]
    assert (gap.open, gap.high, gap.low, gap.close) == (104.0,) * 4
    assert (gap.volume, gap.count, gap.complete) == (0.0, 0, False)


def test_flush_closes_the_open_bar():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    b.add_trade(T0 + 1_000, 100.0, 1.0)
    b.add_trade(T0 + 2_000, 101.0, 2.0)
    (bar,) = b.flush()
    assert (bar.start_ms, bar.close, bar.volume, bar.complete) == (T0, 101.0, 3.0, True)
    assert b.flush() == ()


def test_1m_candles_fold_into_a_5m_bar_emitted_at_the_last_candles_close():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    candles = [(100, 103, 99, 102, 1.0), (102, 108, 101, 107, 2.0), (107, 107, 95, 96, 3.0),
               (96, 97, 96, 97, 4.0), (97, 100, 97, 98, 5.0)]  # fmt: skip
    out = []
    for i, (o, h, lo, c, v) in enumerate(candles):
        out.append(b.add_candle(T0 + i * M, M, o, h, lo, c, v))
    assert [list(x) for x in out[:4]] == [[], [], [], []]
    (bar,) = out[4]
    assert (bar.open, bar.high, bar.low, bar.close) == (100, 108, 95, 98)
    assert (bar.volume, bar.count, bar.start_ms, bar.end_ms) == (15.0, 5, T0, T0 + 5 * M)


def test_5m_candles_pass_through_as_5m_bars():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    (bar,) = b.add_candle(T0 + 5 * M, 5 * M, 100.0, 110.0, 90.0, 105.0, 7.0)
    assert (bar.start_ms, bar.open, bar.high, bar.low, bar.close, bar.volume) == (
        T0 + 5 * M, 100.0, 110.0, 90.0, 105.0, 7.0
    )  # fmt: skip


def test_candle_out_of_order_within_lateness_sets_open_by_event_time():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=2 * M)
    b.add_candle(T0 + 1 * M, M, 102, 103, 101, 103, 1.0)
    b.add_candle(T0 + 0 * M, M, 100, 102, 100, 102, 1.0)  # arrives second, opened first
    for i in range(2, 4):
        assert b.add_candle(T0 + i * M, M, 103, 104, 102, 103, 1.0) == ()
    (bar,) = b.add_candle(T0 + 4 * M, M, 103, 104, 102, 103, 1.0)  # ends the bucket
    assert (bar.open, bar.high, bar.low, bar.close, bar.count) == (100, 104, 100, 103, 5)


def test_the_1m_candle_ending_a_5m_bucket_closes_the_bar_at_once_despite_lateness():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    for i in range(4):
        assert b.add_candle(T0 + i * M, M, 100, 101, 99, 100, 1.0) == ()
    (bar,) = b.add_candle(T0 + 4 * M, M, 100, 102, 99, 101, 1.0)  # not one candle later
    assert (bar.start_ms, bar.end_ms, bar.close, bar.count, bar.complete) == (
        T0, T0 + 5 * M, 101, 5, True
    )  # fmt: skip
    assert b.add_candle(T0 + 5 * M, M, 101, 101, 101, 101, 1.0) == ()


def test_a_5m_candle_closes_its_bar_at_once_despite_lateness():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    (bar,) = b.add_candle(T0, 5 * M, 100.0, 110.0, 90.0, 105.0, 7.0)
    assert (bar.start_ms, bar.close, bar.complete) == (T0, 105.0, True)


def test_a_5m_bar_from_fewer_than_five_1m_candles_is_incomplete():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    for i in (0, 1, 4):  # minutes 2 and 3 are missing
        out = b.add_candle(T0 + i * M, M, 100, 101, 99, 100, 1.0)
    (bar,) = out
    assert (bar.count, bar.complete) == (3, False)


def test_a_5m_bar_from_a_1m_candle_sent_twice_is_still_incomplete():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    for i in (0, 1, 2, 2, 4):  # minute 3 missing, minute 2 twice: five candles, four minutes
        out = b.add_candle(T0 + i * M, M, 100, 101, 99, 100, 1.0)
    (bar,) = out
    assert bar.complete is False


def test_a_partial_5m_bar_makes_its_15m_bar_incomplete():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    agg = BarAggregator("BTC-PERP", "15m")
    closed = []
    for i in range(15):
        if i == 7:
            continue  # one minute of the second 5m bar is missing
        for bar in b.add_candle(T0 + i * M, M, 100, 101, 99, 100, 1.0):
            closed.append(agg.add(bar))
    (h,) = [x for x in closed if x is not None]
    assert (h.timeframe, h.count, h.complete) == ("15m", 14, False)


def test_processing_time_progress_closes_open_and_empty_bars_after_the_lateness():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=5_000)
    b.add_trade(T0 + 1_000, 100.0, 1.0)
    assert b.advance_to(T0 + 5 * M + 4_999) == ()
    (bar,) = b.advance_to(T0 + 5 * M + 5_000)
    assert (bar.start_ms, bar.count, bar.complete) == (T0, 1, True)
    gaps = b.advance_to(T0 + 15 * M + 5_000)  # nothing traded: two empty windows
    assert [(g.start_ms, g.count, g.complete, g.close) for g in gaps] == [
        (T0 + 5 * M, 0, False, 100.0), (T0 + 10 * M, 0, False, 100.0)
    ]  # fmt: skip
    assert b.add_trade(T0 + 14 * M, 101.0, 1.0) is None  # that window is closed: late


def test_processing_time_progress_before_any_record_closes_nothing():
    assert BarBuilder("BTC-PERP", allowed_lateness_ms=0).advance_to(T0 + 60 * M) == ()


# BarAggregator: 15m and 1h from 5m


def test_15m_bar_is_emitted_exactly_at_its_end_from_three_5m_bars():
    agg = BarAggregator("BTC-PERP", "15m")
    assert agg.add(_bar("5m", T0, 100, 102, 99, 101, 1.0, 3)) is None
    assert agg.add(_bar("5m", T0 + 5 * M, 101, 106, 100, 104, 2.0, 4)) is None
    hb = agg.add(_bar("5m", T0 + 10 * M, 104, 105, 97, 98, 3.0, 5))
    assert (hb.timeframe, hb.start_ms, hb.end_ms) == ("15m", T0, T0 + 15 * M)
    assert (hb.open, hb.high, hb.low, hb.close) == (100, 106, 97, 98)
    assert (hb.volume, hb.count, hb.complete) == (6.0, 12, True)


def test_1h_bar_is_emitted_at_the_twelfth_5m_bar():
    agg = BarAggregator("BTC-PERP", "1h")
    out = [agg.add(_bar("5m", T0 + i * 5 * M, 100, 101, 99, 100)) for i in range(12)]
    assert out[:11] == [None] * 11
    assert (out[11].start_ms, out[11].end_ms, out[11].count) == (T0, T0 + 60 * M, 12)
    assert out[11].complete


def test_higher_bar_starting_mid_window_is_partial_and_incomplete():
    agg = BarAggregator("BTC-PERP", "15m")
    assert agg.add(_bar("5m", T0 + 5 * M, 100, 101, 99, 100)) is None
    hb = agg.add(_bar("5m", T0 + 10 * M, 100, 103, 99, 102))
    assert (hb.start_ms, hb.open, hb.close, hb.count, hb.complete) == (T0, 100, 102, 2, False)


def test_higher_bar_with_a_gap_part_is_incomplete_and_keeps_the_traded_close():
    agg = BarAggregator("BTC-PERP", "15m")
    agg.add(_bar("5m", T0, 100, 101, 99, 100))
    agg.add(_bar("5m", T0 + 5 * M, 103, 104, 102, 103))
    hb = agg.add(_bar("5m", T0 + 10 * M, 103, 103, 103, 103, 0.0, 0, complete=False))
    assert (hb.open, hb.high, hb.low, hb.close, hb.volume) == (100, 104, 99, 103, 2.0)
    assert hb.complete is False


def test_higher_bar_opening_with_a_gap_takes_its_open_from_the_first_traded_part():
    agg = BarAggregator("BTC-PERP", "15m")
    agg.add(_bar("5m", T0, 90, 90, 90, 90, 0.0, 0, complete=False))
    agg.add(_bar("5m", T0 + 5 * M, 100, 101, 99, 100))
    hb = agg.add(_bar("5m", T0 + 10 * M, 100, 103, 98, 102))
    assert (hb.open, hb.high, hb.low, hb.close) == (100, 103, 98, 102)
    assert hb.complete is False


def test_aggregator_flush_returns_the_partial_bar_marked_incomplete():
    agg = BarAggregator("BTC-PERP", "1h")
    agg.add(_bar("5m", T0, 100, 101, 99, 100))
    hb = agg.flush()
    assert hb is not None and hb.complete is False
    assert agg.flush() is None


# parity with pandas


def _bars_from_trades(ts: np.ndarray, px: np.ndarray, qty: np.ndarray) -> list[Bar]:
    b = BarBuilder("BTC-PERP", LATENESS_MS)
    out: list[Bar] = []
    for t, p, q in zip(ts.tolist(), px.tolist(), qty.tolist(), strict=True):
        bars = b.add_trade(t, p, q)
        assert bars is not None, f"trade at {t} reported late in time-sorted input"
        out.extend(bars)
    return out + b.flush()


def _bars_from_candles(df: pd.DataFrame, interval_ms: int) -> list[Bar]:
    b = BarBuilder("BTC-PERP", LATENESS_MS)
    out: list[Bar] = []
    for t, o, h, lo, c, v in df[["ts_ms", "open", "high", "low", "close", "volume"]].itertuples(
        index=False, name=None
    ):
        bars = b.add_candle(int(t), interval_ms, o, h, lo, c, v)
        assert bars is not None
        out.extend(bars)
    return out + b.flush()


def _higher(bars_5m: list[Bar], tf: str) -> list[Bar]:
    agg = BarAggregator("BTC-PERP", tf)
    out = [hb for b in bars_5m if (hb := agg.add(b)) is not None]
    last = agg.flush()
    return out + ([last] if last is not None else [])


def _resample(df: pd.DataFrame, rule: str, spec: dict[str, tuple[str, str]]) -> pd.DataFrame:
    idx = pd.to_datetime(df["ts_ms"], unit="ms", utc=True)
    r = df.set_index(idx).resample(rule, label="left", closed="left", origin="epoch")
    out = r.agg(**spec)
    out = out[out["count"] > 0]
    out.index = out.index.as_unit("ms").asi8
    return out


def _trades_frame(ts, px, qty) -> pd.DataFrame:
    return pd.DataFrame({"ts_ms": ts, "px": px, "qty": qty})


TRADE_AGG = {
    "open": ("px", "first"),
    "high": ("px", "max"),
    "low": ("px", "min"),
    "close": ("px", "last"),
    "volume": ("qty", "sum"),
    "count": ("px", "count"),
}
CANDLE_AGG = {
    "open": ("open", "first"),
    "high": ("high", "max"),
    "low": ("low", "min"),
    "close": ("close", "last"),
    "volume": ("volume", "sum"),
    "count": ("open", "count"),
}


def _assert_same_as_pandas(bars: list[Bar], expected: pd.DataFrame) -> None:
    ours = {b.start_ms: b for b in bars if b.count > 0}
    assert sorted(ours) == expected.index.tolist()
    assert len(expected) > 0
    starts = [b.start_ms for b in bars]
    assert starts == sorted(set(starts)), "bars must be unique and in time order"
    for start, row in expected.iterrows():
        b = ours[start]
        assert (b.open, b.high, b.low, b.close) == (row.open, row.high, row.low, row.close), start
        assert b.count == row["count"], start
        assert b.volume == pytest.approx(row.volume, rel=1e-9, abs=0.0), start


def _assert_trade_parity(ts: np.ndarray, px: np.ndarray, qty: np.ndarray) -> None:
    df = _trades_frame(ts, px, qty)
    bars_5m = _bars_from_trades(ts, px, qty)
    _assert_same_as_pandas(bars_5m, _resample(df, "5min", TRADE_AGG))
    _assert_same_as_pandas(_higher(bars_5m, "15m"), _resample(df, "15min", TRADE_AGG))
    _assert_same_as_pandas(_higher(bars_5m, "1h"), _resample(df, "1h", TRADE_AGG))


def _shared(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name",
    [
        "binance_spot_btcusdt_trades_2021-01-08.parquet",
        "ws/binance_usdm_ws_btcusdt_2024-08-08.jsonl.gz",
        "ws/hyperliquid_ws_BTC_2025-01-26.jsonl.gz",
    ],
)
def test_bars_from_real_trades_equal_a_pandas_resample(name):
    df = load_trades(FileSpec.parse(f"trades:{_shared(name)}"))
    assert len(df) > 0
    _assert_trade_parity(df["ts_ms"].to_numpy(), df["px"].to_numpy(), df["qty"].to_numpy())


@pytest.mark.realdata
def test_bars_from_real_1m_candles_equal_a_pandas_resample():
    path = _shared("binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather")
    df = load_candles(FileSpec.parse(f"candles:{path}"))
    bars_5m = _bars_from_candles(df, M)
    _assert_same_as_pandas(bars_5m, _resample(df, "5min", CANDLE_AGG))
    _assert_same_as_pandas(_higher(bars_5m, "15m"), _resample(df, "15min", CANDLE_AGG))
    _assert_same_as_pandas(_higher(bars_5m, "1h"), _resample(df, "1h", CANDLE_AGG))


def test_bars_from_generated_trades_equal_a_pandas_resample():
    recs = [
        r
        for stream, r in generate(GeneratorConfig(days=1))
        if stream == "trades" and r["symbol"] == "BTC-PERP"
    ]
    ts = np.array([r["ts_event_ms"] for r in recs], dtype=np.int64)
    px = np.array([r["px"] for r in recs])
    qty = np.array([r["qty"] for r in recs])
    _assert_trade_parity(ts, px, qty)


# out-of-order arrival within the allowed lateness


def _build_all(trades: list[tuple[int, float, float]], lateness: int) -> list[Bar]:
    b = BarBuilder("BTC-PERP", lateness)
    out: list[Bar] = []
    for ts, px, qty in trades:
        bars = b.add_trade(ts, px, qty)
        assert bars is not None, f"trade at {ts} reported late"
        out.extend(bars)
    return out + b.flush()


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    lateness=st.integers(0, 10 * M),
    offset=st.integers(0, 10 * M),
    n=st.integers(1, 60),
)
def test_arrival_delayed_within_allowed_lateness_gives_the_same_bars_as_sorted(
    data, lateness, offset, n
):
    steps = data.draw(st.lists(st.integers(1, 3 * M), min_size=n, max_size=n))
    ts = (T0 + offset + np.cumsum(steps)).tolist()  # distinct event times
    px = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    qty = data.draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    delays = data.draw(st.lists(st.integers(0, lateness), min_size=n, max_size=n))
    # quantities in 1/256 units keep every volume sum exact in any order
    trades = [(t, float(p), q / 256) for t, p, q in zip(ts, px, qty, strict=True)]
    arrival = sorted(range(n), key=lambda i: (ts[i] + delays[i], i))
    assert _build_all([trades[i] for i in arrival], lateness) == _build_all(trades, lateness)


def test_the_completeness_kpi_does_not_count_a_partial_bar_as_complete():
    from backtest.kpis import completeness

    rows = [
        {"symbol": "BTC-PERP", "start_ms": T0 + i * 5 * M, "end_ms": T0 + (i + 1) * 5 * M,
         "count": count, "complete": complete}
        for i, (count, complete) in enumerate([(5, True), (2, False), (0, False), (5, True)])
    ]  # fmt: skip
    (s,) = completeness(pd.DataFrame(rows))["symbols"]
    assert (s["expected"], s["with_data"], s["gap_bars"], s["incomplete_bars"]) == (4, 2, 1, 2)
    assert s["completeness"] == 0.5


def test_a_1m_candle_delivered_twice_is_folded_once():
    """A redelivered candle (a file with a repeated row, a second producer) is the same
    minute: its volume must not count twice in a bar that is otherwise complete."""
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    out = []
    for i in (0, 1, 2, 2, 3, 4):
        out += b.add_candle(T0 + i * M, M, 100, 101, 99, 100, 1.0)
    (bar,) = out
    assert (bar.volume, bar.count, bar.complete) == (5.0, 5, True)


def test_a_revised_1m_candle_replaces_the_one_it_revises():
    b = BarBuilder("BTC-PERP", allowed_lateness_ms=0)
    out = []
    b.add_candle(T0, M, 90, 101, 89, 100, 1.0)  # first print, then revised
    b.add_candle(T0, M, 100, 101, 99, 100, 1.0)
    b.add_candle(T0 + M, M, 100, 130, 99, 100, 9.0)  # a wick that the venue corrected
    b.add_candle(T0 + M, M, 100, 102, 99, 101, 2.0)
    for i in (2, 3):
        out += b.add_candle(T0 + i * M, M, 101, 103, 100, 102, 1.0)
    out += b.add_candle(T0 + 4 * M, M, 102, 104, 101, 103, 1.0)
    (bar,) = out
    assert (bar.open, bar.high, bar.low, bar.close) == (100, 104, 99, 103)
    assert (bar.volume, bar.count, bar.complete) == (6.0, 5, True)
