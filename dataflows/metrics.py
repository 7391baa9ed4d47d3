"""Prometheus metrics of the running flow, in prometheus-client's default registry.

Bytewax's API server (`BYTEWAX_DATAFLOW_API_ENABLED=true`, port `BYTEWAX_DATAFLOW_API_PORT`,
default 3030) serves them at `/metrics` next to Bytewax's own. They are read off what the
flow emits (every output record passes `observe`), so a metric can never disagree with the
telemetry topics; only input throughput and the bar close → decision latency are measured
where they happen.

Names (all prefixed `ensemble_`):
    input_messages_total{stream}                 messages read, before validation
    bars_total{symbol,timeframe,complete}        bars closed (complete=false: gap or partial)
    dead_letters_total{stream,kind}              input set aside, by the reason's first word
    late_records_total{symbol}                   records behind the watermark (also dead letters)
    outlier_records_total{symbol}                trades or candles outside the price/size bands
    duplicate_trades_total{symbol}               trades dropped: same (venue, trade id) seen before
    errors_total{stage}                          exceptions caught on one record
    decisions_total{symbol,arm,action}           decisions after warm-up (arm "none": no arm)
    rejections_total{symbol,reason}              vetoes and refusals, by typed reason
    orders_total{symbol,purpose} / fills_total{symbol}
    model_confidence                             histogram of conf = max(p_up, p_down)
    decision_latency_seconds                     bar close (out of the market step) → decision
    position_qty, position_notional_usd, equity_usd, drawdown, max_drawdown,
    sharpe_30d, win_rate, consecutive_losses {symbol}          from the health heartbeat
    trading_state{symbol,ensemble_trading_state} and strategy_status{symbol,...}: enums
    kill_switch{symbol,ensemble_kill_switch}     enum: the kill-switch that halted, or "none"
    trade_side_probability{symbol}               histogram: model probability of the side traded
    fill_slippage_bps{symbol}                    histogram: |slippage| of each fill
    last_bar_close_timestamp_seconds{symbol}     event time of the last heartbeat
    event_lag_seconds{symbol}                    wall clock (at the scrape) minus that event time
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Enum, Gauge, Histogram

# the halt reasons that are kill-switches, a symbol's and the account's (an operator's own
# halt is not one): the same list as the risk step's and the alerts consumer's
from operators.reasons import KILL_SWITCH_REASONS

NS = "ensemble"

INPUT = Counter(
    "input_messages", "Input messages read, before validation", ["stream"], namespace=NS
)
BARS = Counter("bars", "Bars closed", ["symbol", "timeframe", "complete"], namespace=NS)
DEAD = Counter("dead_letters", "Input set aside with a reason", ["stream", "kind"], namespace=NS)
LATE = Counter("late_records", "Records behind the watermark", ["symbol"], namespace=NS)
OUTLIERS = Counter(
    "outlier_records", "Trades or candles outside the price or size bands", ["symbol"], namespace=NS
)
DUPLICATES = Counter(
    "duplicate_trades", "Trades dropped as already seen (venue, trade id)", ["symbol"], namespace=NS
)
ERRORS = Counter("errors", "Exceptions caught on one record", ["stage"], namespace=NS)
# The stages that catch an exception on one record (dataflows/ensemble.py `_error`), exported
# at 0 from the start: Prometheus's increase() sees nothing in a series that first appears
# at 1, so without them the alert on errors missed each stage's first error after a start.
ERROR_STAGES = ("market", "context_join", "features", "predict", "strategy")
for _stage in ERROR_STAGES:
    ERRORS.labels(_stage)
DECISIONS = Counter(
    "decisions", "Decisions after warm-up", ["symbol", "arm", "action"], namespace=NS
)
REJECTIONS = Counter("rejections", "Rejections by reason", ["symbol", "reason"], namespace=NS)
ORDERS = Counter("orders", "Order intents", ["symbol", "purpose"], namespace=NS)
FILLS = Counter("fills", "Paper executions", ["symbol"], namespace=NS)
CONFIDENCE = Histogram(
    "model_confidence",
    "Model confidence max(p_up, p_down) at each decision",
    buckets=(0.5, 0.52, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0),
    namespace=NS,
)
LATENCY = Histogram(
    "decision_latency_seconds",
    "Wall time from a bar leaving the market step to its decision",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    namespace=NS,
)
HEALTH_GAUGES = {
    name: Gauge(name, doc, ["symbol"], namespace=NS)
    for name, doc in (
        ("position_qty", "Position in base units"),
        ("position_notional_usd", "Position notional at the last close"),
        ("equity_usd", "Paper equity"),
        ("drawdown", "Drawdown from peak equity, 0..1"),
        ("max_drawdown", "Largest drawdown seen, 0..1"),
        ("sharpe_30d", "Annualised Sharpe of up to 30 daily returns"),
        ("win_rate", "Share of closed round trips that won"),
        ("consecutive_losses", "Losing round trips in a row"),
    )
}
TRADING_STATE = Enum(
    "trading_state", "Trading state", ["symbol"], states=["ACTIVE", "HALTED"],
    namespace=NS,
)  # fmt: skip
STATUS = Enum(
    "strategy_status", "Strategy status", ["symbol"], states=["ok", "needs_attention", "halted"],
    namespace=NS,
)  # fmt: skip
KILL_SWITCH = Enum(
    "kill_switch", "The kill-switch that halted trading, none when not halted by one", ["symbol"],
    states=["none", *KILL_SWITCH_REASONS], namespace=NS,
)  # fmt: skip
# what the alerts consumer's low_confidence_trade and large_slippage rules look at
SIDE_PROB = Histogram(
    "trade_side_probability", "Model probability of the side traded, per trade", ["symbol"],
    buckets=(0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 1.0), namespace=NS,
)  # fmt: skip
SLIPPAGE = Histogram(
    "fill_slippage_bps", "Absolute slippage of each fill against the bar open, bps", ["symbol"],
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0), namespace=NS,
)  # fmt: skip
LAST_BAR = Gauge(
    "last_bar_close_timestamp_seconds", "Event time of the last heartbeat", ["symbol"], namespace=NS
)
LAG = Gauge("event_lag_seconds", "Wall clock minus the last heartbeat's event time", ["symbol"],
            namespace=NS)  # fmt: skip
_LAST_EVENT_S: dict[str, float] = {}  # each symbol's last heartbeat, for LAG at scrape time


def _lag(sym: str) -> Any:
    """LAG's child for `sym`, read when scraped: it keeps growing while no heartbeat comes
    (a stuck flow), instead of showing the lag its last heartbeat had."""
    child = LAG.labels(sym)
    child.set_function(lambda: time.time() - _LAST_EVENT_S.get(sym, math.nan))
    return child


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """The metric's child for these label values, looked up once: prometheus-client
    checks and looks them up under a lock at every `labels` call (1.6 million calls, a
    twentieth of a year's candle replay)."""
    return metric.labels(*labels)


def trading(symbols: Iterable[str]) -> None:
    """Export the traded symbols' per-fill, per-trade and set-aside series at 0 from the
    start: the rules on slippage and on the probability of the side traded, and the
    dashboard's late-records panel, take increase() of them, which sees nothing in a
    series that first appears at its first fill, trade or late record."""
    for sym in sorted(symbols):
        for metric in (FILLS, SLIPPAGE, SIDE_PROB, LATE, OUTLIERS, DUPLICATES):
            _child(metric, sym)


@functools.cache
def _health_children(sym: str) -> tuple[list[tuple[str, Any]], Any, Any, Any, Any, Any]:
    """A symbol's heartbeat metrics: (gauge name, child) pairs, then trading state,
    status, kill-switch, last bar and lag."""
    return (
        [(name, gauge.labels(sym)) for name, gauge in HEALTH_GAUGES.items()],
        TRADING_STATE.labels(sym),
        STATUS.labels(sym),
        KILL_SWITCH.labels(sym),
        LAST_BAR.labels(sym),
        _lag(sym),
    )


def count_inputs(counts: dict[str, int]) -> None:
    """Once per input batch: messages read per stream."""
    for stream, n in counts.items():
        _child(INPUT, stream).inc(n)


def observe_latency(seconds: float) -> None:
    LATENCY.observe(seconds)


def observe(stream: str, rec: dict[str, Any]) -> None:
    """Update the metrics from one emitted record."""
    sym = rec.get("symbol") or "?"
    if stream == "bars":
        _child(BARS, sym, rec["timeframe"], str(bool(rec["complete"])).lower()).inc()
    elif stream == "signals":
        d, model = rec.get("decision") or {}, rec.get("model")
        if d.get("reason") == "warmup":
            return
        _child(DECISIONS, sym, d.get("chosen_arm") or "none", d.get("action", "?")).inc()
        if model is not None:
            CONFIDENCE.observe(model["conf"])
            if d.get("action") == "trade" and d.get("direction"):
                _child(SIDE_PROB, sym).observe(model["p_up" if d["direction"] > 0 else "p_down"])
    elif stream == "rejections":
        _child(REJECTIONS, sym, rec["reason"]).inc()
    elif stream == "orders":
        _child(ORDERS, sym, rec["purpose"]).inc()
    elif stream == "executions":
        _child(FILLS, sym).inc()
        _child(SLIPPAGE, sym).observe(abs(rec["slippage_bps"]))
    elif stream == "health":
        gauges, trading_state, status, kill_switch, last_bar, _ = _health_children(sym)
        for name, gauge in gauges:
            value = rec.get(name)  # None (e.g. Sharpe under two days): NaN, never a stale value
            gauge.set(math.nan if value is None else value)
        trading_state.state(rec["trading_state"])
        status.state(rec["strategy_status"])
        kill = rec["halt_reason"].split(":")[0] if rec["trading_state"] == "HALTED" else "none"
        kill_switch.state(kill if kill in KILL_SWITCH_REASONS else "none")
        t = rec["ts_event_ms"] / 1000.0
        last_bar.set(t)
        _LAST_EVENT_S[sym] = t  # `lag` reads it when scraped
    elif stream == "dead_letters":
        reason = str(rec.get("reason", ""))
        kind = reason.split(":")[0].split(" ")[0] or "unknown"
        _child(DEAD, rec.get("source_stream") or "?", kind).inc()
        if kind == "late":
            _child(LATE, sym).inc()
        elif kind == "outlier":
            _child(OUTLIERS, sym).inc()
    elif stream == "errors":
        _child(ERRORS, rec.get("stage") or "?").inc()
    elif stream == "summary" and "duplicates" in rec:
        _child(DUPLICATES, sym).inc(rec["duplicates"])
