"""SPEC §8 KPIs of one run, computed from the flow's own output records only.

Nothing here re-decides or re-fills anything: equity comes from `health` (marked at every
5m close), trades from `executions` (a closing fill carries `trade_pnl_usd`), costs from
`costs`, confidence and decisions from `signals`, vetoes from `rejections`. Conventions:

- Account equity = the sum of every symbol's book (each starts at `risk.initial_equity`).
- Evaluation window: from the close of the first bar the strategy could decide on (the
  end of the warm-up) to the last 5m close. Its equity at the start is E_start.
- A day is a UTC calendar day; its equity is the mark at the close of its last 5m bar
  (the bar ending at 24:00). The first day's return is against E_start; a day without
  marks keeps the previous equity.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandas as pd

from backtest import metrics
from backtest.records import RunOutputs
from operators import kpis as shared
from operators.kpis import DAY_MS, pair_round_trips

HOUR_MS = 3_600_000
BAR_MS = 300_000
DECILES = 10
ENTRY_PURPOSES = ("entry", "flip")


class NothingDecided(ValueError):
    """The run ended before the warm-up did: there is nothing to evaluate."""


def day_of_mark(ts_ms: int | np.ndarray) -> Any:
    """The UTC day a 5m close belongs to: a mark at 24:00 closes the day before."""
    return shared.utc_day(ts_ms)


def iso_day(day: int) -> str:
    return pd.Timestamp(int(day) * DAY_MS, unit="ms", tz="UTC").strftime("%Y-%m-%d")


def iso_time(ts_ms: int) -> str:
    return pd.Timestamp(int(ts_ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# -- equity ------------------------------------------------------------------------------
def account_series(health: pd.DataFrame, column: str, fill: float) -> pd.Series:
    """Sum over symbols of `column` at every mark; a symbol not yet marked counts as `fill`."""
    h = health.drop_duplicates(["ts_event_ms", "symbol"], keep="last")
    wide = h.pivot(index="ts_event_ms", columns="symbol", values=column).sort_index()
    return wide.ffill().fillna(fill).sum(axis=1)


def evaluation_start(signals: pd.DataFrame) -> int:
    decided = signals.loc[signals["reason"] != "warmup", "ts_event_ms"]
    if decided.empty:
        raise NothingDecided(
            f"the data ended before the warm-up: {len(signals)} 5m closes, none decided on; "
            "use more data or lower warmup_bars with --overrides"
        )
    return int(decided.min())


class Book:
    """The account in the evaluation window: equity, fees and funding at every 5m mark."""

    def __init__(self, run: RunOutputs, initial_equity: float, t0_ms: int) -> None:
        n_symbols = run.health["symbol"].nunique()
        equity = account_series(run.health, "equity_usd", initial_equity)
        fees = account_series(run.health, "fees_usd", 0.0)
        funding = account_series(run.health, "funding_usd", 0.0)
        if t0_ms not in equity.index:
            raise ValueError(f"no 5m mark at the evaluation start {t0_ms}")
        keep = equity.index >= t0_ms
        self.t0_ms = t0_ms
        self.initial_equity = initial_equity * n_symbols
        self.equity = equity[keep]
        self.fees = fees[keep]
        self.funding = funding[keep]
        self.t_end_ms = int(self.equity.index[-1])
        self.e_start = float(self.equity.iloc[0])
        self.e_end = float(self.equity.iloc[-1])
        self.eval_days = (self.t_end_ms - t0_ms) / DAY_MS

    def daily_close(self, series: pd.Series) -> pd.Series:
        """`series` at each UTC day's last mark after the start, days without marks carried."""
        after = series[series.index > self.t0_ms]
        if after.empty:
            return pd.Series(dtype=float)
        days = day_of_mark(after.index.to_numpy())
        closes = after.groupby(days).last()
        return closes.reindex(range(int(days.min()), int(days.max()) + 1)).ffill()

    def drawdown_5m(self) -> pd.Series:
        return pd.Series(metrics.drawdowns(self.equity.to_numpy()), index=self.equity.index)


# -- trades -----------------------------------------------------------------------------
def round_trips(run: RunOutputs) -> list[dict[str, Any]]:
    """Closed round trips (operators.kpis pairs each closing fill with its entry's fill)."""
    arm_of = {o["decision_id"]: o.get("arm") for o in run.orders}
    conf_of: dict[str, float | None] = {}
    if run.signals is not None:
        conf_of = dict(zip(run.signals["decision_id"], run.signals["conf"], strict=True))
    trips = []
    for t in pair_round_trips(run.executions):
        entry, e = t.entry, t.exit
        trips.append(
            {
                "symbol": t.symbol,
                "entry_decision_id": None if entry is None else entry["decision_id"],
                "exit_decision_id": e["decision_id"],
                "entry_ms": None if entry is None else entry["ts_event_ms"],
                "exit_ms": e["ts_event_ms"],
                "direction": t.direction,
                "arm": None if entry is None else arm_of.get(entry["decision_id"]),
                "entry_conf": None if entry is None else _f(conf_of.get(entry["decision_id"])),
                "pnl_usd": t.pnl_usd,
                "reward_bps": e.get("reward_bps"),
                "exit_purpose": e["purpose"],
            }
        )
    trips.sort(key=lambda t: (t["exit_ms"], t["symbol"]))
    return trips


def trade_stats(trips: list[dict[str, Any]]) -> dict[str, Any]:
    pnl = np.array([t["pnl_usd"] for t in trips], dtype=float)
    bps = np.array([t["reward_bps"] for t in trips if t["reward_bps"] is not None], dtype=float)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    win_bps, loss_bps = bps[bps > 0], bps[bps <= 0]
    gross_win, gross_loss = float(wins.sum()), float(-losses.sum())
    holds = [(t["exit_ms"] - t["entry_ms"]) / BAR_MS for t in trips if t["entry_ms"] is not None]
    return {
        "round_trips": len(trips),
        "wins": len(wins),
        "losses": len(losses),
        "hit_rate": _f(len(wins) / len(trips)) if trips else None,
        "avg_win_usd": _f(wins.mean()) if len(wins) else None,
        "avg_loss_usd": _f(losses.mean()) if len(losses) else None,
        "avg_win_bps": _f(win_bps.mean()) if len(win_bps) else None,
        "avg_loss_bps": _f(loss_bps.mean()) if len(loss_bps) else None,
        "payoff_ratio": _f(wins.mean() / -losses.mean())
        if len(wins) and len(losses) and losses.mean() < 0
        else None,
        "profit_factor": _f(gross_win / gross_loss) if gross_loss > 0 else None,
        "expectancy_usd": _f(pnl.mean()) if len(pnl) else None,
        "avg_hold_bars": _f(np.mean(holds)) if holds else None,
    }


def confidence_deciles(trips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round trips in ten equal-count groups by the model confidence at their entry."""
    rows = sorted(
        (t for t in trips if t["entry_conf"] is not None),
        key=lambda t: (t["entry_conf"], t["exit_ms"], t["symbol"]),
    )
    n = len(rows)
    k = min(DECILES, n)
    out = []
    for g in range(k):
        grp = [t for i, t in enumerate(rows) if i * k // n == g]
        pnl = [t["pnl_usd"] for t in grp]
        wins = sum(1 for x in pnl if x > 0)
        confs = [t["entry_conf"] for t in grp]
        out.append(
            {
                "decile": g + 1,
                "n": len(grp),
                "conf_min": confs[0],
                "conf_max": confs[-1],
                "conf_mean": _f(np.mean(confs)),
                "wins": wins,
                "hit_rate": _f(wins / len(grp)),
                "avg_pnl_usd": _f(np.mean(pnl)),
            }
        )
    return out


# -- model calibration -------------------------------------------------------------------
def calibration_pairs(signals: pd.DataFrame, horizon_bars: int) -> pd.DataFrame:
    """(ts, p_up, up) for every decided 5m close: up = close h bars later > close now."""
    parts = []
    for _, g in signals.groupby("symbol", sort=True):
        g = g.sort_values("ts_event_ms", kind="stable")
        decided = ((g["reason"] != "warmup") & g["p_up"].notna()).to_numpy()
        idx = np.flatnonzero(decided)
        idx = idx[idx + horizon_bars < len(g)]
        close = g["close"].to_numpy(dtype=float)
        parts.append(
            pd.DataFrame(
                {
                    "symbol": g["symbol"].to_numpy()[idx],
                    "ts_event_ms": g["ts_event_ms"].to_numpy()[idx],
                    "p_up": g["p_up"].to_numpy(dtype=float)[idx],
                    "up": (close[idx + horizon_bars] > close[idx]).astype(float),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["symbol", "ts_event_ms", "p_up", "up"])
    return pd.concat(parts, ignore_index=True)


def calibration(pairs: pd.DataFrame, horizon_bars: int) -> dict[str, Any]:
    c = shared.calibration(pairs["p_up"].to_numpy(dtype=float), pairs["up"].to_numpy(dtype=float))
    if c["n"] == 0:
        return {"n": 0, "horizon_bars": horizon_bars, "brier": None, "bins": []}
    clim = c["brier_climatology"]
    return {
        "n": c["n"],
        "horizon_bars": horizon_bars,
        "brier": c["brier"],
        "base_rate_up": c["base_rate_up"],
        "brier_climatology": clim,
        "brier_skill": _f(1 - c["brier"] / clim) if clim > 0 else None,
        "hit_rate": c["hit_rate"],
        "bins": c["bins"],
    }


# -- decisions ---------------------------------------------------------------------------
def rejections(run: RunOutputs) -> dict[str, Any]:
    assert run.signals is not None
    decided = run.signals[run.signals["reason"] != "warmup"]
    shadow: Counter[str] = Counter()
    for vetoes in decided["would_veto"]:
        shadow.update(v.split(": ", 1)[0] for v in vetoes)
    return {
        "total": len(run.rejections),
        "by_reason": dict(sorted(Counter(r["reason"] for r in run.rejections).items())),
        "by_stage": dict(sorted(Counter(r["stage"] for r in run.rejections).items())),
        "shadow_would_veto": dict(sorted(shadow.items())),
        "decision_outcomes": dict(sorted(Counter(decided["reason"]).items())),
    }


def arm_frequencies(run: RunOutputs) -> dict[str, Any]:
    """The bandit's chosen arm per decision, and the arm behind each entry, per UTC day."""
    assert run.signals is not None
    chosen = run.signals[run.signals["chosen_arm"].notna()]
    chosen_days = day_of_mark(chosen["ts_event_ms"].to_numpy())
    entries = [o for o in run.orders if o["purpose"] in ENTRY_PURPOSES]
    daily: dict[int, dict[str, Counter]] = defaultdict(
        lambda: {"chosen": Counter(), "entered": Counter()}
    )
    for day, arm in zip(chosen_days, chosen["chosen_arm"], strict=True):
        daily[int(day)]["chosen"][arm] += 1
    for o in entries:
        daily[int(day_of_mark(o["ts_event_ms"]))]["entered"][o["arm"] or "none"] += 1
    arms = sorted(set(chosen["chosen_arm"]) | {o["arm"] or "none" for o in entries})
    return {
        "arms": arms,
        "chosen_total": dict(sorted(Counter(chosen["chosen_arm"]).items())),
        "entered_total": dict(sorted(Counter(o["arm"] or "none" for o in entries).items())),
        "daily": [
            {
                "date": iso_day(d),
                "chosen": dict(sorted(daily[d]["chosen"].items())),
                "entered": dict(sorted(daily[d]["entered"].items())),
            }
            for d in sorted(daily)
        ],
    }


def halts(run: RunOutputs) -> list[dict[str, Any]]:
    """Each time a symbol's trading state became HALTED, with the kill-switch's reason."""
    out = []
    for symbol, g in run.health.groupby("symbol", sort=True):
        prev = "ACTIVE"
        for ts, state, reason in zip(
            g["ts_event_ms"], g["trading_state"], g["halt_reason"], strict=True
        ):
            if state == "HALTED" and prev != "HALTED":
                out.append(
                    {"symbol": symbol, "ts_ms": int(ts), "time": iso_time(ts), "reason": reason}
                )
            prev = state
    return out


# -- latency -----------------------------------------------------------------------------
def event_time_latency(run: RunOutputs) -> dict[str, Any]:
    """From ts_event_ms: decision bar close → order, and order → the fill it was priced at."""
    orders = {o["decision_id"]: o for o in run.orders}
    to_order = [o["ts_event_ms"] - shared.decision_bar_ms(o["decision_id"]) for o in run.orders]
    to_fill = [
        e["ts_event_ms"] - orders[e["decision_id"]]["ts_event_ms"]
        for e in run.executions
        if e["decision_id"] in orders
    ]
    return {
        "bar_close_to_order_ms": metrics.percentiles(to_order),
        "order_to_fill_ms": metrics.percentiles(to_fill),
    }


def processing_latency(run: RunOutputs) -> dict[str, Any]:
    """From ts_init_ms of a wall-clock run: the market step emitting a 5m bar → its order."""
    assert run.bars_5m is not None
    bar_init = {
        (s, int(e)): int(t)
        for s, e, t in zip(
            run.bars_5m["symbol"], run.bars_5m["end_ms"], run.bars_5m["ts_init_ms"], strict=True
        )
    }
    lat = [
        o["ts_init_ms"] - bar_init[(o["symbol"], o["ts_event_ms"])]
        for o in run.orders
        if (o["symbol"], o["ts_event_ms"]) in bar_init
    ]
    return metrics.percentiles(lat)


# -- data --------------------------------------------------------------------------------
def completeness(bars_5m: pd.DataFrame) -> dict[str, Any]:
    """5m bars expected (every 5m slot from the first bar to the last), emitted, complete.

    A bar counts only if complete: a gap bar, or a bar missing some of its 1m candles, not."""
    symbols = []
    for symbol, g in bars_5m.groupby("symbol", sort=True):
        first, last = int(g["start_ms"].min()), int(g["end_ms"].max())
        slots = np.arange(first, last, BAR_MS)
        exp_days = pd.Series(slots // DAY_MS).value_counts().sort_index()
        days = g["start_ms"].to_numpy() // DAY_MS
        with_data = g["complete"].astype(bool).to_numpy()
        emitted_by_day = pd.Series(days).value_counts()
        data_by_day = pd.Series(days[with_data]).value_counts()
        daily = []
        for d, expected in exp_days.items():
            n_data = int(data_by_day.get(d, 0))
            daily.append(
                {
                    "date": iso_day(int(d)),
                    "expected": int(expected),
                    "emitted": int(emitted_by_day.get(d, 0)),
                    "with_data": n_data,
                    "completeness": n_data / int(expected),
                }
            )
        symbols.append(
            {
                "symbol": symbol,
                "first_bar_start": iso_time(first),
                "last_bar_end": iso_time(last),
                "expected": len(slots),
                "emitted": len(g),
                "with_data": int(with_data.sum()),
                "gap_bars": int((g["count"].to_numpy() == 0).sum()),
                "incomplete_bars": int((~g["complete"].astype(bool)).sum()),
                "completeness": int(with_data.sum()) / len(slots),
                "days_below_100pct": sum(1 for r in daily if r["completeness"] < 1.0),
                "daily": daily,
            }
        )
    return {"symbols": symbols}


# -- the run -----------------------------------------------------------------------------
def daily_table(
    book: Book, run: RunOutputs, trips: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """One row per UTC day of the evaluation window, and the daily returns."""
    eq = book.daily_close(book.equity)
    if eq.empty:
        return [], np.array([])
    fees = book.daily_close(book.fees)
    funding = book.daily_close(book.funding)
    prev_eq = eq.shift(1).fillna(book.e_start)
    prev_fees = fees.shift(1).fillna(float(book.fees.iloc[0]))
    prev_funding = funding.shift(1).fillna(float(book.funding.iloc[0]))
    fills: Counter[int] = Counter()
    notional: dict[int, float] = defaultdict(float)
    slippage: dict[int, float] = defaultdict(float)
    for e in run.executions:
        d = e["ts_event_ms"] // DAY_MS  # the fill bar's start: marked at that bar's close
        fills[d] += 1
        notional[d] += e["notional_usd"]
    for c in run.costs:
        slippage[c["ts_event_ms"] // DAY_MS] += c["slippage_usd"]
    closed: Counter[int] = Counter(t["exit_ms"] // DAY_MS for t in trips)
    won: Counter[int] = Counter(t["exit_ms"] // DAY_MS for t in trips if t["pnl_usd"] > 0)
    rows = []
    for d in eq.index:
        start, end = float(prev_eq[d]), float(eq[d])
        rows.append(
            {
                "date": iso_day(d),
                "equity_start_usd": start,
                "equity_end_usd": end,
                "pnl_usd": end - start,
                "return": end / start - 1.0,
                "fills": fills[d],
                "notional_usd": notional[d],
                "turnover": notional[d] / start,
                "round_trips": closed[d],
                "wins": won[d],
                "fees_usd": float(fees[d] - prev_fees[d]),
                "slippage_usd": slippage[d],
                "funding_usd": float(funding[d] - prev_funding[d]),
            }
        )
    return rows, np.array([r["return"] for r in rows])


def hourly_curve(book: Book) -> list[list[float]]:
    """[ts_ms, equity, drawdown] at the last 5m mark of each hour (for report.json)."""
    dd = book.drawdown_5m()
    hours = (book.equity.index.to_numpy() - 1) // HOUR_MS
    last = pd.Series(book.equity.index.to_numpy()).groupby(hours).last().to_numpy()
    return [[int(t), float(book.equity[t]), float(dd[t])] for t in last]


def performance(book: Book, daily_returns: np.ndarray) -> dict[str, Any]:
    total = book.e_end / book.e_start - 1.0
    ann = (
        (1.0 + total) ** (metrics.PERIODS_PER_YEAR / book.eval_days) - 1.0
        if book.eval_days > 0 and total > -1.0
        else None
    )
    return {
        "equity_start_usd": book.e_start,
        "equity_end_usd": book.e_end,
        "net_pnl_usd": book.e_end - book.e_start,
        "total_return": total,
        "annualised_return": _f(ann),
        "eval_days": book.eval_days,
        "days": len(daily_returns),
        "sharpe": metrics.sharpe(daily_returns),
        "sortino": metrics.sortino(daily_returns),
        "volatility_annual": metrics.annualised_volatility(daily_returns),
        "max_drawdown_daily": metrics.max_drawdown(daily_returns) if len(daily_returns) else None,
        "max_drawdown_5m": float(book.drawdown_5m().max()),
        "best_day_return": _f(daily_returns.max()) if len(daily_returns) else None,
        "worst_day_return": _f(daily_returns.min()) if len(daily_returns) else None,
    }


def costs(book: Book, run: RunOutputs, daily: list[dict[str, Any]]) -> dict[str, Any]:
    fees = math.fsum(c["fee_usd"] for c in run.costs)
    slippage = math.fsum(c["slippage_usd"] for c in run.costs)
    notional = math.fsum(e["notional_usd"] for e in run.executions)
    funding = float(book.funding.iloc[-1] - book.funding.iloc[0])
    net = book.e_end - book.e_start
    gross = net + fees + slippage
    return {
        "fills": len(run.executions),
        "notional_usd": notional,
        "fees_usd": fees,
        "slippage_usd": slippage,
        "costs_usd": fees + slippage,
        "funding_usd": funding,
        "gross_pnl_usd": gross,
        "costs_pct_of_gross": _f(100.0 * (fees + slippage) / gross) if gross > 0 else None,
        "costs_bps_of_notional": _f(1e4 * (fees + slippage) / notional) if notional else None,
        "turnover_per_day": _f(np.mean([r["turnover"] for r in daily])) if daily else None,
        "fills_per_day": _f(len(run.executions) / book.eval_days) if book.eval_days else None,
    }


def run_kpis(
    run: RunOutputs, initial_equity: float, horizon_bars: int, t0_ms: int | None = None
) -> dict[str, Any]:
    """Every KPI of one full run (base slippage): the report's per-preset block."""
    assert run.signals is not None and run.bars_5m is not None
    t0 = evaluation_start(run.signals) if t0_ms is None else t0_ms
    book = Book(run, initial_equity, t0)
    trips = round_trips(run)
    daily, rets = daily_table(book, run, trips)
    trades = trade_stats(trips)
    kpis = {
        **performance(book, rets),
        **trades,
        "trades_per_day": _f(trades["round_trips"] / book.eval_days) if book.eval_days else None,
        **costs(book, run, daily),
        "decisions": int((run.signals["reason"] != "warmup").sum()),
        "halts": len(halts(run)),
        "errors": len(run.errors),
    }
    pairs = calibration_pairs(run.signals, horizon_bars)
    cal = calibration(pairs, horizon_bars)
    kpis["brier"] = cal["brier"]
    kpis["brier_skill"] = cal.get("brier_skill")
    flow_cal = run.calibration[-1] if run.calibration else None
    return {
        "evaluation": {
            "start_ms": t0,
            "end_ms": book.t_end_ms,
            "start": iso_time(t0),
            "end": iso_time(book.t_end_ms),
            "initial_equity_usd": book.initial_equity,
        },
        "kpis": kpis,
        "daily": daily,
        "deciles": confidence_deciles(trips),
        "calibration": {
            **cal,
            "flow_last_window": None
            if flow_cal is None
            else {
                "ts_ms": flow_cal["ts_event_ms"],
                "window": flow_cal["window"],
                "brier": flow_cal["brier"],
            },
        },
        "rejections": rejections(run),
        "arms": arm_frequencies(run),
        "halts": halts(run),
        "latency_event_time": event_time_latency(run),
        "round_trips": trips,
        "curve_hourly": hourly_curve(book),
        "end_state": {
            s: {"trading_state": v.get("trading_state"), "equity_usd": v.get("equity")}
            for s, v in sorted(run.summary.get("symbols", {}).items())
        },
    }


def slippage_kpis(run: RunOutputs, initial_equity: float, t0_ms: int) -> dict[str, Any]:
    """The headline of a slippage-sensitivity run (same window as its base run)."""
    book = Book(run, initial_equity, t0_ms)
    trips = round_trips(run)
    daily, rets = daily_table(book, run, trips)
    perf = performance(book, rets)
    c = costs(book, run, daily)
    return {
        "equity_end_usd": perf["equity_end_usd"],
        "net_pnl_usd": perf["net_pnl_usd"],
        "total_return": perf["total_return"],
        "sharpe": perf["sharpe"],
        "sortino": perf["sortino"],
        "max_drawdown_daily": perf["max_drawdown_daily"],
        "round_trips": len(trips),
        "hit_rate": trade_stats(trips)["hit_rate"],
        "fills": c["fills"],
        "notional_usd": c["notional_usd"],
        "fees_usd": c["fees_usd"],
        "slippage_usd": c["slippage_usd"],
    }
