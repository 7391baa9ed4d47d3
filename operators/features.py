"""Features of SPEC 5, computed one 5m bar at a time, and their vectorised batch twin.

`FeatureState` is what the dataflow runs: it folds in one closed 5m bar and returns the
feature vector (None until every window is full). `batch_features` computes the same
numbers for a whole series at once with pandas/numpy; tests prove the two equal to 1e-9
on the real data, and training checks it again on every file it reads.

Conventions (the `ta` package's, checked against it in tests):
- exponential averages are pandas' `ewm(adjust=False)`, started at the first value;
- RSI is Wilder's (alpha 1/14); the first bar counts as a zero move, as in `ta`;
- MACD(12, 26, 9) on the close; the histogram is divided by the close (scale-free);
- Bollinger(20, 2) uses the population standard deviation; `bb_pband` is 0 at the lower
  band, 1 at the upper;
- ATR(14) is seeded with the mean of the first 14 true ranges (the first is high - low),
  then Wilder-smoothed; divided by the close;
- realised volatility is the sample standard deviation (ddof=1) of 5m log returns,
  annualised with 365 days of 288 bars (crypto trades every day);
- realised skew is the population skewness m3 / m2^1.5 of the last 48 5m log returns.

Two feature sets: FEATURES (the shipped artifact's, "v1") and FEATURES_V2 (v1 plus the
regime, range, volume-dynamics, skew and funding-change features of EXTRA_FEATURES, for
the research candidates of models/evaluate.py). The stream computes both; every window
fits in READY_AFTER, so both sets start on the same bar.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from operators.overlays import BarContext

BARS_PER_YEAR_5M = 365 * 24 * 12
ANNUALISE_5M = math.sqrt(BARS_PER_YEAR_5M)

MOMENTUM_BARS = (1, 3, 12, 48)  # 5m, 15m, 1h, 4h
MOMENTUM_NAMES = tuple((f"ret_{k}", k) for k in MOMENTUM_BARS)
WINDOW_RV, WINDOW_RV_1H, WINDOW_BB, WINDOW_VOL, N_RSI, N_ATR = 48, 12, 20, 20, 14, 14
WINDOW_8H = 96  # the v2 regime window: 8h of 5m bars (one funding interval)
WINDOW_VOL_SHORT = 12  # volume dynamics: the last hour against the last 8h
WINDOW_SKEW = 48
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_K = 2.0
# Every feature is defined after 49 bars; the EMAs (span 26) started at the first close
# carry (25/27)^100 < 5e-4 of their start-up value by bar 100, so features start there.
READY_AFTER = 100
# Bars a feature vector looks back over (rv_annual: 48 returns need 49 closes); the
# MACD EMAs reach further back with decaying weight.
LOOKBACK_BARS = WINDOW_RV + 1

CONTEXT_FEATURES: tuple[str, ...] = (
    "funding_rate",  # latest funding rate at or before the close, as a fraction
    "s_top",  # cohort signals in [-1, 1]; 0 when stale or missing
    "s_bot",
    "s_mood",
    "trend_15m",  # last closed 15m bar's return; 0 when stale or missing
    "trend_1h",
)
FEATURES: tuple[str, ...] = (
    "ret_1",  # log return over the last bar
    "ret_3",
    "ret_12",
    "ret_48",
    "rv_annual",  # realised vol of 5m log returns over 48 bars (4h), annualised
    "rv_1h_annual",  # the same over the last 12 bars (1h)
    "rsi_14",  # 0..100
    "macd_hist",  # MACD(12, 26, 9) histogram / close
    "bb_pband",  # position in the Bollinger(20, 2) band
    "atr_14",  # ATR(14) / close
    "volume_z",  # z-score of this bar's volume against the last 20 (population sd)
    "close_loc",  # where the close sits in the bar's range: 0 at the low, 1 at the high
    *CONTEXT_FEATURES,
)
EXTRA_FEATURES: tuple[str, ...] = (
    "ret_96",  # log return over 96 bars (8h)
    "rv_8h_annual",  # realised vol over 96 bars, annualised (volatility regime)
    "rv_ratio",  # rv_1h_annual / rv_annual: is volatility rising (>1) or falling (<1)
    "range_pos_96",  # close in the 96-bar high-low range: 0 at the low, 1 at the high
    "volume_ratio",  # mean volume of the last 12 bars / of the last 96
    "skew_48",  # realised skew of the last 48 5m log returns
    "funding_change_8h",  # funding rate now minus 96 bars ago (fraction)
)
FEATURES_V2: tuple[str, ...] = (*FEATURES, *EXTRA_FEATURES)
# The feature lists an artifact may name (the runtime refuses any other).
FEATURE_SETS: dict[str, tuple[str, ...]] = {"v1": FEATURES, "v2": FEATURES_V2}
BAR_COLUMNS: tuple[str, ...] = ("close", "high", "low", "volume")


def _ewm_alpha_span(span: int) -> float:
    return 2.0 / (span + 1.0)


A_FAST, A_SLOW, A_SIG = (_ewm_alpha_span(n) for n in (MACD_FAST, MACD_SLOW, MACD_SIGNAL))
A_RSI = 1.0 / N_RSI


def context_inputs(ctx: BarContext) -> dict[str, float]:
    """The non-price features of a joined close, as known at the close."""
    return {
        "funding_rate": ctx.funding_rate,
        "s_top": ctx.cohort.s_top,
        "s_bot": ctx.cohort.s_bot,
        "s_mood": ctx.cohort.s_mood,
        "trend_15m": ctx.overlays["15m"].trend,
        "trend_1h": ctx.overlays["1h"].trend,
    }


@dataclass
class FeatureState:
    closes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H + 1))
    log_rets: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H))
    bb_closes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_BB))
    volumes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H))
    highs: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H))
    lows: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H))
    fundings: deque = field(default_factory=lambda: deque(maxlen=WINDOW_8H + 1))
    n_bars: int = 0
    v2_bars: int = 0  # bars since the v2 windows started (= n_bars unless resumed from v1)
    ema_fast: float | None = None
    ema_slow: float | None = None
    macd_signal: float | None = None
    rsi_gain: float = 0.0
    rsi_loss: float = 0.0
    atr: float | None = None
    atr_seed: list = field(default_factory=list)
    prev_close: float | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Resume a snapshot, also one written before the v2 features existed: its short
        windows are widened, and the v2 features return once their windows have refilled."""
        fresh = FeatureState()
        if "v2_bars" not in state:
            state = dict(state)
            for name in ("closes", "log_rets", "volumes"):
                state[name] = deque(state[name], maxlen=getattr(fresh, name).maxlen)
        self.__dict__.update({**fresh.__dict__, **state})

    def at_close(self, ctx: BarContext) -> dict[str, float] | None:
        """Fold in the 5m bar of a joined close; its context supplies the non-price inputs."""
        b = ctx.bar
        return self.update(b.close, b.high, b.low, b.volume, context_inputs(ctx))

    def update(
        self, close: float, high: float, low: float, volume: float, context: dict[str, float]
    ) -> dict[str, float] | None:
        """Fold one closed 5m bar in; the feature vector once READY_AFTER bars are in.

        `context` carries the CONTEXT_FEATURES as known at this bar's close (missing = 0).
        """
        if not (close > 0 and high >= low and volume >= 0):
            raise ValueError(
                f"bar with close={close}, high={high}, low={low}, volume={volume}: "
                "need close > 0, high >= low, volume >= 0"
            )
        prev = self.prev_close
        self.n_bars += 1
        self.v2_bars += 1
        self.closes.append(close)
        self.bb_closes.append(close)
        self.volumes.append(volume)
        self.highs.append(high)
        self.lows.append(low)
        self.fundings.append(float(context.get("funding_rate", 0.0)))

        if self.ema_fast is None:
            self.ema_fast = self.ema_slow = close
        else:
            self.ema_fast += A_FAST * (close - self.ema_fast)
            self.ema_slow += A_SLOW * (close - self.ema_slow)
        macd = self.ema_fast - self.ema_slow
        if self.macd_signal is None:
            self.macd_signal = macd
        else:
            self.macd_signal += A_SIG * (macd - self.macd_signal)

        if prev is None:
            tr = high - low
        else:
            self.log_rets.append(math.log(close / prev))
            diff = close - prev
            self.rsi_gain += A_RSI * (max(diff, 0.0) - self.rsi_gain)
            self.rsi_loss += A_RSI * (max(-diff, 0.0) - self.rsi_loss)
            tr = max(high - low, abs(high - prev), abs(low - prev))
        if self.atr is None:
            self.atr_seed.append(tr)
            if len(self.atr_seed) == N_ATR:
                self.atr = math.fsum(self.atr_seed) / N_ATR
                self.atr_seed = []
        else:
            self.atr = (self.atr * (N_ATR - 1) + tr) / N_ATR
        self.prev_close = close

        if self.n_bars < READY_AFTER:
            return None

        c = self.closes
        rets_8h = list(self.log_rets)
        rets = rets_8h[-WINDOW_RV:]
        vols = list(self.volumes)
        mid, sd = _mean_sd(self.bb_closes, ddof=0)
        vmean, vsd = _mean_sd(vols[-WINDOW_VOL:], ddof=0)
        gain, loss = self.rsi_gain, self.rsi_loss
        out = {name: math.log(c[-1] / c[-1 - k]) for name, k in MOMENTUM_NAMES}
        dev = _deviations(rets)  # shared by rv_annual and skew_48
        ss = math.fsum([d**2 for d in dev])
        rv = math.sqrt(ss / (len(rets) - 1)) * ANNUALISE_5M
        rv_1h = _mean_sd(rets[-WINDOW_RV_1H:], ddof=1)[1] * ANNUALISE_5M
        out.update(
            {
                "rv_annual": rv,
                "rv_1h_annual": rv_1h,
                "rsi_14": 50.0 if gain + loss == 0 else 100.0 * gain / (gain + loss),
                "macd_hist": (macd - self.macd_signal) / close,
                "bb_pband": 0.5 if sd == 0 else (close - (mid - BB_K * sd)) / (2 * BB_K * sd),
                "atr_14": self.atr / close,  # type: ignore[operator]  # seeded by bar 14
                "volume_z": 0.0 if vsd == 0 else (volume - vmean) / vsd,
                "close_loc": 0.5 if high == low else (close - low) / (high - low),
            }
        )
        for name in CONTEXT_FEATURES:
            out[name] = float(context.get(name, 0.0))
        if self.v2_bars < READY_AFTER:  # resumed from a v1 snapshot: windows still refilling
            return out
        hi, lo = max(self.highs), min(self.lows)
        v_long = math.fsum(vols) / len(vols)
        m2 = ss / len(rets)
        m3 = math.fsum([d**3 for d in dev]) / len(rets)
        out.update(
            {
                "ret_96": math.log(c[-1] / c[-1 - WINDOW_8H]),
                "rv_8h_annual": _mean_sd(rets_8h, ddof=1)[1] * ANNUALISE_5M,
                "rv_ratio": 1.0 if rv == 0 else rv_1h / rv,
                "range_pos_96": 0.5 if hi == lo else (close - lo) / (hi - lo),
                "volume_ratio": 1.0
                if v_long == 0
                else math.fsum(vols[-WINDOW_VOL_SHORT:]) / WINDOW_VOL_SHORT / v_long,
                "skew_48": 0.0 if m2 == 0 else m3 / m2**1.5,  # population skewness
                "funding_change_8h": self.fundings[-1] - self.fundings[0],
            }
        )
        return out


def _deviations(xs: list[float]) -> list[float]:
    """Each value minus the window's mean (an exact sum: no cancellation at 1e5 px)."""
    m = math.fsum(xs) / len(xs)
    return [x - m for x in xs]


def _mean_sd(xs: Any, ddof: int) -> tuple[float, float]:
    """Mean and standard deviation, two-pass with exact sums (no cancellation at 1e5 px)."""
    n = len(xs)
    m = math.fsum(xs) / n
    return m, math.sqrt(math.fsum([(x - m) ** 2 for x in xs]) / (n - ddof))


def batch_features(bars: pd.DataFrame) -> pd.DataFrame:
    """The vectorised twin of `FeatureState`: one row of FEATURES_V2 per bar, NaN in warm-up.

    `bars` holds one row per consecutive 5m bar (gap bars included, as the stream sees
    them) with columns close, high, low, volume and the CONTEXT_FEATURES (missing = 0).
    Row i equals `FeatureState.update` on bar i after bars 0..i-1 (tested to 1e-9).
    """
    import numpy as np
    import pandas as pd
    from numpy.lib.stride_tricks import sliding_window_view

    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"batch_features needs columns {BAR_COLUMNS}; missing {missing}")
    n = len(bars)
    close = bars["close"].to_numpy(dtype=float)
    high = bars["high"].to_numpy(dtype=float)
    low = bars["low"].to_numpy(dtype=float)
    volume = bars["volume"].to_numpy(dtype=float)
    out = pd.DataFrame(index=bars.index, columns=list(FEATURES_V2), dtype=float)

    def rolling(x: np.ndarray, w: int, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        mean, sd = np.full(len(x), np.nan), np.full(len(x), np.nan)
        if len(x) >= w:
            win = sliding_window_view(x, w)
            m = win.mean(axis=1)
            mean[w - 1 :] = m
            sd[w - 1 :] = np.sqrt(((win - m[:, None]) ** 2).sum(axis=1) / (w - ddof))
        return mean, sd

    for k in MOMENTUM_BARS:
        r = np.full(n, np.nan)
        r[k:] = np.log(close[k:] / close[:-k])
        out[f"ret_{k}"] = r
    log_ret = np.full(n, np.nan)
    log_ret[1:] = np.log(close[1:] / close[:-1])
    for name, w in (("rv_annual", WINDOW_RV), ("rv_1h_annual", WINDOW_RV_1H)):
        sd = np.full(n, np.nan)
        sd[1:] = rolling(log_ret[1:], w, ddof=1)[1]
        out[name] = sd * ANNUALISE_5M

    s_close = pd.Series(close)
    diff = s_close.diff().fillna(0.0)  # the first bar is a zero move
    gain = diff.clip(lower=0.0).ewm(alpha=A_RSI, adjust=False).mean().to_numpy()
    loss = (-diff).clip(lower=0.0).ewm(alpha=A_RSI, adjust=False).mean().to_numpy()
    total = gain + loss
    with np.errstate(invalid="ignore", divide="ignore"):
        out["rsi_14"] = np.where(total == 0, 50.0, 100.0 * gain / total)

    macd = (
        s_close.ewm(alpha=A_FAST, adjust=False).mean()
        - s_close.ewm(alpha=A_SLOW, adjust=False).mean()
    )
    signal = macd.ewm(alpha=A_SIG, adjust=False).mean()
    out["macd_hist"] = ((macd - signal) / s_close).to_numpy()

    mid, sd = rolling(close, WINDOW_BB, ddof=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["bb_pband"] = np.where(sd == 0, 0.5, (close - (mid - BB_K * sd)) / (2 * BB_K * sd))

    prev = np.concatenate([[np.nan], close[:-1]])
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))
    atr = np.full(n, np.nan)
    if n >= N_ATR:  # Wilder's smoothing is an EWM (alpha 1/14) started at the seed
        seeded = np.concatenate([[math.fsum(tr[:N_ATR]) / N_ATR], tr[N_ATR:]])
        atr[N_ATR - 1 :] = pd.Series(seeded).ewm(alpha=1.0 / N_ATR, adjust=False).mean()
    out["atr_14"] = atr / close

    vmean, vsd = rolling(volume, WINDOW_VOL, ddof=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["volume_z"] = np.where(vsd == 0, 0.0, (volume - vmean) / vsd)
        out["close_loc"] = np.where(high == low, 0.5, (close - low) / (high - low))
    for name in CONTEXT_FEATURES:
        out[name] = bars[name].to_numpy(dtype=float) if name in bars.columns else 0.0

    r = np.full(n, np.nan)
    r[WINDOW_8H:] = np.log(close[WINDOW_8H:] / close[:-WINDOW_8H])
    out["ret_96"] = r
    sd_8h = np.full(n, np.nan)
    sd_8h[1:] = rolling(log_ret[1:], WINDOW_8H, ddof=1)[1]
    out["rv_8h_annual"] = sd_8h * ANNUALISE_5M
    rv, rv_1h = out["rv_annual"].to_numpy(), out["rv_1h_annual"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["rv_ratio"] = np.where(rv == 0, 1.0, rv_1h / rv)
    hi, lo = np.full(n, np.nan), np.full(n, np.nan)
    if n >= WINDOW_8H:
        hi[WINDOW_8H - 1 :] = sliding_window_view(high, WINDOW_8H).max(axis=1)
        lo[WINDOW_8H - 1 :] = sliding_window_view(low, WINDOW_8H).min(axis=1)
    v_short = rolling(volume, WINDOW_VOL_SHORT, ddof=0)[0]
    v_long = rolling(volume, WINDOW_8H, ddof=0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["range_pos_96"] = np.where(hi == lo, 0.5, (close - lo) / (hi - lo))
        out["volume_ratio"] = np.where(v_long == 0, 1.0, v_short / v_long)
    skew = np.full(n, np.nan)
    if n > WINDOW_SKEW:
        win = sliding_window_view(log_ret[1:], WINDOW_SKEW)
        d = win - win.mean(axis=1)[:, None]
        m2, m3 = (d**2).mean(axis=1), (d**3).mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            skew[WINDOW_SKEW:] = np.where(m2 == 0, 0.0, m3 / m2**1.5)
    out["skew_48"] = skew
    funding = out["funding_rate"].to_numpy()
    change = np.full(n, np.nan)
    change[WINDOW_8H:] = funding[WINDOW_8H:] - funding[:-WINDOW_8H]
    out["funding_change_8h"] = change
    out.iloc[: READY_AFTER - 1] = np.nan
    return out
