"""Return statistics over daily returns, with the conventions stated once.

Crypto trades every day, so annualisation is over 365 periods; the risk-free rate is 0.
These are the definitions quantstats 0.0.86 uses with `periods=365, rf=0` (checked in a
test to 1e-9):

- Sharpe = mean(r) / std(r, ddof=1) * sqrt(365)
- Sortino = mean(r) / sqrt(sum(min(r, 0)^2) / n) * sqrt(365), n = every day, not only
  the losing ones (the downside deviation of Sortino & Price, target 0)
- max drawdown = max over days of 1 - E_d / max(E_0..E_d), with E compounded from the
  returns, E_0 = 1 before the first day. quantstats returns it negative; here it is the
  positive fraction lost.
"""

from __future__ import annotations

import math

import numpy as np

from operators.kpis import PERIODS_PER_YEAR, sharpe

__all__ = ["PERIODS_PER_YEAR", "drawdowns", "max_drawdown", "sharpe", "sortino"]

RISK_FREE = 0.0


def sortino(daily_returns: np.ndarray) -> float | None:
    """Annualised Sortino; None with no losing day."""
    r = np.asarray(daily_returns, dtype=float)
    if len(r) == 0:
        return None
    downside = math.sqrt(float(np.sum(np.minimum(r, 0.0) ** 2)) / len(r))
    if not downside > 0.0:
        return None
    return float(np.mean(r)) / downside * math.sqrt(PERIODS_PER_YEAR)


def drawdowns(equity: np.ndarray) -> np.ndarray:
    """1 - E_t / running peak of E, for an equity path whose first value is the start."""
    e = np.asarray(equity, dtype=float)
    if len(e) == 0:
        return e
    return 1.0 - e / np.maximum.accumulate(e)


def max_drawdown(daily_returns: np.ndarray) -> float:
    """Largest peak-to-trough loss of the compounded daily returns, starting from 1."""
    r = np.asarray(daily_returns, dtype=float)
    path = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    return float(np.max(drawdowns(path)))


def annualised_volatility(daily_returns: np.ndarray) -> float | None:
    r = np.asarray(daily_returns, dtype=float)
    if len(r) < 2:
        return None
    return float(np.std(r, ddof=1)) * math.sqrt(PERIODS_PER_YEAR)


def percentiles(values: list[float] | np.ndarray, qs: tuple[int, ...] = (50, 90, 99)) -> dict:
    """n, the given percentiles (numpy's linear interpolation) and max; None if empty."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"n": 0, **{f"p{q}": None for q in qs}, "max": None}
    out: dict = {"n": int(len(v))}
    for q in qs:
        out[f"p{q}"] = float(np.percentile(v, q))
    out["max"] = float(np.max(v))
    return out
