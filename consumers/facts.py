"""The copilot's facts: the flow's telemetry indexed, a day's summary, one decision's "why".

`Telemetry` takes (stream, record) pairs, drops republished duplicates (the flow writes
at least once: the same decision id twice) and indexes the records of one strategy by
decision id, symbol and time; round trips pair each closing fill with the fill that
opened it. `summary_facts` and `why_facts` build plain dicts of field-by-field chosen
values, which `consumers.copilot` renders or hands to an LLM (through the allow-list in
`consumers.llm`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time
from typing import Any

from consumers.stream import Dedup, Record
from operators.kpis import RoundTrip, decision_of, is_win, pair_round_trips, utc_day
from operators.reasons import is_kill_switch

log = logging.getLogger("ensemble.copilot")

STREAMS = (
    "signals",
    "orders",
    "executions",
    "rejections",
    "health",
    "costs",
    "ensemble",
    "repro",
    "errors",
    "dead_letters",
)
DAY_MS = 86_400_000
BAR_MS = 300_000
MATCH_WINDOW_MS = 60 * 60_000  # a trade decision within an hour of the asked time
NEARBY_MS = 2 * 60 * 60_000
ENTRY_PURPOSES = ("entry", "flip")
FEATURES_SHOWN = (
    "ret_1",
    "ret_12",
    "rv_annual",
    "rv_1h_annual",
    "rsi_14",
    "volume_z",
    "funding_rate",
    "trend_15m",
    "trend_1h",
)


class CopilotError(ValueError):
    """The question or the telemetry cannot give an answer; the message says why."""


MAX_SET_ASIDE_LOGGED = 20  # then only counted (the copilot prints how many)
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999 UTC, the last a datetime holds


def count(n: int, one: str, many: str) -> str:
    """'1 loss', '2 losses': what the copilot and the alerts say is read as prose."""
    return f"{n} {one if n == 1 else many}"


def invalid(value: Any, path: str = "") -> str | None:
    """Why a record cannot be counted (a number that is NaN or infinite, a time out of the
    calendar), or None. The answers format every number: one such value would end them."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'value'} is {value}"
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if k.startswith("ts_") and k.endswith("_ms") and isinstance(v, int):
                if not 0 <= v <= MAX_TS_MS:
                    return f"{where}={v} is not a time"
            elif why := invalid(v, where):
                return why
    if isinstance(value, list):
        for i, v in enumerate(value):
            if why := invalid(v, f"{path}[{i}]"):
                return why
    return None


def utc_text(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def day_start_ms(d: date) -> int:
    return int(datetime.combine(d, time(0, 0), UTC).timestamp() * 1000)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def side_word(direction: int) -> str:
    return "long" if direction > 0 else "short" if direction < 0 else "flat"


# -- the telemetry, indexed -------------------------------------------------------------------
class Telemetry:
    """Deduplicated records of one strategy, indexed by decision id, symbol and time."""

    def __init__(
        self,
        records: Iterable[Record],
        strategy_id: str | None = None,
        check: Callable[[str, dict[str, Any]], str | None] | None = None,
    ) -> None:
        """`check(stream, record)`: why a record is unusable, or None (on top of `invalid`);
        an unusable record is set aside, logged and counted (`set_aside`)."""
        dedup = Dedup(max_keys=10_000_000)
        by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
        strategies: Counter[str] = Counter()
        self.set_aside = 0
        for stream, rec in records:
            if stream not in STREAMS:
                continue
            why = invalid(rec) or (check(stream, rec) if check else None)
            if why is not None:
                self.set_aside += 1
                if self.set_aside <= MAX_SET_ASIDE_LOGGED:
                    log.warning("a %s record was set aside, not counted: %s", stream, why)
                continue
            if not dedup.first(stream, rec):
                continue
            by_stream[stream].append(rec)
            if stream == "health":
                strategies[rec["strategy_id"]] += 1
        self.duplicates = dedup.duplicates
        if strategy_id is None:
            if len(strategies) > 1:
                raise CopilotError(
                    f"the telemetry holds several strategies {sorted(strategies)}; "
                    "choose one with --strategy"
                )
            strategy_id = next(iter(strategies), None)
        self.strategy_id = strategy_id

        def mine(stream: str) -> list[dict[str, Any]]:
            recs = [r for r in by_stream[stream] if r.get("strategy_id") == strategy_id]
            return sorted(recs, key=lambda r: r.get("ts_event_ms") or r.get("ts_init_ms") or 0)

        self.signals = {r["decision"]["decision_id"]: r for r in mine("signals")}
        self.orders = {r["decision_id"]: r for r in mine("orders")}
        # a decision's orders: its entry (same id) or its exit (<decision>:<purpose>)
        self.orders_of: dict[str, list[str]] = defaultdict(list)
        for oid in self.orders:
            self.orders_of[decision_of(oid)].append(oid)
        self.executions = {r["decision_id"]: r for r in mine("executions")}
        self.costs = {r["decision_id"]: r for r in mine("costs")}
        self.rejections: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in mine("rejections"):
            self.rejections[r["decision_id"]].append(r)
        self.ensemble = {(r["symbol"], r["ts_event_ms"]): r for r in mine("ensemble")}
        self.health: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in mine("health"):
            self.health[r["symbol"]].append(r)
        self.repro: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in mine("repro"):
            self.repro[r["symbol"]].append(r)
        self.signals_by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.signals.values():
            self.signals_by_symbol[r["symbol"]].append(r)
        self.errors = mine("errors")
        self.dead_letters = by_stream["dead_letters"]
        self.symbols = sorted(
            {r["symbol"] for r in self.signals.values()} | set(self.health) | set(self.repro)
        )
        self.round_trips = {s: self._pair(s) for s in self.symbols}
        self.count = sum(len(v) for v in by_stream.values())

    def _pair(self, symbol: str) -> list[RoundTrip]:
        """Round trips in time order (operators.kpis: each exit with the entry it names)."""
        return pair_round_trips(e for e in self.executions.values() if e["symbol"] == symbol)

    def last_ts(self, symbol: str | None = None) -> int | None:
        pools = [self.health[symbol]] if symbol else list(self.health.values())
        pools += [self.signals_by_symbol[symbol]] if symbol else []
        ts = [p[-1]["ts_event_ms"] for p in pools if p]
        return max(ts) if ts else None

    def at_or_before(self, recs: list[dict[str, Any]], ts: int) -> dict[str, Any] | None:
        i = bisect_right([r["ts_event_ms"] for r in recs], ts)
        return recs[i - 1] if i else None

    def health_at(self, symbol: str, ts: int) -> dict[str, Any] | None:
        return self.at_or_before(self.health[symbol], ts)

    def thresholds_at(self, symbol: str, ts: int) -> dict[str, Any] | None:
        rec = self.at_or_before(self.repro[symbol], ts)
        if rec is None:
            return None
        try:
            cfg = json.loads(rec["config_json"])
            th, g, risk = cfg["thresholds"], cfg["gates"], cfg["risk"]
            return {
                "S_MIN": th["S_MIN"],
                "CONF_MIN": th["CONF_MIN"],
                "ALPHA_MIN": th["ALPHA_MIN"],
                "low_conf_veto": g["low_conf_veto"],
                "low_conf_min": g["low_conf_min"],
                "consensus_gate": g["consensus_gate"],
                "consensus_trend_min": g["consensus_trend_min"],
                "dynamic_conf_min": g["dynamic_conf_min"],
                "pos_max": risk["pos_max"],
                "sigma_target": risk["sigma_target"],
                "vol_guard": risk["vol_guard"],
                "max_hold_bars": risk["max_hold_bars"],
            }
        except (ValueError, KeyError, TypeError):
            log.warning("repro record at %s has no readable configuration", utc_text(ts))
            return None

    def trip_of(self, decision_id: str) -> RoundTrip | None:
        """The round trip this decision opened or closed."""
        e = self.executions.get(decision_id)
        if e is None:
            return None
        for t in self.round_trips.get(e["symbol"], []):
            if t.exit["decision_id"] == decision_id:
                return t
            if t.entry is not None and t.entry["decision_id"] == decision_id:
                return t
        return None


def trip_facts(tel: Telemetry, t: RoundTrip) -> dict[str, Any]:
    entry_sig = tel.signals.get(t.entry["decision_id"]) if t.entry else None
    model = entry_sig["model"] if entry_sig else None
    entry_order = tel.orders.get(t.entry["decision_id"]) if t.entry else None
    p_side = None
    if model is not None:
        p_side = model["p_up"] if t.direction > 0 else model["p_down"]
    return {
        "opened_utc": utc_text(t.entry["ts_event_ms"]) if t.entry else None,
        "closed_utc": utc_text(t.exit["ts_event_ms"]),
        "side": side_word(t.direction),
        "arm": entry_order["arm"] if entry_order else None,
        "pnl_usd": _r(t.pnl_usd, 2),
        "confidence": _r(model["conf"], 4) if model else None,
        "prob_side_traded": _r(p_side, 4),
        "closed_by": t.exit["purpose"],
        "held_bars": (t.exit["ts_event_ms"] - t.entry["ts_event_ms"]) // BAR_MS
        if t.entry
        else None,
    }


# -- the daily summary -------------------------------------------------------------------------
def _date(day: int) -> date:
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date()


def latest_day(tel: Telemetry) -> date:
    """The last complete UTC day of the telemetry (an end-of-day job run just after
    midnight summarises the day before); the current day when nothing is earlier. Days
    of bar closes as the flow counts them: the close at 24:00 is the day's last."""
    last = tel.last_ts()
    if last is None:
        raise CopilotError("no health telemetry found: has the flow published anything yet?")
    day = utc_day(last)
    if last == (day + 1) * DAY_MS:  # the day's last 5m bar, closing at 24:00, is in
        return _date(day)
    first = min(h[0]["ts_event_ms"] for h in tel.health.values() if h)
    return _date(day - 1 if utc_day(first) < day else day)


def _open_position(h: dict[str, Any] | None) -> dict[str, Any] | None:
    """The position held at the day's last close, if any: the equity's change includes its
    unrealised PnL, which no closed trade's figures hold."""
    if not h or not h.get("position_qty"):
        return None
    return {
        "side": side_word(1 if h["position_qty"] > 0 else -1),
        "notional_usd": _r(abs(h["position_notional_usd"]), 2),
        "unrealized_usd": _r(h["unrealized_usd"], 2),
    }


def summary_facts(tel: Telemetry, day: date | None = None) -> dict[str, Any]:
    day = day or latest_day(tel)
    t0 = day_start_ms(day)
    t1 = t0 + DAY_MS

    def in_day(ts: int | None) -> bool:
        """Fills, costs, commands: the time they happened (as backtest/kpis.py counts)."""
        return ts is not None and t0 <= ts < t1

    def closed_in_day(ts: int) -> bool:
        """A bar close (health, signals) as the flow's daily loss limit counts it: the
        close at 24:00 is the day's last, the one at 00:00 the day before's."""
        return utc_day(ts) == t0 // DAY_MS

    symbols = []
    for sym in tel.symbols:
        health = [h for h in tel.health[sym] if closed_in_day(h["ts_event_ms"])]
        signals = [s for s in tel.signals_by_symbol[sym] if closed_in_day(s["ts_event_ms"])]
        if not health and not signals:
            continue
        trips = [t for t in tel.round_trips[sym] if in_day(t.exit["ts_event_ms"])]
        entries = [
            e
            for e in tel.executions.values()
            if e["symbol"] == sym and in_day(e["ts_event_ms"]) and e["purpose"] in ENTRY_PURPOSES
        ]
        arms = Counter((tel.orders.get(e["decision_id"]) or {}).get("arm") or "?" for e in entries)
        rejections = Counter(
            r["reason"]
            for rs in tel.rejections.values()
            for r in rs
            if r["symbol"] == sym and closed_in_day(r["ts_event_ms"])  # at its bar's close
        )
        before = tel.at_or_before(tel.health[sym], t0)  # the day before's 24:00 close
        won = [t for t in trips if is_win(t.pnl_usd)]
        wins, losses = len(won), len(trips) - len(won)
        losing = sorted((t for t in trips if not is_win(t.pnl_usd)), key=lambda t: t.pnl_usd)[:3]
        winning = max(won, key=lambda t: t.pnl_usd, default=None)
        errors = [e for e in tel.errors if e["symbol"] == sym and in_day(e["ts_event_ms"])]
        last = health[-1] if health else None
        symbols.append(
            {
                "symbol": sym,
                "bars": len(signals),
                "missing_bars": sum(1 for s in signals if s["bar"]["count"] == 0),
                "decisions": sum(1 for s in signals if s["decision"]["reason"] != "warmup"),
                "entries": len(entries),
                "entries_by_arm": [{"arm": a, "count": n} for a, n in arms.most_common()],
                "round_trips": len(trips),
                "wins": wins,
                "losses": losses,
                "win_rate": _r(wins / len(trips), 4) if trips else None,
                "pnl_usd": _r(math.fsum(t.pnl_usd for t in trips), 2),
                "fees_usd": _r(
                    math.fsum(
                        c["fee_usd"]
                        for c in tel.costs.values()
                        if c["symbol"] == sym and in_day(c["ts_event_ms"])
                    ),
                    2,
                ),
                "equity_start_usd": _r(
                    (before or (health[0] if health else {})).get("equity_usd"), 2
                ),
                "equity_end_usd": _r(last["equity_usd"], 2) if last else None,
                "max_drawdown_day": _r(max((h["drawdown"] for h in health), default=0.0), 4),
                "open_at_end": _open_position(last),
                "end_state": last["trading_state"] if last else None,
                "end_status": last["strategy_status"] if last else None,
                "halt_reason": last["halt_reason"] if last else None,
                "notable_losses": [trip_facts(tel, t) for t in losing],
                "best_trade": trip_facts(tel, winning) if winning else None,
                "rejections_by_reason": [
                    {"reason": r, "count": n} for r, n in rejections.most_common()
                ],
                "kill_switch_events": _state_changes(tel.health[sym], closed_in_day),
                "operator_commands": [
                    {"time_utc": utc_text(r["ts_event_ms"]), "command": r["command"]["command"]}
                    for r in tel.repro[sym]
                    if r["event"] == "control" and r["command"] and in_day(r["ts_event_ms"])
                ],
                "errors": len(errors),
                "errors_by_stage": [
                    {"stage": s, "count": n}
                    for s, n in Counter(e["stage"] for e in errors).most_common()
                ],
            }
        )
    if not symbols:
        raise CopilotError(
            f"no telemetry on {day.isoformat()} (UTC); the data runs to "
            f"{utc_text(tel.last_ts() or 0)}"
        )
    return {
        "kind": "daily_summary",
        "date": day.isoformat(),
        "strategy_id": tel.strategy_id,
        "symbols": symbols,
        "dead_letters": sum(
            1 for d in tel.dead_letters if in_day(d.get("ts_event_ms") or d.get("ts_init_ms"))
        ),
        "records_set_aside": tel.set_aside,
    }


def halt_changed(prev: dict[str, Any], h: dict[str, Any]) -> bool:
    """Between two health events: the trading state changed, or a kill-switch fired while
    an operator's halt was in force (HALTED both times: the reason is the news, and only
    reset_kill_switch lifts it now)."""
    if h["trading_state"] != prev["trading_state"]:
        return True
    return (
        h["trading_state"] == "HALTED"
        and is_kill_switch(h["halt_reason"])
        and not is_kill_switch(prev["halt_reason"])
    )


def _state_changes(
    health: list[dict[str, Any]], in_day: Callable[[int], bool]
) -> list[dict[str, Any]]:
    """Kill-switch halts and resumptions at the closes `in_day`, from the health stream."""
    out = []
    prev = None
    for h in health:
        state, reason = h["trading_state"], h["halt_reason"]
        if in_day(h["ts_event_ms"]) and prev is not None and halt_changed(prev, h):
            kill = is_kill_switch(reason)
            if state == "HALTED":
                event = "kill_switch_fired" if kill else "halted"
                out.append(
                    {"time_utc": utc_text(h["ts_event_ms"]), "event": event, "reason": reason}
                )
            elif prev["trading_state"] == "HALTED":
                out.append(
                    {
                        "time_utc": utc_text(h["ts_event_ms"]),
                        "event": "resumed",
                        "reason": prev["halt_reason"],
                    }
                )
        prev = h
    return out


# -- "why" ---------------------------------------------------------------------------------------
_DATE_TIME = re.compile(r"\b(\d{4}-\d{2}-\d{2})[ T](\d{1,2}):(\d{2})\b")
_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})\s*(am|pm)?\b", re.IGNORECASE)
_HOUR = re.compile(r"\b(\d{1,2})\s*(am|pm)\b", re.IGNORECASE)
_POSITION = re.compile(r"\b(short|long)\b", re.IGNORECASE)
_ORDER_SIDE = re.compile(r"\b(buy|sell|bought|sold|buying|selling)\b", re.IGNORECASE)


def _hour24(h: int, ampm: str | None, text: str) -> int:
    if ampm:
        if not 1 <= h <= 12:
            raise CopilotError(f"{text!r} is not a time")
        return h % 12 + (12 if ampm.lower() == "pm" else 0)
    return h


def _date_alone(question: str) -> date | None:
    """A date written apart from the time ("the 14:00 trade on 2024-01-04")."""
    m = _DATE.search(question)
    if m is None:
        return None
    try:
        return date.fromisoformat(m.group(1))
    except ValueError:
        raise CopilotError(f"{m.group(1)!r} is not a date") from None


def parse_time(question: str) -> tuple[date | None, int, int]:
    """(date or None, hour, minute) named in the question, UTC."""
    m = _DATE_TIME.search(question)
    if m:
        try:
            d = date.fromisoformat(m.group(1))
        except ValueError:
            raise CopilotError(f"{m.group(1)!r} is not a date") from None
        h, mi = int(m.group(2)), int(m.group(3))
    elif m := _CLOCK.search(question):
        d, mi = _date_alone(question), int(m.group(2))
        h = _hour24(int(m.group(1)), m.group(3), m.group(0))
    elif m := _HOUR.search(question):
        d, mi = _date_alone(question), 0
        h = _hour24(int(m.group(1)), m.group(2), m.group(0))
    else:
        raise CopilotError(
            "no time in the question: name one (UTC) like 14:00, 2pm or 2024-01-04 14:00, "
            "or pass --at"
        )
    if not (0 <= h <= 23 and 0 <= mi <= 59):
        raise CopilotError(f"{m.group(0)!r} is not a time of day")
    return d, h, mi


def pick_symbol(tel: Telemetry, question: str, symbol: str | None) -> str:
    if symbol:
        if symbol not in tel.symbols:
            raise CopilotError(f"no telemetry for {symbol!r}; symbols: {tel.symbols}")
        return symbol
    q = question.upper()
    named = [s for s in tel.symbols if s.upper() in q]
    named = named or [
        s for s in tel.symbols if re.search(rf"\b{re.escape(s.split('-')[0].upper())}\b", q)
    ]
    if len(named) == 1:
        return named[0]
    if len(tel.symbols) == 1:
        return tel.symbols[0]
    if "BTC-PERP" in tel.symbols:
        return "BTC-PERP"
    if not tel.symbols:
        raise CopilotError("no telemetry found: has the flow published anything yet?")
    raise CopilotError(f"which symbol? pass --symbol, one of {tel.symbols}")


def asked_time_ms(
    tel: Telemetry, symbol: str, question: str, at: str | None, day: date | None
) -> int:
    """The asked moment: --at, else the question's time on its date, --date, or the most
    recent day on which that time is covered by the telemetry."""
    if at:
        try:
            dt = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
        except ValueError:
            raise CopilotError(f"--at {at!r} is not an ISO time like 2024-01-04T14:00") from None
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)
    qday, h, mi = parse_time(question)
    offset = (h * 60 + mi) * 60_000
    day = qday or day
    if day is not None:
        return day_start_ms(day) + offset
    last = tel.last_ts(symbol)
    if last is None:
        raise CopilotError(f"no telemetry for {symbol}")
    t = day_start_ms(datetime.fromtimestamp(last / 1000, UTC).date()) + offset
    return t if t <= last else t - DAY_MS


def _position_side(order: dict[str, Any]) -> int:
    """The position a decision is about: entries by their side, exits by what they closed."""
    d = 1 if order["side"] == "buy" else -1
    return d if order["purpose"] in ENTRY_PURPOSES else -d


def _mismatch(order: dict[str, Any], question: str) -> int:
    """How many of the question's premises (a long/short position, a buy/sell) the order
    contradicts: 0 when it is the kind of trade asked about."""
    wrong = 0
    if m := _POSITION.search(question):
        wrong += _position_side(order) != (1 if m.group(1).lower() == "long" else -1)
    if m := _ORDER_SIDE.search(question):
        side = "buy" if m.group(1).lower().startswith(("buy", "bought")) else "sell"
        wrong += order["side"] != side
    return wrong


def find_trade(tel: Telemetry, symbol: str, at_ms: int, question: str) -> str | None:
    """The decision id of the order intent nearest `at_ms` (within an hour). A position
    (long, short) or order side (buy, sell) named in the question is preferred, then the
    nearer decision, then the earlier one."""
    best = None
    for did, o in tel.orders.items():
        dist = abs(o["ts_event_ms"] - at_ms)
        if o["symbol"] != symbol or dist > MATCH_WINDOW_MS:
            continue
        mismatch = _mismatch(o, question)
        rank = (mismatch, dist, o["ts_event_ms"] > at_ms)
        if best is None or rank < best[0]:
            best = (rank, did)
    return best[1] if best else None


def decision_facts(
    tel: Telemetry, sig: dict[str, Any], order_id: str | None = None
) -> dict[str, Any]:
    """Everything logged about one decision bar (and `order_id`, or the bar's own order),
    allow-listed field by field."""
    d, sym, ts = sig["decision"], sig["symbol"], sig["ts_event_ms"]
    bar_did = d["decision_id"]
    did = order_id or next(iter(tel.orders_of.get(bar_did, [])), bar_did)
    elig = d["eligible"]
    facts: dict[str, Any] = {
        "decision": {
            "time_utc": utc_text(ts),
            "action": d["action"],
            "reason": d["reason"],
            "chosen_arm": d["chosen_arm"],
            "eligible_arms": [a for a, ok in elig.items() if ok],
            "ineligible_arms": [a for a, ok in elig.items() if not ok],
            "bandit_samples_bps": [
                {"arm": a, "bps": _r(v, 3)} for a, v in sorted(d["samples"].items())
            ],
            "direction": d["direction"],
            "side": side_word(d["direction"]),
            "alpha": _r(d["alpha"]),
            "conf_min": _r(d["conf_min"]),
            "target_position": _r(d["target_position"]),
            "vol_scale": _r(d["vol_scale"]),
            "shadow_would_veto": list(d["would_veto"]),
            "exit": d["exit"],
            "trading_state": sig["trading_state"],
            "shadow_mode": sig["shadow"],
        },
        "model": None
        if sig["model"] is None
        else {
            k: _r(sig["model"][k])
            for k in ("p_up", "p_down", "conf", "alpha", "s_model_meta", "s_model_bma")
        },
        "cohort": {
            "s_top": _r(sig["cohort"]["s_top"]),
            "s_bot": _r(sig["cohort"]["s_bot"]),
            "s_mood": _r(sig["cohort"]["s_mood"]),
            "stale": sig["cohort"]["stale"],
        },
        "features": None
        if sig["features"] is None
        else {k: _r(sig["features"][k]) for k in FEATURES_SHOWN if k in sig["features"]},
        "thresholds": tel.thresholds_at(sym, ts),
    }
    proxy = sig.get("size_proxy")  # absent (files) or null (Kafka) when the proxy is off
    if proxy is not None:
        facts["size_proxy"] = {
            "s_top": _r(proxy["s_top"]),
            "s_bot": _r(proxy["s_bot"]),
            "top_group": proxy["top_group"],
            "large_min_usd": _r(proxy["large_min_usd"], 2),
        }
    ens = tel.ensemble.get((sym, ts))
    if ens is not None:
        facts["overlays"] = [
            {
                "timeframe": tf["timeframe"],
                "trend": _r(tf["trend"]),
                "stale": tf["stale"],
                "missing": tf["missing"],
                "ext_signal": _r(tf["ext_signal"]),
                "ext_confidence": _r(tf["ext_confidence"]),
            }
            for tf in ens["timeframes"]
            if tf["timeframe"] != "5m"
        ]
        facts["agreeing_overlays"] = ens["combined"]["agreeing_overlays"]
        facts["usable_overlays"] = ens["combined"]["usable_overlays"]
    order = tel.orders.get(did)
    if order is not None:
        facts["order"] = {
            "side": order["side"],
            "qty": _r(order["qty"], 8),
            "notional_usd": _r(order["notional_usd"], 2),
            "purpose": order["purpose"],
            "arm": order["arm"],
            "target_position": _r(order["target_position"]),
            "position_before": _r(order["position_qty"], 8),
            "dry_run": order["dry_run"],
        }
    ex = tel.executions.get(did)
    facts["execution"] = (
        None
        if ex is None
        else {
            "time_utc": utc_text(ex["ts_event_ms"]),
            "status": ex["status"],
            "side": ex["side"],
            "fill_px": _r(ex["fill_px"], 2),
            "ref_px": _r(ex["ref_px"], 2),
            "slippage_bps": _r(ex["slippage_bps"], 2),
            "fee_usd": _r(ex["fee_usd"], 4),
        }
    )
    facts["rejections"] = [
        {"stage": r["stage"], "reason": r["reason"], "detail": r["detail"]}
        for r in tel.rejections.get(bar_did, [])
        + (tel.rejections.get(did, []) if did != bar_did else [])
    ]
    h = tel.health_at(sym, ts)
    facts["risk"] = (
        None
        if h is None
        else {
            "equity_usd": _r(h["equity_usd"], 2),
            "drawdown": _r(h["drawdown"], 5),
            "max_drawdown": _r(h["max_drawdown"], 5),
            "consecutive_losses": h["consecutive_losses"],
            "trading_state": h["trading_state"],
            "halt_reason": h["halt_reason"],
            "strategy_status": h["strategy_status"],
            "position_qty": _r(h["position_qty"], 8),
        }
    )
    trip = tel.trip_of(did)
    if order is not None and trip is not None:
        tf = trip_facts(tel, trip)
        if trip.exit["decision_id"] == did and order["purpose"] not in ENTRY_PURPOSES:
            facts["opened_by"] = tf
            facts["outcome"] = {
                "status": "closed",
                "pnl_usd": tf["pnl_usd"],
                "won": is_win(trip.pnl_usd),
            }
        else:
            facts["outcome"] = {
                "status": "closed",
                "closed_utc": tf["closed_utc"],
                "closed_by": tf["closed_by"],
                "exit_px": _r(trip.exit["fill_px"], 2),
                "pnl_usd": tf["pnl_usd"],
                "won": is_win(trip.pnl_usd),
                "held_bars": tf["held_bars"],
            }
    elif order is not None:
        rej = facts["rejections"]
        facts["outcome"] = (
            {"status": "open"}
            if ex is not None
            else {"status": "not filled", "reason": rej[-1]["reason"] if rej else "pending"}
        )
    facts["nearby_trades"] = [
        {
            "time_utc": utc_text(o["ts_event_ms"]),
            "side": o["side"],
            "purpose": o["purpose"],
            "arm": o["arm"],
        }
        for o in sorted(tel.orders.values(), key=lambda o: o["ts_event_ms"])
        if o["symbol"] == sym
        and o["decision_id"] != did
        and abs(o["ts_event_ms"] - ts) <= NEARBY_MS
    ][:8]
    return facts


def why_facts(
    tel: Telemetry,
    question: str,
    symbol: str | None = None,
    day: date | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    sym = pick_symbol(tel, question, symbol)
    at_ms = asked_time_ms(tel, sym, question, at, day)
    did = find_trade(tel, sym, at_ms, question)
    if did is None and at is None and day is None and parse_time(question)[0] is None:
        # "the 14:00 trade" with no date: the most recent day that had one around 14:00
        offset = at_ms % DAY_MS
        days = sorted({o["ts_event_ms"] // DAY_MS for o in tel.orders.values()}, reverse=True)
        for d in days:
            did = find_trade(tel, sym, d * DAY_MS + offset, question)
            if did is not None:
                at_ms = d * DAY_MS + offset
                break
    base = {
        "kind": "why",
        "question": question,
        "symbol": sym,
        "strategy_id": tel.strategy_id,
        "asked_time_utc": utc_text(at_ms),
    }
    if did is not None and decision_of(did) in tel.signals:
        order = tel.orders[did]
        if _mismatch(order, question):  # answer the question asked, not a convenient one
            base["premise"] = (
                f"no trade of the kind asked about for {sym} within "
                f"{MATCH_WINDOW_MS // 60_000} minutes of {utc_text(at_ms)} UTC; the nearest "
                f"trade decision ({order['side']}, {order['purpose']}) is explained instead"
            )
        return {**base, **decision_facts(tel, tel.signals[decision_of(did)], did)}
    sigs = tel.signals_by_symbol[sym]
    sig = tel.at_or_before(sigs, at_ms) or (sigs[0] if sigs else None)
    if sig is None:
        raise CopilotError(f"no decisions logged for {sym}")
    note = (
        f"no trade decision for {sym} within {MATCH_WINDOW_MS // 60_000} minutes of "
        f"{utc_text(at_ms)} UTC; the facts are the decision of the bar closing at "
        f"{utc_text(sig['ts_event_ms'])}"
    )
    if did is not None:  # an order without its signals record (retention): say so
        note = f"the signals record of decision {did} is missing; " + note
    return {**base, "note": note, **decision_facts(tel, sig)}
