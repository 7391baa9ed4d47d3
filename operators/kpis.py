"""The strategy's measures, defined once: the UTC day of a mark, a win, round-trip pairing,
Sharpe and calibration.

The strategy's health telemetry, the backtest report (`backtest/kpis.py`) and the
copilot's facts (`consumers/facts.py`) all call these, so a number means the same thing
wherever it is shown. Conventions:

- A 5m close at t belongs to the UTC day of t - 1 ms: the bar ending at 24:00 closes the
  day before.
- A round trip wins when its net PnL (after fees and funding) is > 0; anything else,
  a zero included, is a loss, in the stats and in the kill-switch's loss streak alike.
- Sharpe is annualised over daily returns with 365 periods (crypto trades every day),
  risk-free rate 0, sample standard deviation (quantstats' definition).
- Calibration pairs a probability of "up" with whether the close `horizon_bars` later
  was above the close at the prediction.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DAY_MS = 86_400_000
PERIODS_PER_YEAR = 365
CALIBRATION_BINS = 10
_FLAT_QTY = 1e-12  # a position this small is flat


def utc_day(ts_close_ms: Any) -> Any:
    """The UTC day number a 5m close belongs to (works on ints and numpy arrays)."""
    return (ts_close_ms - 1) // DAY_MS


def decision_bar_ms(decision_id: str) -> int:
    """The close of the bar a decision was taken at: ids are strategy:symbol:close[:purpose]."""
    return int(decision_id.split(":")[2])


def decision_of(order_id: str) -> str:
    """The decision (strategy:symbol:close) an order belongs to; an exit adds :purpose."""
    return ":".join(order_id.split(":")[:3])


def is_win(net_pnl_usd: float) -> bool:
    return net_pnl_usd > 0.0


def sharpe(daily_returns: Sequence[float] | np.ndarray) -> float | None:
    """Annualised Sharpe; None under two days or with no variation."""
    r = np.asarray(daily_returns, dtype=float)
    if len(r) < 2:
        return None
    sd = float(np.std(r, ddof=1))
    if not sd > 0.0:
        return None
    return float(np.mean(r)) / sd * math.sqrt(PERIODS_PER_YEAR)


def returns_of(equity: Sequence[float]) -> list[float]:
    """Simple returns between consecutive equity values (a non-positive start is skipped)."""
    return [b / a - 1.0 for a, b in zip(equity, equity[1:], strict=False) if a > 0]


def calibration(p_up: Sequence[float] | np.ndarray, up: Sequence[float] | np.ndarray) -> dict:
    """Brier score, climatology, hit rate and a 10-bin reliability table; n = 0 when empty."""
    p, y = np.asarray(p_up, dtype=float), np.asarray(up, dtype=float)
    n = len(p)
    if n == 0:
        return {"n": 0, "brier": None, "bins": []}
    base = float(np.mean(y))
    bins = []
    for i in range(CALIBRATION_BINS):
        lo, hi = i / CALIBRATION_BINS, (i + 1) / CALIBRATION_BINS
        sel = (p >= lo) & (p < hi)
        if i == CALIBRATION_BINS - 1:
            sel |= p == 1.0
        if sel.any():
            bins.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "n": int(sel.sum()),
                    "mean_p": float(p[sel].mean()),
                    "freq_up": float(y[sel].mean()),
                }
            )
    return {
        "n": n,
        "brier": float(np.mean((p - y) ** 2)),
        "base_rate_up": base,
        "brier_climatology": base * (1 - base),
        "hit_rate": float(np.mean((p >= 0.5) == (y == 1.0))),
        "bins": bins,
    }


@dataclass(frozen=True, slots=True)
class RoundTrip:
    symbol: str
    entry: dict[str, Any] | None  # the execution that opened the position (None: unknown)
    exit: dict[str, Any]  # the execution that closed it (it carries trade_pnl_usd)
    pnl_usd: float

    @property
    def direction(self) -> int:
        """+1 for a long round trip, -1 for a short one (the exit sells a long)."""
        return 1 if self.exit["side"] == "sell" else -1


def pair_round_trips(executions: Iterable[dict[str, Any]]) -> list[RoundTrip]:
    """Closed round trips, per symbol in time order: each closing execution (trade_pnl_usd
    set) with the execution that opened the position. The exit names its entry
    (`entry_decision_id`); records without the link are paired by walking the position."""
    by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in executions:
        by_symbol[e["symbol"]].append(e)
    trips: list[RoundTrip] = []
    for symbol in sorted(by_symbol):
        execs = sorted(by_symbol[symbol], key=lambda x: x["ts_event_ms"])
        by_id = {e["decision_id"]: e for e in execs}
        opened: dict[str, Any] | None = None
        for e in execs:
            if e.get("trade_pnl_usd") is not None:
                entry = by_id.get(e.get("entry_decision_id") or "", opened)
                trips.append(RoundTrip(symbol, entry, e, e["trade_pnl_usd"]))
                opened = e if abs(e["position_qty"]) > _FLAT_QTY else None  # a flip opens anew
            elif abs(e["position_qty"]) > _FLAT_QTY:
                opened = e
    return trips
