"""The copilot: `python -m consumers.copilot summary [--date D]` and
`python -m consumers.copilot ask "why was the 14:00 trade short?"` (SPEC 9).

Reads the flow's telemetry from Kafka, from the beginning of the topics to their end,
then stops (or from a directory of the flow's JSON-lines files with --from-dir).
Republished records (the flow writes at least once) are dropped by decision id, so a
trade is never counted twice. From the records it builds facts:

- summary: per symbol for one UTC day, round trips, wins, losses, PnL, equity,
  drawdown, entries by arm, notable losses with the model's confidence at entry,
  rejections by reason, kill-switch events and operator commands, errors;
- ask: the trade decision nearest the time in the question (UTC), its signals, model
  output, cohorts, overlays, gates and vetoes, chosen arm, thresholds, risk state,
  order, execution and outcome (round-trip PnL when closed).

The facts are built in consumers/facts.py; this module puts them into words and runs the
command. With ENSEMBLE_LLM_BASE_URL set, the facts (allow-listed and redacted,
consumers/llm.py) and the question go to an OpenAI-compatible chat-completions endpoint,
told to answer from the facts only; otherwise, or if the endpoint fails, a deterministic
answer is written from the same facts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from consumers import halts, llm
from consumers.facts import (
    ENTRY_PURPOSES,
    STREAMS,
    CopilotError,
    Telemetry,
    count,
    parse_time,
    pick_symbol,
    side_word,
    summary_facts,
    utc_text,
    why_facts,
)
from consumers.stream import KafkaSettings, Record, TopicsMissing, read_to_end
from dataflows.environment import environ
from operators.config import ConfigError
from operators.gating import COHORT_ARMS, PROXY_ARMS
from operators.redaction import scrub
from schemas import codec

__all__ = [
    "STREAMS",
    "CopilotError",
    "KafkaSettings",
    "Telemetry",
    "ask",
    "main",
    "parse_time",
    "read_to_end",
    "records_from_dir",
    "render_summary",
    "render_why",
    "summary",
    "summary_facts",
    "utc_text",
    "why_facts",
]


# -- the summary in words ------------------------------------------------------------------------
def _money(x: float | None) -> str:
    return "?" if x is None else f"{x:+,.2f} USD"


def _trip_text(t: dict[str, Any]) -> str:
    opened = f"opened {t['opened_utc'][11:]}" if t["opened_utc"] else "opened before the data"
    conf = ""
    if t["confidence"] is not None:
        conf = (
            f" at {t['confidence']:.0%} model confidence ({t['prob_side_traded']:.0%} for the "
            "side traded)"
        )
    arm = f", {t['arm']} arm" if t["arm"] else ""
    return (
        f"a {t['side']} {opened}{arm}{conf}, closed {t['closed_utc'][11:]} by "
        f"{t['closed_by']} for {_money(t['pnl_usd'])}"
    )


def render_summary(f: dict[str, Any]) -> str:
    parts = [f"{f['date']} (UTC), strategy {f['strategy_id']}, paper trading."]
    for s in f["symbols"]:
        if s["round_trips"]:
            trades = (
                f"{count(s['round_trips'], 'trade', 'trades')} closed, "
                f"{count(s['wins'], 'win', 'wins')}, {count(s['losses'], 'loss', 'losses')} "
                f"({s['win_rate']:.0%} won), net {_money(s['pnl_usd'])} after fees and funding"
            )
        else:
            trades = "no trades closed"
        eq = ""
        if s["equity_start_usd"] is not None and s["equity_end_usd"] is not None:
            eq = (
                f"; equity {s['equity_start_usd']:,.2f} -> {s['equity_end_usd']:,.2f} USD, "
                f"max drawdown {s['max_drawdown_day']:.2%}"
            )
        arms = ", ".join(f"{a['arm']} {a['count']}" for a in s["entries_by_arm"])
        text = (
            f"{s['symbol']}: {trades}{eq}. {count(s['entries'], 'entry', 'entries')}"
            + (f" (by arm: {arms})" if arms else "")
            + f" from {s['decisions']} decisions over {s['bars']} bars"
            + (f", {s['missing_bars']} of them missing" if s["missing_bars"] else "")
            + f"; fees {s['fees_usd']:,.2f} USD."
        )
        if s["notable_losses"]:
            text += " Notable losses: " + "; ".join(_trip_text(t) for t in s["notable_losses"])
            text += "."
        if s["best_trade"]:
            text += f" Best trade: {_trip_text(s['best_trade'])}."
        if s["rejections_by_reason"]:
            text += " Rejections by reason: " + ", ".join(
                f"{r['reason']} {r['count']}" for r in s["rejections_by_reason"]
            )
            text += "."
        ks = s["kill_switch_events"]
        text += (
            " Kill-switch: "
            + (
                "; ".join(f"{e['event']} at {e['time_utc'][11:]} ({e['reason']})" for e in ks)
                if ks
                else "none fired"
            )
            + "."
        )
        if s["operator_commands"]:
            text += " Operator commands: " + ", ".join(
                f"{c['command']} at {c['time_utc'][11:]}" for c in s["operator_commands"]
            )
            text += "."
        if s["errors"]:
            text += (
                f" Errors: {s['errors']} ("
                + ", ".join(f"{e['stage']} {e['count']}" for e in s["errors_by_stage"])
                + ")."
            )
        if held := s.get("open_at_end"):
            text += (
                f" Open at the end of the day: a {held['side']} of {held['notional_usd']:,.2f} "
                f"USD, unrealised {_money(held['unrealized_usd'])} (in the equity, in no "
                "trade's figures)."
            )
        why = f", {s['halt_reason']}" if s["halt_reason"] else ""
        text += f" State at the end of the day: {s['end_state']} ({s['end_status']}{why})."
        parts.append(text)
    if f["dead_letters"]:
        parts.append(f"{f['dead_letters']} input messages went to the dead-letter topic.")
    if f.get("records_set_aside"):
        parts.append(
            f"Left out: {f['records_set_aside']} telemetry record(s) with a NaN, infinite or "
            "impossible value (the copilot's warnings name them); the figures above may miss "
            "what they held."
        )
    return "\n".join(parts)


# -- "why" in words ----------------------------------------------------------------------------
def _proxy_groups(f: dict[str, Any]) -> tuple[str, str] | None:
    """(pros' stand-in, amateurs' stand-in) among the size proxy's groups, if ranked."""
    top = (f.get("size_proxy") or {}).get("top_group")
    if top is None:
        return None
    return (f"{top} prints", f"{'small' if top == 'large' else 'large'} prints")


def _proxy_signal(arm: str, f: dict[str, Any]) -> tuple[str, float | None]:
    """How the copilot names a size-proxy arm's signal: always as the proxy it is."""
    p = f.get("size_proxy") or {}
    groups = _proxy_groups(f)
    which = 0 if arm == "pros_size_proxy" else 1
    group = f" ({groups[which]})" if groups else " (size groups not ranked yet)"
    name = ("S_top" if which == 0 else "S_bot") + " of the trade-size proxy" + group
    return name, p.get("s_top" if which == 0 else "s_bot")


def _arm_reason(arm: str, f: dict[str, Any]) -> str:
    th, model, coh = f.get("thresholds") or {}, f.get("model") or {}, f["cohort"]
    d = f["decision"]
    if arm in ("pros", "amateurs"):
        name, v = ("S_top", coh["s_top"]) if arm == "pros" else ("S_bot", coh["s_bot"])
        return f"{name} {v:+.3f} vs S_MIN {th.get('S_MIN', '?')}"
    if arm in PROXY_ARMS:
        name, v = _proxy_signal(arm, f)
        if v is None or _proxy_groups(f) is None:
            return f"{name}"
        return f"{name} {v:+.3f} vs S_MIN {th.get('S_MIN', '?')}"
    conf_min = d["conf_min"] if d["conf_min"] is not None else th.get("CONF_MIN", "?")
    if not model:
        return "no model output"
    return (
        f"confidence {model['conf']:.1%} vs CONF_MIN {conf_min:.0%}, alpha {model['alpha']:.3f} "
        f"vs ALPHA_MIN {th.get('ALPHA_MIN', '?')}"
        if isinstance(conf_min, float)
        else f"confidence {model['conf']:.1%}, alpha {model['alpha']:.3f}"
    )


def _why_side(f: dict[str, Any]) -> str:
    d, model, coh = f["decision"], f.get("model") or {}, f["cohort"]
    arm = d["chosen_arm"]
    text = ""
    if arm is not None:
        signal_of = {
            "pros": ("the top cohort's flow S_top", coh["s_top"]),
            "amateurs": ("the bottom cohort's flow S_bot", coh["s_bot"]),
            "model_meta": ("the model signal s_model_meta", model.get("s_model_meta")),
            "model_bma": ("the model signal s_model_bma", model.get("s_model_bma")),
        }
        name, v = signal_of[arm] if arm in signal_of else _proxy_signal(arm, f)
        elig = ", ".join(d["eligible_arms"]) or "none"
        samples = ", ".join(f"{s['arm']} {s['bps']:+.1f}" for s in d["bandit_samples_bps"])
        text = (
            f"The Thompson bandit chose the {arm} arm among the eligible arms ({elig}; sampled "
            f"rewards in bps: {samples})."
        )
        if v is not None and d["direction"]:
            text += (
                f" Its signal, {name} = {v:+.3f}, is {'negative' if v < 0 else 'positive'}, "
                f"so the direction is {side_word(d['direction'])}."
            )
        elif v is not None:
            text += f" Its signal, {name} = {v:+.3f}, is below its side threshold: no trade."
    if d["ineligible_arms"]:
        groups: dict[str, list[str]] = {}
        for a in d["ineligible_arms"]:
            groups.setdefault(_arm_reason(a, f), []).append(a)
        text += (
            (" Not eligible: " if arm is not None else " No arm was eligible: ")
            + "; ".join(f"{' and '.join(arms)} ({why})" for why, arms in groups.items())
            + "."
        )
    if model and arm in COHORT_ARMS and d["direction"]:
        p_side = model["p_up"] if d["direction"] > 0 else model["p_down"]
        agrees = "agreed" if p_side > 0.5 else "disagreed"
        text += (
            f" The model {agrees}: p_up {model['p_up']:.1%}, p_down {model['p_down']:.1%} "
            f"({p_side:.1%} for the side traded, confidence {model['conf']:.1%})."
        )
    elif model:
        text += (
            f" Model: p_up {model['p_up']:.1%}, p_down {model['p_down']:.1%}, confidence "
            f"{model['conf']:.1%}, alpha {model['alpha']:.3f}."
        )
    return text.strip()


def _gates_text(f: dict[str, Any]) -> str:
    d, th = f["decision"], f.get("thresholds") or {}
    rej = f["rejections"]
    gate_rej = [r for r in rej if r["stage"] in ("gate", "risk")]
    if gate_rej:
        exit_order = (f.get("order") or {}).get("purpose") not in (None, *ENTRY_PURPOSES)
        text = (
            ("A new entry at this bar was vetoed: " if exit_order else "Vetoed: ")
            + "; ".join(f"{r['reason']} ({r['detail']})" for r in gate_rej)
            + "."
        )
    elif d["action"] == "trade":
        checks = []
        if d["chosen_arm"] in COHORT_ARMS and th.get("low_conf_veto") not in (None, "off"):
            checks.append(
                f"the low-confidence veto (cohort arms below {th['low_conf_min']:.0%} model "
                f"confidence, {th['low_conf_veto']}) let it pass"
            )
        if th.get("consensus_gate") not in (None, "off"):
            trend = next(
                (o for o in f.get("overlays", []) if o["timeframe"] == "1h"),
                None,
            )
            where = (
                f"1h trend {trend['trend']:+.3%}" + (" (stale)" if trend["stale"] else "")
                if trend
                else "no 1h overlay"
            )
            checks.append(
                f"the 1h consensus gate ({th['consensus_gate']}, threshold "
                f"{th['consensus_trend_min']:.2%}) did not object: {where}"
            )
        text = "No gate vetoed it" + (": " + "; ".join(checks) if checks else "") + "."
    else:
        text = ""
    if d["shadow_would_veto"]:
        text += (
            " In shadow mode these guards would have vetoed: "
            + "; ".join(d["shadow_would_veto"])
            + "."
        )
    return text.strip()


def _overlays_text(f: dict[str, Any]) -> str:
    ovs = f.get("overlays")
    if not ovs:
        return ""
    parts = []
    for o in ovs:
        state = "missing" if o["missing"] else "stale" if o["stale"] else f"{o['trend']:+.3%}"
        ext = (
            f", external signal {o['ext_signal']:+.2f} at {o['ext_confidence']:.0%}"
            if o["ext_confidence"]
            else ""
        )
        parts.append(f"{o['timeframe']} trend {state}{ext}")
    agree = f"; {f['agreeing_overlays']} of {f['usable_overlays']} usable overlays agreed"
    return "Overlays: " + ", ".join(parts) + (agree if f["decision"]["direction"] else "") + "."


def _risk_text(f: dict[str, Any]) -> str:
    r, d, feats = f.get("risk"), f["decision"], f.get("features") or {}
    bits = []
    if d["target_position"] is not None:
        bits.append(f"target position {d['target_position']:+.2%} of base notional")
    if d["vol_scale"] is not None and "rv_annual" in feats:
        bits.append(
            f"realised vol {feats['rv_annual']:.0%} annualised -> vol scale {d['vol_scale']:.2f}"
        )
    if r:
        bits.append(
            f"state {r['trading_state']} ({r['strategy_status']}), equity "
            f"{r['equity_usd']:,.2f} USD, drawdown {r['drawdown']:.2%}, "
            f"consecutive losses {r['consecutive_losses']}"
        )
    return ("Risk: " + "; ".join(bits) + ".") if bits else ""


def _outcome_text(f: dict[str, Any]) -> str:
    ex, out = f.get("execution"), f.get("outcome")
    text = ""
    if ex:
        text = (
            f"Filled {ex['time_utc'][11:]} at {ex['fill_px']:,.2f} (bar open {ex['ref_px']:,.2f}, "
            f"slippage {ex['slippage_bps']:.1f} bps, fee {ex['fee_usd']:.2f} USD)."
        )
    if not out:
        return text
    if "opened_by" in f:
        o = f["opened_by"]
        opened = f"opened {o['opened_utc']} UTC" if o["opened_utc"] else "opened before the data"
        conf = f" at {o['confidence']:.0%} model confidence" if o["confidence"] is not None else ""
        arm = f" by the {o['arm']} arm" if o["arm"] else ""
        text += (
            f" It closed the {o['side']} {opened}{arm}{conf}, held {o['held_bars']} bars: "
            f"{_money(o['pnl_usd'])} net ({'won' if out['won'] else 'lost'})."
        )
    elif out["status"] == "closed":
        text += (
            f" Closed {out['closed_utc']} UTC by {out['closed_by']} at {out['exit_px']:,.2f} "
            f"after {out['held_bars']} bars: {_money(out['pnl_usd'])} net "
            f"({'won' if out['won'] else 'lost'})."
        )
    elif out["status"] == "open":
        text += " The position was still open at the end of the data."
    else:
        text += f" Not filled: {out['reason']}."
    return text.strip()


def render_why(f: dict[str, Any]) -> str:
    d, sym = f["decision"], f["symbol"]
    order = f.get("order")
    base = sym.split("-")[0]
    head = f"{sym}, decision at {d['time_utc']} UTC (asked about {f['asked_time_utc']}): "
    if "premise" in f:
        head = f"{f['premise'][0].upper()}{f['premise'][1:]}. " + head
    if "note" in f:
        head = f"{f['note'][0].upper()}{f['note'][1:]}. "
        near = f.get("nearby_trades") or []
        if near:
            head += (
                "Trades nearby: "
                + ", ".join(f"{n['time_utc'][11:]} {n['side']} {n['purpose']}" for n in near)
                + ". "
            )
        head += f"At {d['time_utc'][11:]} the decision was {d['action']} ({d['reason']}). "
    if order is not None:
        pos = "short" if order["side"] == "sell" else "long"
        if order["purpose"] in ENTRY_PURPOSES:
            head += (
                f"the strategy went {pos.upper()}: a {order['side']} of {order['qty']:.6g} {base} "
                f"({order['notional_usd']:,.2f} USD notional, {order['purpose']}"
                + (", paper" if order["dry_run"] else "")
                + ")."
            )
        else:
            closed = "long" if order["side"] == "sell" else "short"
            head += (
                f"the strategy closed its {closed} position ({order['purpose']}): a "
                f"{order['side']} of {order['qty']:.6g} {base}."
            )
    parts = [head.strip()]
    if order is None or order["purpose"] in ENTRY_PURPOSES:
        parts.append(_why_side(f))
    elif order["purpose"] == "time_exit":
        hold = (f.get("thresholds") or {}).get("max_hold_bars", "the maximum")
        parts.append(f"A position is closed after {hold} bars (the bandit's reward horizon).")
    elif order["purpose"] == "kill_switch_flatten":
        r = f.get("risk") or {}
        parts.append(f"A kill-switch had halted trading ({r.get('halt_reason', '?')}).")
    parts += [_overlays_text(f), _gates_text(f), _risk_text(f), _outcome_text(f)]
    return " ".join(p for p in parts if p)


def render_halt(f: dict[str, Any]) -> str:
    h, r, lim, sym = f["halt"], f["risk"], f.get("limits") or {}, f["symbol"]
    if h["kill_switch"]:
        limit = {
            "consecutive_losses": f"more than {lim.get('max_consecutive_losses', '?')} losing "
            "round trips in a row",
            "drawdown_limit": f"drawdown from peak above {lim.get('max_drawdown_limit', '?')}",
            "daily_loss_limit": f"a day's loss above {lim.get('daily_loss_limit', '?')} of "
            "start-of-day equity",
        }.get(h["reason"].split(":")[0], h["reason"])
        head = (
            f"{sym} stopped trading because the kill-switch {h['reason']} fired at "
            f"{h['time_utc']} UTC (the limit: {limit})."
        )
    else:
        head = (
            f"{sym} stopped trading at {h['time_utc']} UTC: halted by {h['reason'] or '?'} "
            "(an operator's halt, not a kill-switch)."
        )
    text = [
        head,
        f"Then: equity {r['equity_usd']:,.2f} USD, drawdown {r['drawdown']:.2%} (max "
        f"{r['max_drawdown']:.2%}), "
        f"{count(r['consecutive_losses'], 'losing trade', 'losing trades')} in a row.",
    ]
    if f["losing_trades"]:
        text.append(
            "The losing run before it: "
            + "; ".join(_trip_text(t) for t in f["losing_trades"])
            + "."
        )
    if h["flattened_utc"]:
        text.append(f"The position was flattened at {h['flattened_utc']} UTC.")
    text.append(
        f"Trading resumed at {h['resumed_utc']} UTC after an operator's reset_kill_switch."
        if h["resumed_utc"] and h["kill_switch"]
        else f"Trading resumed at {h['resumed_utc']} UTC."
        if h["resumed_utc"]
        else "It was still halted at the end of the data; it stays halted until an operator "
        "sends reset_kill_switch."
    )
    return " ".join(text)


# -- loading and answering --------------------------------------------------------------------
def records_from_dir(path: Path) -> list[Record]:
    """The flow's JSON-lines outputs (`make run` writes them to out/)."""
    if not path.is_dir():
        raise CopilotError(f"--from-dir {str(path)!r} is not a directory")
    out: list[Record] = []
    for stream in STREAMS:
        f = path / f"{stream}.jsonl"
        if not f.is_file():
            continue
        with f.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    out.append((stream, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise CopilotError(f"{f}:{n} is not JSON: {e}") from None
    if not out:
        raise CopilotError(f"no telemetry files (<stream>.jsonl) in {path}")
    return out


def file_record_problem(stream: str, rec: dict[str, Any]) -> str | None:
    """A JSON-lines record that does not match its stream's schema: the flow writes NaN as
    null, and a file may come from another version of the flow."""
    name = codec.STREAM_SCHEMAS[stream]
    try:
        codec.check(name, codec.with_defaults(name, rec))
    except codec.SchemaError as e:
        return str(e)[:300]
    return None


@dataclass
class Answer:
    text: str
    source: str  # "llm" or "deterministic"
    facts: dict[str, Any]
    llm_error: str | None = None


def answer(
    facts: dict[str, Any], question: str, llm_cfg: llm.LLMConfig | None, fallback: str
) -> Answer:
    if llm_cfg is None:
        return Answer(fallback, "deterministic", facts)
    try:
        return Answer(llm.complete(llm_cfg, facts, question), "llm", facts)
    except llm.LLMError as e:
        return Answer(fallback, "deterministic", facts, str(e))


def summary(tel: Telemetry, day: date | None, llm_cfg: llm.LLMConfig | None) -> Answer:
    facts = summary_facts(tel, day)
    q = (
        f"Write the end-of-day summary for {facts['date']} (UTC) for the portfolio manager: "
        "trades, wins, losses, PnL, notable losses and the confidence behind them, "
        "rejections, kill-switch events."
    )
    return answer(facts, q, llm_cfg, render_summary(facts))


def ask(
    tel: Telemetry,
    question: str,
    llm_cfg: llm.LLMConfig | None,
    symbol: str | None = None,
    day: date | None = None,
    at: str | None = None,
) -> Answer:
    if halts.is_halt_question(question):
        facts = halts.halt_facts(tel, question, symbol, at)
        return answer(facts, question, llm_cfg, render_halt(facts))
    if at is None and halts.is_last_trade_question(question):
        facts = halts.last_trade_facts(tel, question, _named_symbol(tel, question, symbol))
        return answer(facts, question, llm_cfg, render_why(facts))
    facts = why_facts(tel, question, symbol, day, at)
    return answer(facts, question, llm_cfg, render_why(facts))


def _named_symbol(tel: Telemetry, question: str, symbol: str | None) -> str | None:
    """--symbol or the one symbol the question names; None: any symbol."""
    if symbol or len(tel.symbols) <= 1:
        return symbol or (tel.symbols[0] if tel.symbols else None)
    try:
        named = pick_symbol(tel, question, None)
    except CopilotError:
        return None
    return named if named.split("-")[0].upper() in question.upper() else None


def _date_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2024-01-04") from None


def _add_common(p: argparse.ArgumentParser, env: Mapping[str, str], sub: bool) -> None:
    """The options every command takes. On a subcommand they default to nothing (SUPPRESS),
    so that the same option placed before the subcommand is not overwritten by a default."""

    def dflt(value: Any) -> Any:
        return argparse.SUPPRESS if sub else value

    dest = (lambda n: f"sub_{n}") if sub else (lambda n: n)
    p.add_argument(
        "--bootstrap", dest=dest("bootstrap"), default=dflt(env.get("ENSEMBLE_KAFKA_BOOTSTRAP"))
    )
    p.add_argument(
        "--prefix", dest=dest("prefix"), default=dflt(env.get("ENSEMBLE_TOPIC_PREFIX", "ensemble"))
    )
    p.add_argument(
        "--from-dir",
        dest=dest("from_dir"),
        type=Path,
        default=dflt(None),
        help="read the flow's JSON-lines files instead",
    )
    p.add_argument(
        "--strategy",
        dest=dest("strategy"),
        default=dflt(None),
        help="strategy id, when the topics hold several",
    )
    p.add_argument(
        "--date",
        dest=dest("date"),
        type=_date_arg,
        default=dflt(None),
        help="UTC day, e.g. 2024-01-04",
    )
    p.add_argument(
        "--no-llm",
        dest=dest("no_llm"),
        action="store_true",
        default=dflt(False),
        help="the deterministic answer only",
    )
    p.add_argument(
        "--show-facts",
        dest=dest("show_facts"),
        action="store_true",
        default=dflt(False),
        help="print the facts the LLM would get",
    )


COMMON = ("bootstrap", "prefix", "from_dir", "strategy", "date", "no_llm", "show_facts")


def _merge_common(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An option after the subcommand counts as if given before it; given in both places
    with different values it is refused, never silently one of them."""
    for name in COMMON:
        sub = f"sub_{name}"
        if not hasattr(args, sub):
            continue
        value, before = getattr(args, sub), getattr(args, name)
        default = ap.get_default(name)
        if before != default and before != value:
            ap.error(f"--{name.replace('_', '-')} given twice ({before} and {value}); give it once")
        setattr(args, name, value)
        delattr(args, sub)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:  # the ENSEMBLE_CONFIG file under the environment; unknown ENSEMBLE_* names refused
        env = environ(env)
    except ConfigError as e:
        print(f"copilot: cannot start: {e}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(
        prog="python -m consumers.copilot", description=__doc__.splitlines()[0]
    )
    _add_common(ap, env, sub=False)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="the day in one paragraph per symbol")
    _add_common(s, env, sub=True)
    q = sub.add_parser(
        "ask",
        help='e.g. "why was the 14:00 trade short?", "why was the last trade short?", '
        '"why did we stop trading at 21:25?"',
    )
    _add_common(q, env, sub=True)
    q.add_argument("question")
    q.add_argument("--symbol")
    q.add_argument("--at", help="the time asked about, ISO (UTC), instead of the question's")
    try:
        args = ap.parse_args(argv)
        _merge_common(ap, args)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(
        level=env.get("ENSEMBLE_LOG_LEVEL", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # the Kafka client's timing warnings are noise for a one-shot command
    logging.getLogger("kafka").setLevel(max(logging.getLogger().level, logging.ERROR))
    try:
        llm_cfg = None if args.no_llm else llm.LLMConfig.from_env(env)
        check = None
        if args.from_dir is not None:
            source = f"files in {args.from_dir}"
            records: Iterable[Record] = records_from_dir(args.from_dir)
            check = file_record_problem  # Kafka's records were checked by their Avro decoding
        else:
            kafka = KafkaSettings.from_values(args.bootstrap, args.prefix)
            source = f"Kafka {kafka.bootstrap}, topics {kafka.prefix}.*"
            records = read_to_end(kafka, STREAMS)
        tel = Telemetry(records, args.strategy, check)
        aside = f", {tel.set_aside} unusable records set aside" if tel.set_aside else ""
        print(
            f"copilot: {tel.count} telemetry records from {source} "
            f"({tel.duplicates} republished duplicates dropped{aside})",
            file=sys.stderr,
        )
        if args.command == "summary":
            ans = summary(tel, args.date, llm_cfg)
        else:
            ans = ask(tel, args.question, llm_cfg, args.symbol, args.date, args.at)
    except (CopilotError, ValueError, TopicsMissing, ConnectionError, TimeoutError) as e:
        print(f"copilot: {e}", file=sys.stderr)
        return 2
    if args.show_facts:
        print(json.dumps(llm.sanitize(ans.facts), indent=1, sort_keys=True))
    if ans.llm_error:
        print(
            f"copilot: the LLM endpoint failed ({ans.llm_error}); the deterministic answer follows",
            file=sys.stderr,
        )
    elif ans.source == "llm" and llm_cfg is not None:
        print(f"copilot: answered by {llm_cfg.model} at {llm_cfg.host}", file=sys.stderr)
    else:
        why = "--no-llm" if args.no_llm else f"{llm.ENV_BASE_URL} unset"
        print(f"copilot: deterministic answer ({why})", file=sys.stderr)
    print(scrub(ans.text, addresses=True))  # it quotes records: halt reasons, errors
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
