"""Features of SPEC 5, computed one 5m bar at a time.

The same `FeatureState` builds the training matrix (models/train.py replays bars through
it), so training and streaming agree by construction. Exponential averages follow
pandas' `ewm(adjust=False)`; Bollinger uses the population standard deviation; RSI uses
Wilder's smoothing (alpha 1/14) and ATR Wilder's seeded average, as the `ta` package does.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from operators.overlays import BarContext

BARS_PER_YEAR_5M = 365 * 24 * 12  # crypto trades every day
ANNUALISE_5M = math.sqrt(BARS_PER_YEAR_5M)

FEATURES: tuple[str, ...] = (
    "ret_1",  # log return over the last bar
    "ret_3",
    "ret_12",
    "rv_annual",  # realised vol of 5m log returns over 48 bars (4h), annualised
    "rv_1h_annual",  # the same over the last 12 bars (1h)
    "rsi_14",  # 0..100
    "macd_hist",  # MACD(12, 26, 9) histogram over close
    "bb_pband",  # position in the Bollinger(20, 2) band, 0 at the lower, 1 at the upper
    "atr_14",  # average true range over close
    "volume_z",  # z-score of volume over 20 bars
    "funding_rate",
    "s_top",
    "s_bot",
    "s_mood",
    "trend_15m",  # last closed 15m bar's return; 0 when stale or missing
    "trend_1h",
)
WINDOW_RV, WINDOW_RV_1H, WINDOW_BB, WINDOW_VOL, N_RSI, N_ATR = 48, 12, 20, 20, 14, 14
READY_AFTER = WINDOW_RV + 1  # bars before every feature is defined


def _ewm_alpha_span(span: int) -> float:
    return 2.0 / (span + 1.0)


@dataclass
class FeatureState:
    closes: deque = field(default_factory=lambda: deque(maxlen=13))
    log_rets: deque = field(default_factory=lambda: deque(maxlen=WINDOW_RV))
    bb_closes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_BB))
    volumes: deque = field(default_factory=lambda: deque(maxlen=WINDOW_VOL))
    n_bars: int = 0
    ema_fast: float | None = None
    ema_slow: float | None = None
    macd_signal: float | None = None
    rsi_gain: float | None = None
    rsi_loss: float | None = None
    atr: float | None = None
    atr_seed: list = field(default_factory=list)
    prev_close: float | None = None

    def at_close(self, ctx: BarContext) -> dict[str, float] | None:
        """Fold in the 5m bar of a joined close; its context supplies the non-price inputs."""
        b = ctx.bar
        return self.update(
            b.close,
            b.high,
            b.low,
            b.volume,
            {
                "funding_rate": ctx.funding_rate,
                "s_top": ctx.cohort.s_top,
                "s_bot": ctx.cohort.s_bot,
                "s_mood": ctx.cohort.s_mood,
                "trend_15m": ctx.overlays["15m"].trend,
                "trend_1h": ctx.overlays["1h"].trend,
            },
        )

    def update(
        self, close: float, high: float, low: float, volume: float, context: dict[str, float]
    ) -> dict[str, float] | None:
        """Fold one closed 5m bar in; the feature vector once every feature is defined.

        `context` carries funding_rate, s_top, s_bot, s_mood, trend_15m and trend_1h as
        known at this bar's close.
        """
        prev = self.prev_close
        self.n_bars += 1
        self.closes.append(close)
        self.bb_closes.append(close)
        self.volumes.append(volume)

        a_fast, a_slow, a_sig = _ewm_alpha_span(12), _ewm_alpha_span(26), _ewm_alpha_span(9)
        self.ema_fast = (
            close if self.ema_fast is None else self.ema_fast + a_fast * (close - self.ema_fast)
        )
        self.ema_slow = (
            close if self.ema_slow is None else self.ema_slow + a_slow * (close - self.ema_slow)
        )
        macd = self.ema_fast - self.ema_slow
        self.macd_signal = (
            macd
            if self.macd_signal is None
            else self.macd_signal + a_sig * (macd - self.macd_signal)
        )

        if prev is None:
            tr = high - low
        else:
            self.log_rets.append(math.log(close / prev))
            diff = close - prev
            gain, loss = max(diff, 0.0), max(-diff, 0.0)
            a = 1.0 / N_RSI
            self.rsi_gain = (
                gain if self.rsi_gain is None else self.rsi_gain + a * (gain - self.rsi_gain)
            )
            self.rsi_loss = (
                loss if self.rsi_loss is None else self.rsi_loss + a * (loss - self.rsi_loss)
            )
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
        rets_1h = rets[-WINDOW_RV_1H:]
        mid = math.fsum(self.bb_closes) / WINDOW_BB
        sd = math.sqrt(math.fsum((x - mid) ** 2 for x in self.bb_closes) / WINDOW_BB)
        vmean = math.fsum(self.volumes) / WINDOW_VOL
        vsd = math.sqrt(math.fsum((v - vmean) ** 2 for v in self.volumes) / WINDOW_VOL)
        gain, loss = self.rsi_gain or 0.0, self.rsi_loss or 0.0
        rsi = 50.0 if gain + loss == 0 else 100.0 * gain / (gain + loss)
        return {
            "ret_1": math.log(c[-1] / c[-2]),
            "ret_3": math.log(c[-1] / c[-4]),
            "ret_12": math.log(c[-1] / c[-13]),
            "rv_annual": _std(rets) * ANNUALISE_5M,
            "rv_1h_annual": _std(rets_1h) * ANNUALISE_5M,
            "rsi_14": rsi,
            "macd_hist": (macd - self.macd_signal) / close,
            "bb_pband": 0.5 if sd == 0 else (close - (mid - 2 * sd)) / (4 * sd),
            "atr_14": (self.atr or 0.0) / close,
            "volume_z": 0.0 if vsd == 0 else (volume - vmean) / vsd,
            "funding_rate": context.get("funding_rate", 0.0),
            "s_top": context.get("s_top", 0.0),
            "s_bot": context.get("s_bot", 0.0),
            "s_mood": context.get("s_mood", 0.0),
            "trend_15m": context.get("trend_15m", 0.0),
            "trend_1h": context.get("trend_1h", 0.0),
        }


def _std(xs: list[float]) -> float:
    """Sample standard deviation (ddof=1), as pandas' rolling std."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = math.fsum(xs) / n
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))
