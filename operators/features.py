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
  annualised with 365 days of 288 bars (crypto trades every day).
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
WINDOW_RV, WINDOW_RV_1H, WINDOW_BB, WINDOW_VOL, N_RSI, N_ATR = 48, 12, 20, 20, 14, 14
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
    closes: deque = field(default_factory=lambda: deque(maxlen=max(MOMENTUM_BARS) + 1))
    log_rets: deque = field(default_factory=lambda: deque(maxlen=WINDOW_RV))
    bb_closes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_BB))
    volumes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_VOL))
    n_bars: int = 0
    ema_fast: float | None = None
    ema_slow: float | None = None
    macd_signal: float | None = None
    rsi_gain: float = 0.0
    rsi_loss: float = 0.0
    atr: float | None = None
    atr_seed: list = field(default_factory=list)
    prev_close: float | None = None

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
        self.closes.append(close)
        self.bb_closes.append(close)
        self.volumes.append(volume)

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
        rets = list(self.log_rets)
        mid, sd = _mean_sd(self.bb_closes, ddof=0)
        vmean, vsd = _mean_sd(self.volumes, ddof=0)
        gain, loss = self.rsi_gain, self.rsi_loss
        out = {f"ret_{k}": math.log(c[-1] / c[-1 - k]) for k in MOMENTUM_BARS}
        out.update(
            {
                "rv_annual": _mean_sd(rets, ddof=1)[1] * ANNUALISE_5M,
                "rv_1h_annual": _mean_sd(rets[-WINDOW_RV_1H:], ddof=1)[1] * ANNUALISE_5M,
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
        return out


def _mean_sd(xs: Any, ddof: int) -> tuple[float, float]:
    """Mean and standard deviation, two-pass with exact sums (no cancellation at 1e5 px)."""
    n = len(xs)
    m = math.fsum(xs) / n
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - ddof))


def batch_features(bars: pd.DataFrame) -> pd.DataFrame:
    """The vectorised twin of `FeatureState`: one row of FEATURES per bar, NaN in warm-up.

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
    out = pd.DataFrame(index=bars.index, columns=list(FEATURES), dtype=float)

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
    out.iloc[: READY_AFTER - 1] = np.nan
    return out
