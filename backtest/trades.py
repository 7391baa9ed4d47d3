"""What a trader reads first: the trade list, positions, monthly returns, the per-symbol
breakdown and buy-and-hold of the same data as a benchmark.

Built from the records the report already has: the round trips of `backtest.kpis` (each
closing fill with the fill that opened it), the flow's executions and orders, its 5m
closes, and the account's equity at every 5m mark. No wall clock, no randomness: the
same run gives the same rows.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from backtest import metrics
from backtest.records import RunOutputs
from operators.kpis import DAY_MS, utc_day

# Sharpe, Sortino and hit rate mean little below these (issue 15: "from two trades")
MIN_ROUND_TRIPS = 30
MIN_DAYS = 30.0
CSV_COLUMNS = (
    "dataset",
    "preset",
    "symbol",
    "side",
    "entry_time",
    "entry_px",
    "exit_time",
    "exit_px",
    "qty",
    "arm",
    "entry_conf",
    "exit_reason",
    "pnl_usd",
    "fees_usd",
    "held_minutes",
)


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _fee_split(e: dict[str, Any]) -> tuple[float, float]:
    """(fee of the part that closed a position, fee of the part that opened one)."""
    signed = e["qty"] if e["side"] == "buy" else -e["qty"]
    before = e["position_qty"] - signed
    closing = min(abs(signed), abs(before)) if before and (before > 0) != (signed > 0) else 0.0
    share = closing / e["qty"] if e["qty"] else 0.0
    return e["fee_usd"] * share, e["fee_usd"] * (1.0 - share)


def trade_list(run: RunOutputs, trips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per closed round trip: entry/exit time and price, side, size, arm,
    confidence at entry, exit reason, PnL as the flow logged it, and the fees paid."""
    fills = {e["decision_id"]: e for e in run.executions}
    rows = []
    for t in trips:
        exit_fill = fills[t["exit_decision_id"]]
        entry_fill = fills.get(t["entry_decision_id"]) if t["entry_decision_id"] else None
        fees = _fee_split(exit_fill)[0] + (_fee_split(entry_fill)[1] if entry_fill else 0.0)
        rows.append(
            {
                "symbol": t["symbol"],
                "side": "long" if t["direction"] > 0 else "short",
                "entry_time": iso(t["entry_ms"]),
                "entry_px": entry_fill["fill_px"] if entry_fill else None,
                "exit_time": iso(t["exit_ms"]),
                "exit_px": exit_fill["fill_px"],
                "qty": abs(entry_fill["position_qty"]) if entry_fill else None,
                "arm": t.get("arm"),
                "entry_conf": t.get("entry_conf"),
                "exit_reason": t["exit_purpose"],
                "pnl_usd": t["pnl_usd"],
                "fees_usd": fees,
                "held_minutes": None
                if t["entry_ms"] is None
                else (t["exit_ms"] - t["entry_ms"]) // 60_000,
                "entry_ms": t["entry_ms"],
                "exit_ms": t["exit_ms"],
            }
        )
    return rows


def closes(run: RunOutputs, t0_ms: int) -> dict[str, pd.Series]:
    """Each symbol's 5m close at every decision mark from `t0_ms` on."""
    assert run.signals is not None
    s = run.signals[run.signals["ts_event_ms"] >= t0_ms]
    return {
        sym: g.set_index("ts_event_ms")["close"].astype(float).sort_index()
        for sym, g in s.groupby("symbol", sort=True)
    }


def positions(run: RunOutputs, marks: dict[str, pd.Series]) -> dict[str, pd.Series]:
    """Each symbol's position (base units) at every 5m mark, from its fills. A fill stamped
    t is at the open of the bar from t, so the mark at t (its close) is still before it."""
    by_symbol: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for e in sorted(run.executions, key=lambda x: x["ts_event_ms"]):
        by_symbol[e["symbol"]].append((e["ts_event_ms"], e["position_qty"]))
    out = {}
    for sym, px in marks.items():
        steps = by_symbol.get(sym, [])
        times = np.array([t for t, _ in steps], dtype="int64")
        qty = np.array([q for _, q in steps], dtype=float)
        if not steps:  # never traded
            out[sym] = pd.Series(0.0, index=px.index)
            continue
        idx = np.searchsorted(times, px.index.to_numpy(), side="left") - 1
        out[sym] = pd.Series(np.where(idx >= 0, qty[np.maximum(idx, 0)], 0.0), index=px.index)
    return out


def buy_and_hold(
    marks: dict[str, pd.Series], initial_equity: float, equity_index: pd.Index
) -> pd.Series:
    """Every symbol's book, `initial_equity` each, put into the symbol at the first close
    of the window and held: the account's equity at the same marks as the strategy's."""
    total = pd.Series(0.0, index=equity_index)
    for px in marks.values():
        if px.empty:
            continue
        held = initial_equity * px / float(px.iloc[0])
        total += held.reindex(equity_index).ffill().bfill().to_numpy()
    return total


def curve_kpis(equity: pd.Series) -> dict[str, Any]:
    start, end = float(equity.iloc[0]), float(equity.iloc[-1])
    return {
        "equity_start_usd": start,
        "equity_end_usd": end,
        "net_pnl_usd": end - start,
        "total_return": end / start - 1.0,
        "max_drawdown_5m": float(metrics.drawdowns(equity.to_numpy()).max()),
    }


def monthly(strategy: pd.Series, benchmark: pd.Series) -> list[dict[str, Any]]:
    """Per UTC month: the return from the previous month's last mark (the window's first
    mark for the first month) to this month's last mark, for the strategy and buy-and-hold.
    A mark belongs to the month of its UTC day (the bar ending at 24:00 closes the month),
    as in the daily table; the first mark is the start, not a month of its own."""
    days = utc_day(strategy.index.to_numpy()[1:])
    months = pd.to_datetime(days * DAY_MS, unit="ms", utc=True).strftime("%Y-%m")
    rows = []
    prev_s, prev_b = float(strategy.iloc[0]), float(benchmark.iloc[0])
    for m in sorted(set(months)):
        last = np.flatnonzero(months == m)[-1] + 1
        s, b = float(strategy.iloc[last]), float(benchmark.iloc[last])
        rows.append(
            {
                "month": m,
                "return": s / prev_s - 1.0,
                "pnl_usd": s - prev_s,
                "benchmark_return": b / prev_b - 1.0,
            }
        )
        prev_s, prev_b = s, b
    return rows


def per_symbol(
    rows: list[dict[str, Any]], marks: dict[str, pd.Series], initial_equity: float
) -> list[dict[str, Any]]:
    out = []
    for sym, px in marks.items():
        mine = [r for r in rows if r["symbol"] == sym]
        wins = sum(1 for r in mine if r["pnl_usd"] > 0)
        pnl = float(sum(r["pnl_usd"] for r in mine))
        out.append(
            {
                "symbol": sym,
                "round_trips": len(mine),
                "wins": wins,
                "hit_rate": wins / len(mine) if mine else None,
                "pnl_usd": pnl,
                "fees_usd": float(sum(r["fees_usd"] for r in mine)),
                "return_on_book": pnl / initial_equity,
                "longs": sum(1 for r in mine if r["side"] == "long"),
                "shorts": sum(1 for r in mine if r["side"] == "short"),
                "buy_and_hold_return": float(px.iloc[-1] / px.iloc[0] - 1.0) if len(px) else None,
            }
        )
    return out


def sample_warning(round_trips: int, eval_days: float) -> str | None:
    """Why Sharpe, Sortino and hit rate say little here, or None."""
    why = []
    if round_trips < MIN_ROUND_TRIPS:
        why.append(f"{round_trips} round trips (< {MIN_ROUND_TRIPS})")
    if eval_days < MIN_DAYS:
        why.append(f"{eval_days:.1f} days (< {MIN_DAYS:g})")
    return "small sample: " + " and ".join(why) if why else None


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS})
    return buf.getvalue()
