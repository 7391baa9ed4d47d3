"""The copilot's answers about stopping and about "the last trade".

"why did we stop trading at 21:25?" is about a halt, not a trade: `halt_facts` finds the
health event nearest the asked time at which the symbol turned HALTED, and gathers the
kill-switch that fired, the risk state then, the losing round trips that led to it and
when (if) trading resumed. "why was the last trade short?" names no time: `last_entry`
finds the most recent entry or flip order, whose time the "why" facts then use.
"""

from __future__ import annotations

import json
import re
from typing import Any

from consumers.facts import (
    ENTRY_PURPOSES,
    MATCH_WINDOW_MS,
    CopilotError,
    Telemetry,
    _mismatch,
    _r,
    asked_time_ms,
    decision_facts,
    halt_changed,
    pick_symbol,
    trip_facts,
    utc_text,
)
from operators.kpis import is_win
from operators.reasons import is_kill_switch

_STOP = re.compile(r"\b(stop|stopped|stopping|halt|halted|halting|kill[- ]?switch)\b", re.I)
_LAST = re.compile(r"\b(last|latest|most recent)\b(?:\s+\w+){0,2}\s+trade\b", re.I)


def is_halt_question(question: str) -> bool:
    return _STOP.search(question) is not None


def is_last_trade_question(question: str) -> bool:
    return _LAST.search(question) is not None


def last_entry(tel: Telemetry, symbol: str | None) -> dict[str, Any]:
    """The most recent entry or flip order (of `symbol`, else of any symbol)."""
    entries = [
        o
        for o in tel.orders.values()
        if o["purpose"] in ENTRY_PURPOSES and (symbol is None or o["symbol"] == symbol)
    ]
    if not entries:
        raise CopilotError(f"no trade logged{f' for {symbol}' if symbol else ''}")
    return max(entries, key=lambda o: o["ts_event_ms"])


def last_trade_facts(tel: Telemetry, question: str, symbol: str | None) -> dict[str, Any]:
    """The "why" facts of the most recent entry; a side named wrongly is corrected."""
    last = last_entry(tel, symbol)
    sym, did, ts = last["symbol"], last["decision_id"], last["ts_event_ms"]
    sig = tel.signals.get(did)
    if sig is None:
        raise CopilotError(f"the signals record of the last trade ({utc_text(ts)} UTC) is missing")
    facts = {
        "kind": "why",
        "question": question,
        "symbol": sym,
        "strategy_id": tel.strategy_id,
        "asked_time_utc": utc_text(ts),
    }
    if _mismatch(last, question):  # answer the question asked, not a convenient one
        pos = "short" if last["side"] == "sell" else "long"
        facts["premise"] = (
            f"the last trade for {sym} ({utc_text(ts)} UTC) was a {pos}, not a "
            f"{'long' if pos == 'short' else 'short'}; it is explained"
        )
    return {**facts, **decision_facts(tel, sig)}


def _halts(tel: Telemetry, symbol: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(health event that turned HALTED, the one that turned it back or None), in order."""
    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    prev = None
    for h in tel.health[symbol]:
        state = h["trading_state"]
        if state == "HALTED" and (prev is None or halt_changed(prev, h)):
            out.append((h, None))  # a kill-switch taking over an operator's halt is one too
        elif state != "HALTED" and prev is not None and prev["trading_state"] == "HALTED" and out:
            out[-1] = (out[-1][0], h)
        prev = h
    return out


def halt_facts(
    tel: Telemetry, question: str, symbol: str | None = None, at: str | None = None
) -> dict[str, Any]:
    sym = pick_symbol(tel, question, symbol)
    at_ms = asked_time_ms(tel, sym, question, at, None)
    near = [
        (abs(h["ts_event_ms"] - at_ms), h["ts_event_ms"], h, back)
        for h, back in _halts(tel, sym)
        if abs(h["ts_event_ms"] - at_ms) <= MATCH_WINDOW_MS
    ]
    if not near:
        raise CopilotError(
            f"no halt of {sym} within {MATCH_WINDOW_MS // 60_000} minutes of "
            f"{utc_text(at_ms)} UTC: trading was {_state_at(tel, sym, at_ms)} then"
        )
    _, ts, h, back = min(near, key=lambda n: (n[0], n[1]))
    reason = h["halt_reason"]
    losing = []
    # a fill stamped at the halt's close is at the open after it (the flatten the halt
    # ordered): its loss came after the halt, so it is not part of the run that led to it
    before = [t for t in tel.round_trips.get(sym, []) if t.exit["ts_event_ms"] < ts]
    for t in reversed(before):
        if is_win(t.pnl_usd):  # as the risk state counts: only a win ends the run, not a zero
            break
        losing.insert(0, trip_facts(tel, t))
    flatten = [
        o
        for o in tel.orders.values()
        if o["symbol"] == sym and o["purpose"] == "kill_switch_flatten"
    ]
    flat = min(
        (o for o in flatten if o["ts_event_ms"] >= ts - 5 * 60_000),
        key=lambda o: o["ts_event_ms"],
        default=None,
    )
    return {
        "kind": "halt",
        "question": question,
        "symbol": sym,
        "strategy_id": tel.strategy_id,
        "asked_time_utc": utc_text(at_ms),
        "halt": {
            "time_utc": utc_text(ts),
            "reason": reason,
            "kill_switch": is_kill_switch(reason),
            "resumed_utc": utc_text(back["ts_event_ms"]) if back else None,
            "flattened_utc": utc_text(flat["ts_event_ms"]) if flat else None,
        },
        "risk": {
            "equity_usd": _r(h["equity_usd"], 2),
            "drawdown": _r(h["drawdown"], 5),
            "max_drawdown": _r(h["max_drawdown"], 5),
            "consecutive_losses": h["consecutive_losses"],
            "trading_state": h["trading_state"],
            "halt_reason": reason,
            "strategy_status": h["strategy_status"],
            "position_qty": _r(h["position_qty"], 8),
        },
        "limits": _limits(tel, sym, ts),
        "losing_trades": losing,
    }


def _limits(tel: Telemetry, symbol: str, ts: int) -> dict[str, Any] | None:
    """The kill-switch limits of the configuration in force (from the repro record)."""
    rec = tel.at_or_before(tel.repro[symbol], ts)
    try:
        risk = json.loads(rec["config_json"])["risk"] if rec else None
        if risk is None:
            return None
        return {
            "max_drawdown_limit": risk["max_drawdown"],
            "daily_loss_limit": risk["daily_loss_limit"],
            "max_consecutive_losses": risk["max_consecutive_losses"],
        }
    except (ValueError, KeyError, TypeError):
        return None


def _state_at(tel: Telemetry, symbol: str, ts: int) -> str:
    h = tel.health_at(symbol, ts)
    return "not yet reported" if h is None else h["trading_state"]
