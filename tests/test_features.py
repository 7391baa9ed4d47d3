"""Features: the streaming code equals its batch twin, and the indicators equal `ta`'s.

Tolerances. Streaming vs batch: 1e-9 absolute on every feature (they differ only by
summation order, ~1e-13 in practice). Against `ta` 0.11.0, from bar 300 on (the MACD
signal line in `ta` starts at bar 26, ours at bar 1; the start-up difference has decayed
by 0.8^274 < 1e-26 there):
- RSI(14): 1e-9 absolute (0..100 scale); same convention, so equal from the start;
- MACD(12, 26, 9) histogram: 1e-9 absolute in USD;
- ATR(14): 1e-9 absolute in USD;
- Bollinger %B(20, 2): 1e-8 absolute, because `ta` takes the rolling standard
  deviation from pandas' single-pass rolling variance, which loses ~1e-9 at BTC prices
  (our two-pass value matches an exact math.fsum recomputation to 1e-12, tested below).
"""

from __future__ import annotations

import collections
import copy
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import ta

from marketdata.files import file_records
from models.dataset import bar_frame, contexts, feature_parity, parse_source
from operators.features import (
    CONTEXT_FEATURES,
    EXTRA_FEATURES,
    FEATURES,
    FEATURES_V2,
    READY_AFTER,
    FeatureState,
    batch_features,
)
from tests.conftest import shared_file

REAL_INPUTS = {
    "ftx_1m": ("ftx_btc-perp_2021-12-31_2022-02-01_1m.csv", "?volume=quote"),
    "binance_spot_1m": ("binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather", ""),
    "binance_perp_5m": ("binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json", ""),
}
TA_FROM_BAR = 300


@pytest.fixture(scope="module", params=sorted(REAL_INPUTS))
def real_contexts(request):
    name, query = REAL_INPUTS[request.param]
    path = shared_file(name)
    records = file_records(parse_source(f"candles:{path}{query}"))
    ctxs = list(contexts(records, frozenset({"BTC-PERP"})))
    return request.param, ctxs


def _streamed(ctxs) -> pd.DataFrame:
    nan_row = dict.fromkeys(FEATURES_V2, math.nan)
    return pd.DataFrame([c.features or nan_row for c in ctxs], columns=list(FEATURES_V2))


def _random_bars(n: int, seed: int) -> pd.DataFrame:
    """A random walk at BTC prices with flat gap bars and zero-volume stretches."""
    rng = np.random.default_rng(seed)
    close = 60_000 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    gap = rng.random(n) < 0.03
    gap[0] = False
    for i in np.flatnonzero(gap):
        close[i] = close[i - 1]
    high = close * np.exp(np.abs(rng.normal(0, 0.001, n)))
    low = close * np.exp(-np.abs(rng.normal(0, 0.001, n)))
    high[gap], low[gap] = close[gap], close[gap]
    volume = np.where(gap, 0.0, rng.lognormal(3, 1, n))
    frame = pd.DataFrame({"close": close, "high": high, "low": low, "volume": volume})
    for name in CONTEXT_FEATURES:
        frame[name] = rng.normal(0, 0.01, n)
    return frame


def _stream_frame(frame: pd.DataFrame) -> pd.DataFrame:
    fs = FeatureState()
    rows = []
    for r in frame.itertuples(index=False):
        ctx = {k: getattr(r, k) for k in CONTEXT_FEATURES}
        rows.append(fs.update(r.close, r.high, r.low, r.volume, ctx))
    nan_row = dict.fromkeys(FEATURES_V2, math.nan)
    return pd.DataFrame([x or nan_row for x in rows], columns=list(FEATURES_V2))


# -- streaming vs batch -------------------------------------------------------------------
@pytest.mark.realdata
def test_streaming_features_equal_the_batch_twin_on_real_data(real_contexts):
    name, ctxs = real_contexts
    streamed = _streamed(ctxs).to_numpy()
    batch = batch_features(bar_frame(ctxs)).to_numpy()
    assert np.array_equal(np.isnan(streamed), np.isnan(batch)), name
    assert np.nanmax(np.abs(streamed - batch)) <= 1e-9, name
    assert feature_parity(ctxs) <= 1e-9
    assert (~np.isnan(streamed).any(axis=1)).sum() == len(ctxs) - (READY_AFTER - 1)


@pytest.mark.realdata
def test_every_v2_feature_equals_its_batch_twin_on_the_new_perp_file_with_varying_funding():
    from models.evaluate import research_contexts

    ctxs = research_contexts(max_bars=6000)
    streamed, batch = _streamed(ctxs), batch_features(bar_frame(ctxs))
    assert streamed["funding_change_8h"].abs().max() > 0, "funding must vary in this file"
    for name in FEATURES_V2:
        diff = (streamed[name] - batch[name]).abs().max()
        assert diff <= 1e-9, (name, diff)
    for name in EXTRA_FEATURES:  # a parity of constants would prove nothing
        assert streamed[name].iloc[READY_AFTER:].std() > 0, f"{name} is constant"


def test_streaming_features_equal_the_batch_twin_with_gap_bars_and_context():
    frame = _random_bars(1500, seed=5)
    streamed, batch = _stream_frame(frame), batch_features(frame)
    assert np.array_equal(streamed.isna().to_numpy(), batch.isna().to_numpy())
    diff = (streamed - batch).abs().to_numpy()
    assert np.nanmax(diff) <= 1e-9
    for name in CONTEXT_FEATURES:  # the context inputs pass through as they were at the close
        assert streamed[name].iloc[-1] == frame[name].iloc[-1]
    for name in EXTRA_FEATURES:  # every new feature, one by one
        assert np.nanmax(diff[:, list(FEATURES_V2).index(name)]) <= 1e-9, name


def test_the_v2_features_match_independent_pandas_and_scipy_formulas():
    from scipy.stats import skew

    frame = _random_bars(600, seed=11)
    streamed = _stream_frame(frame).iloc[READY_AFTER - 1 :]
    idx = streamed.index
    log_ret = np.log(frame["close"]).diff()
    lo, hi = frame["low"].rolling(96).min(), frame["high"].rolling(96).max()
    vol = frame["volume"]
    expected = {
        "ret_96": np.log(frame["close"] / frame["close"].shift(96)),
        "rv_8h_annual": log_ret.rolling(96).std() * math.sqrt(365 * 288),
        "range_pos_96": (frame["close"] - lo) / (hi - lo),
        "volume_ratio": vol.rolling(12).mean() / vol.rolling(96).mean(),
        "skew_48": log_ret.rolling(48).apply(lambda w: skew(w, bias=True), raw=True),
        "funding_change_8h": frame["funding_rate"].diff(96),
        "rv_ratio": log_ret.rolling(12).std() / log_ret.rolling(48).std(),
    }
    for name, series in expected.items():
        np.testing.assert_allclose(streamed[name], series[idx], rtol=1e-9, atol=1e-12, err_msg=name)


def test_features_start_after_the_warm_up():
    frame = _random_bars(READY_AFTER + 5, seed=1)
    streamed = _stream_frame(frame)
    assert streamed.iloc[: READY_AFTER - 1].isna().all(axis=None)
    assert not streamed.iloc[READY_AFTER - 1 :].isna().any(axis=None)


def test_a_flat_market_gives_neutral_features():
    fs = FeatureState()
    out = None
    for _ in range(READY_AFTER):
        out = fs.update(100.0, 100.0, 100.0, 5.0, {})
    assert out is not None
    assert out["rsi_14"] == 50.0 and out["bb_pband"] == 0.5 and out["volume_z"] == 0.0
    assert out["rv_annual"] == 0.0 and out["macd_hist"] == 0.0 and out["close_loc"] == 0.5
    assert all(out[f"ret_{k}"] == 0.0 for k in (1, 3, 12, 48))
    assert all(out[name] == 0.0 for name in CONTEXT_FEATURES)  # missing context is neutral
    assert out["rv_ratio"] == 1.0 and out["range_pos_96"] == 0.5 and out["volume_ratio"] == 1.0
    assert out["skew_48"] == 0.0 and out["ret_96"] == 0.0 and out["funding_change_8h"] == 0.0


def test_a_snapshotted_state_continues_exactly_like_the_original():
    frame = _random_bars(400, seed=8)
    rows = list(frame.itertuples(index=False))
    fs = FeatureState()
    for r in rows[:250]:
        fs.update(r.close, r.high, r.low, r.volume, {})
    copies = [copy.deepcopy(fs), pickle.loads(pickle.dumps(fs))]
    for r in rows[250:]:
        want = fs.update(r.close, r.high, r.low, r.volume, {})
        for other in copies:
            assert other.update(r.close, r.high, r.low, r.volume, {}) == want


def test_a_snapshot_from_before_the_v2_features_resumes_and_refills_them():
    """A recovery snapshot written by the v1 code: v1 features go on unchanged, the v2
    ones come back once their windows have refilled (never computed on short windows)."""
    frame = _random_bars(500, seed=9)
    rows = list(frame.itertuples(index=False))
    fs = FeatureState()
    for r in rows[:250]:
        fs.update(r.close, r.high, r.low, r.volume, {})
    old = copy.deepcopy(fs.__dict__)  # the v1 state's fields and window lengths
    for name in ("highs", "lows", "fundings", "v2_bars"):
        old.pop(name)
    old["closes"] = collections.deque(list(fs.closes)[-49:], maxlen=49)
    old["log_rets"] = collections.deque(list(fs.log_rets)[-48:], maxlen=48)
    old["volumes"] = collections.deque(list(fs.volumes)[-20:], maxlen=20)
    resumed = FeatureState.__new__(FeatureState)
    resumed.__setstate__(old)
    for k, r in enumerate(rows[250:]):
        want = fs.update(r.close, r.high, r.low, r.volume, {})
        got = resumed.update(r.close, r.high, r.low, r.volume, {})
        assert got is not None and want is not None
        assert {n: got[n] for n in FEATURES} == {n: want[n] for n in FEATURES}
        if k + 1 < READY_AFTER:
            assert not set(EXTRA_FEATURES) & set(got), k
        else:
            assert got == want, k


@pytest.mark.parametrize(
    "bar",
    [
        (0.0, 1.0, 0.0, 1.0),
        (-5.0, 1.0, 0.0, 1.0),
        (math.nan, 1.0, 0.0, 1.0),
        (100.0, 99.0, 101.0, 1.0),
        (100.0, 101.0, 99.0, -1.0),
    ],
)
def test_an_impossible_bar_is_refused_naming_its_values(bar):
    close, high, low, volume = bar
    with pytest.raises(ValueError, match=f"close={close}"):
        FeatureState().update(close, high, low, volume, {})


def test_the_batch_twin_names_missing_columns():
    with pytest.raises(ValueError, match="missing \\['volume'\\]"):
        batch_features(pd.DataFrame({"close": [1.0], "high": [1.0], "low": [1.0]}))


# -- against the `ta` package -------------------------------------------------------------
@pytest.mark.realdata
def test_rsi_macd_bollinger_and_atr_equal_the_ta_package(real_contexts):
    name, ctxs = real_contexts
    f = bar_frame(ctxs)
    ours = _streamed(ctxs).iloc[TA_FROM_BAR:]
    c, h, lo = f["close"], f["high"], f["low"]
    macd = ta.trend.MACD(c, window_slow=26, window_fast=12, window_sign=9)
    ref = pd.DataFrame(
        {
            "rsi": ta.momentum.RSIIndicator(c, window=14).rsi(),
            "macd_diff": macd.macd_diff(),
            "pband": ta.volatility.BollingerBands(c, window=20, window_dev=2).bollinger_pband(),
            "atr": ta.volatility.AverageTrueRange(h, lo, c, window=14).average_true_range(),
        }
    ).iloc[TA_FROM_BAR:]
    close = c.iloc[TA_FROM_BAR:]
    checks = {
        "rsi": (ours["rsi_14"], 1e-9),
        "macd_diff": (ours["macd_hist"] * close, 1e-9),
        "pband": (ours["bb_pband"], 1e-8),
        "atr": (ours["atr_14"] * close, 1e-9),
    }
    for key, (mine, tol) in checks.items():
        worst = float((mine - ref[key]).abs().max())
        assert worst <= tol, f"{name} {key}: {worst:.3g} > {tol}"


@pytest.mark.realdata
def test_bollinger_differences_to_ta_come_from_its_rolling_variance(real_contexts):
    """Recomputing the band exactly (fsum, two passes) agrees with ours, not with `ta`."""
    _, ctxs = real_contexts
    closes = [c.bar.close for c in ctxs]
    ours = _streamed(ctxs)["bb_pband"].to_numpy()
    for i in range(TA_FROM_BAR, len(closes), 997):
        win = closes[i - 19 : i + 1]
        m = math.fsum(win) / 20
        sd = math.sqrt(math.fsum((x - m) ** 2 for x in win) / 20)
        exact = 0.5 if sd == 0 else (closes[i] - (m - 2 * sd)) / (4 * sd)
        assert abs(exact - ours[i]) <= 1e-12
