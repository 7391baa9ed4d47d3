"""The alerts consumer: `python -m consumers.alerts` (SPEC 9).

Follows the flow's telemetry as a kafka-python consumer group and raises an alert for:

- kill_switch (health): a symbol becomes HALTED by a kill-switch; resolved when ACTIVE
  again.
- drawdown_breach (health): drawdown from peak crosses `drawdown_breach`; re-arms below.
- error_event (errors): the flow published an error record.
- heartbeat_missing (a timer of elapsed time): no health event for more than
  `heartbeat_missed_intervals` x `heartbeat_interval_s`; resolved when one arrives.
- consecutive_losses (executions): `consecutive_losses` or more losing round trips in a
  row.
- low_confidence_trade (signals): a trade while recent confidence is below
  `low_conf_threshold`.
- large_slippage (executions): a fill's slippage is over `slippage_bps`.

"Confidence" as the model reports it, max(p_up, p_down), is never below 50%; the
low-confidence rule therefore uses the model's probability for the side actually traded
(p_up for a buy, p_down for a sell), averaged over the last `low_conf_window_trades`
trades: below 50% means recent trades went against the model.

Every alert goes to the log. Slack (an incoming webhook, URL in SLACK_WEBHOOK_URL) gets
it unless the rule is silenced or over its rate limit; when a silence ends, a kill-switch
or missing heartbeat it covered that still holds is raised again. Records are
deduplicated by decision id (the flow publishes at least once); alerts are deduplicated
by their fingerprint within `dedup_window_s` and rate-limited per rule and symbol.

Settings: defaults, then a JSON file (ENSEMBLE_ALERTS_CONFIG or --config), then
ENSEMBLE_ALERTS_<NAME> variables; a bad value stops the start naming it as its source
wrote it (operators/validation.py, as for the flow's settings). The file is re-read when
it changes (silence a rule without a restart). See docs/operations.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BeforeValidator, Field, InstanceOf

from consumers.delivery import QueuedSink
from consumers.facts import count
from consumers.slack import ENV_VAR as SLACK_ENV
from consumers.slack import SlackWebhook, WebhookConfigError
from consumers.stream import (
    CONFLICT,
    DUPLICATE,
    Dedup,
    GroupReader,
    KafkaSettings,
    Record,
    TopicsMissing,
    dedup_key,
    read_before_committed,
)
from dataflows.environment import environ
from dataflows.topics import ACCESS
from operators.config import ConfigError
from operators.kpis import is_win
from operators.reasons import is_kill_switch
from operators.redaction import scrub
from operators.validation import (
    CommaSeparated,
    NonNegativeInt,
    Number,
    PositiveInt,
    build,
    file_keys,
    named_in,
    validated,
    variables,
)

log = logging.getLogger("ensemble.alerts")

RULES = (
    "kill_switch",
    "drawdown_breach",
    "error_event",
    "heartbeat_missing",
    "consecutive_losses",
    "low_confidence_trade",
    "large_slippage",
    "conflicting_duplicate",  # a telemetry key seen again with other content
)
STREAMS = ("health", "errors", "executions", "signals")
ENV_PREFIX = "ENSEMBLE_ALERTS_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
VARIABLE = variables(ENV_PREFIX)  # the field `slippage_bps` is ENSEMBLE_ALERTS_SLIPPAGE_BPS
# halt reasons that are kill-switches (an operator's own halt is not alerted)
SEVERITY_ICON = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "resolved": ":white_check_mark:",
}
SEVERITY_LEVEL = {"critical": logging.ERROR, "warning": logging.WARNING, "resolved": logging.INFO}


AlertsConfigError = ConfigError  # the error of every other setting, under its old name


def utc(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "?"
    try:
        return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, OSError):  # a corrupt stamp must not hide the alert
        return f"an invalid time ({ts_ms} ms)"


# -- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Silence:
    """Alerts of `rule` ("*": all) for `symbol` ("*": all) skip Slack, until `until_s`."""

    rule: str = "*"
    symbol: str = "*"
    until_s: float | None = None  # epoch seconds; None: until removed

    def covers(self, rule: str, symbol: str) -> bool:
        return self.rule in ("*", rule) and self.symbol in ("*", symbol)

    def active(self, now_s: float) -> bool:
        return self.until_s is None or now_s < self.until_s

    def matches(self, rule: str, symbol: str, now_s: float) -> bool:
        return self.covers(rule, symbol) and self.active(now_s)

    def describe(self) -> str:
        until = (
            "until removed"
            if self.until_s is None
            else "until " + datetime.fromtimestamp(self.until_s, UTC).isoformat()
        )
        return f"{self.rule}:{self.symbol} {until}"


def _parse_until(text: str) -> float:
    s = text.strip()
    dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # times are UTC unless they say otherwise
    return dt.timestamp()


def parse_silence(item: Any) -> Silence:
    """`rule[:symbol][@until]` (until: ISO-8601, UTC unless an offset is given) or an
    object {"rule", "symbol", "until"}."""
    if isinstance(item, Silence):
        return item
    if isinstance(item, str):
        spec, _, until = item.partition("@")
        rule, _, symbol = spec.partition(":")
        item = {"rule": rule.strip() or "*", "symbol": symbol.strip() or "*"}
        if until.strip():
            item["until"] = until.strip()
    if not isinstance(item, dict) or set(item) - {"rule", "symbol", "until"}:
        raise ValueError("expected rule[:symbol][@until] or {rule, symbol, until}")
    rule, symbol = str(item.get("rule", "*")), str(item.get("symbol", "*"))
    if rule != "*" and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; rules: {', '.join(RULES)} or *")
    until = item.get("until")
    return Silence(rule, symbol, None if until in (None, "") else _parse_until(str(until)))


def _known_rules(rules: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}")
    return rules


def _trimmed(names: tuple[str, ...]) -> tuple[str, ...]:
    if not all(s and s.strip() == s for s in names):
        raise ValueError("a symbol is empty or has spaces around it")
    return names


Seconds = Annotated[Number, Field(gt=0, description="must be seconds > 0")]


@validated(VARIABLE)
class AlertsConfig:
    # fraction of peak equity; the kill-switch is at 0.10
    drawdown_breach: Annotated[
        Number, Field(gt=0, lt=1, description="must be a fraction in (0, 1), e.g. 0.05")
    ] = 0.05
    consecutive_losses: PositiveInt = 3  # the kill-switch halts after more than 5
    low_conf_threshold: Annotated[Number, Field(gt=0, le=1, description="must be in (0, 1]")] = 0.50
    low_conf_window_trades: PositiveInt = 5
    slippage_bps: Annotated[Number, Field(gt=0, description="must be a number of bps > 0")] = 10.0
    heartbeat_interval_s: Seconds = 300.0  # one health event per 5m bar
    heartbeat_missed_intervals: Annotated[Number, Field(ge=1, description="must be >= 1")] = 2.0
    # expected to beat; others are learned from the stream
    symbols: Annotated[
        tuple[str, ...],
        CommaSeparated,
        AfterValidator(_trimmed),
        Field(description="must be a comma-separated list of symbols"),
    ] = ()
    disabled_rules: Annotated[
        tuple[str, ...],
        CommaSeparated,
        AfterValidator(_known_rules),
        Field(description=f"must be a list of rules from: {', '.join(RULES)}"),
    ] = ()
    silence: Annotated[
        tuple[Annotated[InstanceOf[Silence], BeforeValidator(parse_silence)], ...],
        CommaSeparated,
        Field(description="must be a list of rule[:symbol][@until-UTC-ISO-time]"),
    ] = ()
    dedup_window_s: Annotated[Number, Field(ge=0, description="must be seconds >= 0")] = 3600.0
    rate_limit_window_s: Seconds = 600.0
    rate_limit_max: PositiveInt = 3  # Slack posts per rule and symbol per window
    group_id: Annotated[
        str, Field(pattern=r"\S", description="must be a non-empty consumer group id")
    ] = "ensemble-alerts"
    # where a new consumer group starts
    start: Annotated[
        Literal["earliest", "latest"], Field(description="must be earliest or latest")
    ] = "latest"
    rebuild_messages: NonNegativeInt = 2000  # per partition, re-read silently at start (`rebuild`)

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_missed_intervals

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled_rules


FIELDS = tuple(f.name for f in dataclasses.fields(AlertsConfig))


def load_config(
    env: Mapping[str, str] | None = None, path: str | Path | None = None
) -> AlertsConfig:
    """Defaults <- the JSON file (`path`, else ENSEMBLE_ALERTS_CONFIG) <- environment; a
    bad value is named as its source wrote it (`alerts.json: start`, ENSEMBLE_ALERTS_START)."""
    env = os.environ if env is None else env
    cfg = AlertsConfig()
    path = path or env.get(CONFIG_ENV) or None
    if path is not None:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as e:
            raise ConfigError(f"{CONFIG_ENV}={str(p)!r}: cannot read it: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{CONFIG_ENV}={str(p)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{CONFIG_ENV}={str(p)!r} must hold a JSON object")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{p}: unknown setting(s) {unknown}; known: {', '.join(FIELDS)}")
        cfg = build(AlertsConfig, data, file_keys(p))
    known_env = {VARIABLE(n) for n in FIELDS} | {CONFIG_ENV}
    stray = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known_env)
    if stray:
        raise ConfigError(f"unknown variable(s) {stray}; known: {', '.join(sorted(known_env))}")
    return dataclasses.replace(cfg, **named_in(env, FIELDS, VARIABLE))


# -- alerts and rules ------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    rule: str
    severity: str  # critical, warning or resolved
    symbol: str
    text: str
    fingerprint: str  # the same event raised twice has the same fingerprint
    ts_event_ms: int | None = None


def conflict_alert(stream: str, rec: dict[str, Any]) -> Alert:
    """A record whose key was seen with other content: the first copy stands, and someone
    must look (the flow republishes only identical copies)."""
    key = dedup_key(stream, rec)
    return Alert(
        rule="conflicting_duplicate",
        severity="critical",
        symbol=str(rec.get("symbol") or "?"),
        text=(
            f"a {stream} record with key {key!r} arrived again with different content; the "
            "first copy was kept. The flow republishes only identical copies: check who "
            "can write the telemetry topics (only the flow's principal should)."
        ),
        fingerprint=f"conflict:{stream}:{key!r}",
        ts_event_ms=rec.get("ts_event_ms"),
    )


@dataclass
class _SymbolState:
    trading_state: str | None = None  # None until the first health event
    halt_reason: str = ""
    halted_ms: int | None = None  # the health event that first showed the kill-switch
    in_breach: bool = False
    loss_run: list[tuple[int, float]] = field(default_factory=list)  # (ts, pnl) of the run
    side_probs: deque = field(default_factory=deque)  # model prob. of the side traded


@dataclass
class _Beat:
    last_seen_s: float
    last_event_ms: int | None = None
    missing: bool = False


class Rules:
    """SPEC 9's rules over deduplicated records; `tick` runs the heartbeat timer.

    `now_s` is a monotonic clock's: heartbeat ages are elapsed time, which a wall clock
    stepped back (late alert) or forward (false alert) would misstate."""

    def __init__(self, cfg: AlertsConfig, now_s: float) -> None:
        self.cfg = cfg
        self.started_s = now_s
        self.states: dict[tuple[str, str], _SymbolState] = defaultdict(_SymbolState)
        self.beats: dict[str, _Beat] = {s: _Beat(now_s) for s in cfg.symbols}

    def reconfigure(self, cfg: AlertsConfig, now_s: float) -> None:
        self.cfg = cfg
        for s in cfg.symbols:
            self.beats.setdefault(s, _Beat(now_s))

    def on_record(self, stream: str, rec: dict[str, Any], now_s: float) -> list[Alert]:
        handler = {
            "health": self._health,
            "errors": self._error,
            "executions": self._execution,
            "signals": self._signals,
        }.get(stream)
        alerts = handler(rec, now_s) if handler else []
        return [a for a in alerts if self.cfg.enabled(a.rule)]

    def tick(self, now_s: float, unread_health: int = 0) -> list[Alert]:
        """Heartbeats older than the timeout, judged on what has been read: while health
        records wait unread on the broker (reading fell behind) nothing is judged, since
        the missing heartbeat may be among them."""
        if not self.cfg.enabled("heartbeat_missing") or unread_health > 0:
            return []
        timeout = self.cfg.heartbeat_timeout_s
        out = []
        watched = dict(self.beats) or {"*": self.beats.setdefault("*", _Beat(self.started_s))}
        for sym, beat in watched.items():
            if beat.missing or now_s - beat.last_seen_s <= timeout:
                continue
            beat.missing = True
            out.append(self._missing(sym, beat, now_s))
        return out

    def active(self, now_s: float) -> list[Alert]:
        """The state alerts whose condition still holds (a heartbeat still missing, a symbol
        still halted by a kill-switch), raised again: for a silence that just ended."""
        out = [self._missing(sym, b, now_s) for sym, b in self.beats.items() if b.missing]
        for (sid, sym), st in self.states.items():
            if st.trading_state == "HALTED" and is_kill_switch(st.halt_reason):
                out.append(
                    Alert(
                        "kill_switch",
                        "critical",
                        sym,
                        f"{sym} [{sid}] is still HALTED by the kill-switch {st.halt_reason} "
                        f"(since {utc(st.halted_ms)}); it stays halted until an operator sends "
                        "reset_kill_switch.",
                        f"{sid}:halted:{st.halt_reason}:{st.halted_ms}",
                        st.halted_ms,
                    )
                )
        return [a for a in out if self.cfg.enabled(a.rule)]

    def _missing(self, sym: str, beat: _Beat, now_s: float) -> Alert:
        age = now_s - beat.last_seen_s
        since = (
            f"last health event {utc(beat.last_event_ms)}, received {age:.0f} s ago"
            if beat.last_event_ms is not None
            else f"none received since the alerts consumer started {age:.0f} s ago"
        )
        who = "any symbol" if sym == "*" else sym
        return Alert(
            "heartbeat_missing",
            "critical",
            sym,
            f"no heartbeat from {who} for more than {self.cfg.heartbeat_missed_intervals:g}"
            f" x {self.cfg.heartbeat_interval_s:g} s "
            f"({since}). Is the dataflow running and publishing?",
            f"missing-since:{beat.last_seen_s:.3f}",
            beat.last_event_ms,
        )

    # -- per stream -------------------------------------------------------------------------
    def beat(self, r: dict[str, Any], now_s: float) -> list[Alert]:
        """A health event arrived (even a republished one: the flow is publishing)."""
        sym, ts = r["symbol"], r["ts_event_ms"]
        out: list[Alert] = []
        beat = self.beats.get(sym)
        if "*" in self.beats:  # the first heartbeat replaces the any-symbol watch
            star = self.beats.pop("*")
            if star.missing:
                out.append(self._beat_back("*", star, now_s, ts))
        if beat is None:
            beat = self.beats[sym] = _Beat(now_s)
        elif beat.missing:
            out.append(self._beat_back(sym, beat, now_s, ts))
        beat.last_seen_s, beat.last_event_ms, beat.missing = now_s, ts, False
        return [a for a in out if self.cfg.enabled(a.rule)]

    def _health(self, r: dict[str, Any], now_s: float) -> list[Alert]:
        sym, sid, ts = r["symbol"], r["strategy_id"], r["ts_event_ms"]
        out = self.beat(r, now_s)
        st = self.states[(sid, sym)]
        state, reason = r["trading_state"], r["halt_reason"]
        kill = state == "HALTED" and is_kill_switch(reason)
        # a kill-switch firing while an operator's halt is in force is news as well
        if kill and not (st.trading_state == "HALTED" and is_kill_switch(st.halt_reason)):
            st.halted_ms = ts
            what = (
                f"is HALTED by the kill-switch {reason} (first health event seen, {utc(ts)})"
                if st.trading_state is None
                else f"kill-switch fired: {reason} at {utc(ts)}"
            )
            out.append(
                Alert(
                    "kill_switch",
                    "critical",
                    sym,
                    f"{sym} [{sid}] {what}; trading is "
                    f"HALTED and positions are flattened. Equity {r['equity_usd']:,.2f} USD, "
                    f"drawdown {r['drawdown']:.2%} (max {r['max_drawdown']:.2%}), "
                    f"{count(r['consecutive_losses'], 'losing trade', 'losing trades')} in a "
                    "row. It stays halted until "
                    "an operator sends reset_kill_switch.",
                    f"{sid}:halted:{reason}:{ts}",
                    ts,
                )
            )
        elif state != "HALTED" and st.trading_state == "HALTED" and is_kill_switch(st.halt_reason):
            out.append(
                Alert(
                    "kill_switch",
                    "resolved",
                    sym,
                    f"{sym} [{sid}] trading is {state} again at {utc(ts)} "
                    f"(the kill-switch {st.halt_reason} was reset).",
                    f"{sid}:resumed:{ts}",
                    ts,
                )
            )
        st.trading_state, st.halt_reason = state, reason

        dd = r["drawdown"]
        if dd >= self.cfg.drawdown_breach and not st.in_breach:
            st.in_breach = True
            out.append(
                Alert(
                    "drawdown_breach",
                    "warning",
                    sym,
                    f"{sym} [{sid}] drawdown {dd:.2%} from the peak of "
                    f"{r['peak_equity_usd']:,.2f} USD breaches the alert threshold "
                    f"{self.cfg.drawdown_breach:.2%} at {utc(ts)}; equity "
                    f"{r['equity_usd']:,.2f} USD, state {state}.",
                    f"{sid}:breach:{ts}",
                    ts,
                )
            )
        elif dd < self.cfg.drawdown_breach:
            st.in_breach = False
        return out

    def _beat_back(self, sym: str, beat: _Beat, now_s: float, ts: int) -> Alert:
        who = "any symbol" if sym == "*" else sym
        return Alert(
            "heartbeat_missing",
            "resolved",
            sym,
            f"heartbeat from {who} is back after {now_s - beat.last_seen_s:.0f} s "
            f"(health event {utc(ts)}).",
            f"back:{beat.last_seen_s:.3f}",
            ts,
        )

    def _error(self, r: dict[str, Any], now_s: float) -> list[Alert]:
        sym, sid, ts = r["symbol"], r["strategy_id"], r["ts_event_ms"]
        message = scrub(r["message"])
        message = message if len(message) <= 300 else message[:297] + "..."
        return [
            Alert(
                "error_event",
                "warning",
                sym,
                f"{sym} [{sid}] error in stage {r['stage']} at {utc(ts)}: "
                f"{r['error_type']}: {message}. The flow went on; the record was skipped.",
                f"{sid}:{r['stage']}:{r['error_type']}:{message}",  # scrubbed: it is logged
                ts,
            )
        ]

    def _execution(self, r: dict[str, Any], now_s: float) -> list[Alert]:
        sym, sid, ts = r["symbol"], r["strategy_id"], r["ts_event_ms"]
        out: list[Alert] = []
        slip = abs(r["slippage_bps"])
        if slip > self.cfg.slippage_bps:
            out.append(
                Alert(
                    "large_slippage",
                    "warning",
                    sym,
                    f"{sym} [{sid}] slippage {slip:.1f} bps (> {self.cfg.slippage_bps:g} bps) on "
                    f"a {r['side']} of {r['qty']:.6g} at {r['fill_px']:,.2f} against "
                    f"{r['ref_px']:,.2f} at {utc(ts)}: "
                    f"{abs(r['fill_px'] - r['ref_px']) * r['qty']:,.2f} USD ({r['purpose']}).",
                    r["decision_id"],
                    ts,
                )
            )
        pnl = r["trade_pnl_usd"]
        if pnl is None:
            return out
        st = self.states[(sid, sym)]
        if is_win(pnl):  # as the risk state counts: only a win ends the run, not a zero
            st.loss_run.clear()
            return out
        st.loss_run.append((ts, pnl))
        n = len(st.loss_run)
        if n >= self.cfg.consecutive_losses:
            total = sum(p for _, p in st.loss_run)
            out.append(
                Alert(
                    "consecutive_losses",
                    "warning",
                    sym,
                    f"{sym} [{sid}] {count(n, 'losing trade', 'losing trades')} in a row (alert at "
                    f"{self.cfg.consecutive_losses}): the last closed {utc(ts)} for "
                    f"{pnl:+,.2f} USD; the run has lost {total:+,.2f} USD since "
                    f"{utc(st.loss_run[0][0])}.",
                    f"{sid}:losses:{st.loss_run[0][0]}:{n}",
                    ts,
                )
            )
        return out

    def _signals(self, r: dict[str, Any], now_s: float) -> list[Alert]:
        d, model = r["decision"], r["model"]
        if d["action"] != "trade" or model is None or d["direction"] == 0:
            return []
        sym, sid, ts = r["symbol"], r["strategy_id"], r["ts_event_ms"]
        st = self.states[(sid, sym)]
        p_side = model["p_up"] if d["direction"] > 0 else model["p_down"]
        st.side_probs.append(p_side)
        while len(st.side_probs) > self.cfg.low_conf_window_trades:
            st.side_probs.popleft()
        recent = sum(st.side_probs) / len(st.side_probs)
        if recent >= self.cfg.low_conf_threshold:
            return []
        side = "long" if d["direction"] > 0 else "short"
        return [
            Alert(
                "low_confidence_trade",
                "warning",
                sym,
                f"{sym} [{sid}] went {side} ({d['reason']}, arm {d['chosen_arm']}) at {utc(ts)} "
                f"while recent confidence is {recent:.1%} < {self.cfg.low_conf_threshold:.0%}: "
                f"the model's probability for the side traded, mean of the last "
                f"{len(st.side_probs)} trade(s); this one {p_side:.1%} (model confidence "
                f"{model['conf']:.1%}). Trades are going against the model: review, and "
                "consider a halt or tighter gates (gates.low_conf_min, CONF_MIN).",
                d["decision_id"],
                ts,
            )
        ]


# -- sinks and the notifier ------------------------------------------------------------------
class Sink(Protocol):
    name: str

    def send(self, text: str, critical: bool = False) -> Any: ...


def slack_escape(text: str) -> str:
    """Slack reads <...> as links and mentions: &, < and > must be sent escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(alert: Alert, suppressed: int) -> str:
    icon = SEVERITY_ICON.get(alert.severity, "")
    extra = f" (+{suppressed} more {alert.rule} alert(s) rate-limited)" if suppressed else ""
    return f"{icon} *{alert.severity.upper()}* `{alert.rule}` {slack_escape(alert.text)}{extra}"


class Notifier:
    """Dedup -> log -> silence -> rate limit -> Slack. Returns what happened to an alert.

    `now_s` is a monotonic clock's (dedup and rate-limit windows are elapsed time); a
    silence ends at a time of day, judged on `wall_clock`."""

    def __init__(
        self, cfg: AlertsConfig, slack: Sink | None, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.cfg = cfg
        self.slack = slack
        self.wall_clock = wall_clock  # for silences, whose end is a time of day
        self._fingerprints: dict[tuple[str, str, str], float] = {}
        self._sent: dict[tuple[str, str], deque] = defaultdict(deque)
        self._suppressed: dict[tuple[str, str], int] = defaultdict(int)
        self.outcomes: dict[str, int] = defaultdict(int)
        self.last_ticket = 0  # of the last text handed to a queued sink
        self._silences: set[Silence] = set()  # in force at the last look

    def silences_ended(self) -> list[Silence]:
        """The silences in force at the last call that no longer are (their end time
        passed, or they were removed from the config)."""
        wall_s = self.wall_clock()
        now = {s for s in self.cfg.silence if s.active(wall_s)}
        ended, self._silences = self._silences - now, now
        return sorted(ended, key=lambda s: s.describe())

    def reraise(self, alerts: Iterable[Alert], ended: list[Silence], now_s: float) -> None:
        """A silence ended: the state alerts it covered whose condition still holds go out
        again (the first was kept from Slack and its condition raises no new one)."""
        for alert in alerts:
            if any(s.covers(alert.rule, alert.symbol) for s in ended):
                again = f"{alert.fingerprint}:silence-ended:{now_s:.0f}"
                self.handle(dataclasses.replace(alert, fingerprint=again), now_s)

    def settled(self) -> int:
        """The last ticket up to which every alert handed to Slack was delivered or given
        up (`QueuedSink.settled`): the records that raised them may be committed."""
        settled = getattr(self.slack, "settled", None)
        return self.last_ticket if settled is None else settled()

    def handle(self, alert: Alert, now_s: float) -> str:
        # the text quotes records (an operator's halt reason, an error message): no secret,
        # e-mail or trader address goes to Slack or the log
        alert = dataclasses.replace(alert, text=scrub(alert.text, addresses=True))
        outcome = self._route(alert, now_s)
        self.outcomes[outcome] += 1
        return outcome

    def _route(self, alert: Alert, now_s: float) -> str:
        fp = (alert.rule, alert.symbol, alert.fingerprint)
        seen = self._fingerprints.get(fp)
        if seen is not None and now_s - seen < self.cfg.dedup_window_s:
            log.debug("duplicate alert dropped: %s %s", alert.rule, alert.fingerprint)
            return "duplicate"
        self._fingerprints[fp] = now_s
        if len(self._fingerprints) > 50_000:  # forget fingerprints older than the window
            cutoff = now_s - self.cfg.dedup_window_s
            self._fingerprints = {k: t for k, t in self._fingerprints.items() if t >= cutoff}
        outcome = self._deliver(alert, now_s)
        log.log(
            SEVERITY_LEVEL.get(alert.severity, logging.WARNING),
            "ALERT %s %s %s: %s [slack: %s]",
            alert.severity,
            alert.rule,
            alert.symbol,
            alert.text,
            outcome,
        )
        return outcome

    def _deliver(self, alert: Alert, now_s: float) -> str:
        if self.slack is None:
            return "not configured"
        wall_s = self.wall_clock()
        if any(s.matches(alert.rule, alert.symbol, wall_s) for s in self.cfg.silence):
            return "silenced"
        key = (alert.rule, alert.symbol)
        suppressed = 0
        if alert.severity != "resolved":  # a resolution is never held back
            sent = self._sent[key]
            while sent and now_s - sent[0] >= self.cfg.rate_limit_window_s:
                sent.popleft()
            if len(sent) >= self.cfg.rate_limit_max:
                self._suppressed[key] += 1
                return "rate-limited"
            sent.append(now_s)
            suppressed, self._suppressed[key] = self._suppressed[key], 0
        result = self.slack.send(
            slack_text(alert, suppressed), critical=alert.severity == "critical"
        )
        self.last_ticket = getattr(result, "ticket", self.last_ticket)
        # a queued sink answers at once ("queued"); a direct one after posting
        return getattr(result, "outcome", None) or (
            "sent" if getattr(result, "ok", True) else "failed"
        )


# -- the loop ----------------------------------------------------------------------------------
class Reader(Protocol):
    """`unread_health() -> int`, optional: health records on the broker not read yet."""

    def poll(self, timeout_s: float) -> tuple[list[Record], int]: ...

    def positions(self) -> Any:
        """Where reading has got to, for `commit` to store later."""

    def commit(self, positions: Any) -> None: ...


@dataclass
class RunStats:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    skipped: int = 0  # records the rules could not handle (logged, left behind)
    alerts: dict[str, int] = field(default_factory=dict)


def _unhandled(stream: str, rec: dict[str, Any], e: Exception) -> None:
    """A record the rules raise on is logged and left behind: one bad record must not stop
    every alert (re-read after each restart, it would stop the consumer for good)."""
    try:
        key = repr(dedup_key(stream, rec))
    except Exception:  # the record may lack its key fields too
        key = "(no key)"
    log.error(
        "skipped a %s record %s that the alert rules could not handle (%s: %s); reading goes on",
        stream,
        scrub(key),
        type(e).__name__,
        scrub(str(e))[:300],
    )


class ConfigWatcher:
    """Re-reads the config file when it changes; a bad edit is logged and ignored."""

    def __init__(self, path: str | None, env: Mapping[str, str]) -> None:
        self.path, self.env = path, env
        self.mtime = self._mtime()
        self.checked_s = 0.0

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime if self.path else None
        except OSError:
            return None

    def changed(self, now_s: float) -> AlertsConfig | None:
        if self.path is None or now_s - self.checked_s < 2.0:
            return None
        self.checked_s = now_s
        mtime = self._mtime()
        if mtime == self.mtime:
            return None
        self.mtime = mtime
        try:
            cfg = load_config(self.env, self.path)
        except ConfigError as e:
            log.error("config change ignored, the previous settings stay: %s", e)
            return None
        log.info("config reloaded from %s: %s", self.path, describe(cfg))
        return cfg


def describe(cfg: AlertsConfig) -> str:
    silences = "; ".join(s.describe() for s in cfg.silence) or "none"
    return (
        f"drawdown_breach {cfg.drawdown_breach:.2%}, consecutive_losses {cfg.consecutive_losses}, "
        f"low_conf_threshold {cfg.low_conf_threshold:.0%} over {cfg.low_conf_window_trades} "
        f"trades, slippage_bps {cfg.slippage_bps:g}, heartbeat {cfg.heartbeat_missed_intervals:g} "
        f"x {cfg.heartbeat_interval_s:g} s, rate limit {cfg.rate_limit_max} per "
        f"{cfg.rate_limit_window_s:g} s, dedup {cfg.dedup_window_s:g} s, disabled "
        f"{list(cfg.disabled_rules) or 'none'}, silenced: {silences}"
    )


def rebuild(rules: Rules, dedup: Dedup, records: Iterable[Record], now_s: float) -> int:
    """Replay what the group handled before a restart through the rules and the dedup
    memory, raising nothing: a decision republished after the restart is then still a
    duplicate, a loss run goes on counting, and a kill-switch that already fired is not
    reported again. Returns the records replayed."""
    n = 0
    for stream, rec in records:
        try:
            if dedup.first(stream, rec):
                rules.on_record(stream, rec, now_s)  # its alerts went out before the restart
                n += 1
        except Exception as e:
            _unhandled(stream, rec, e)
    return n


def run(
    reader: Reader,
    rules: Rules,
    notifier: Notifier,
    *,
    max_messages: int | None = None,
    until_idle_s: float | None = None,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    watcher: ConfigWatcher | None = None,
    stop: Callable[[], bool] = lambda: False,
    dedup: Dedup | None = None,
    commits: Commits | None = None,
) -> RunStats:
    """Poll, deduplicate, apply the rules and the heartbeat timer, notify, commit.

    A batch's offsets are committed once every alert raised so far has left the Slack
    queue (delivered, or given up): reading goes on during a Slack outage, the commit
    waits, and a restart reads those records again and raises their alerts again.

    `clock` is monotonic: ages and windows are elapsed time, whatever the wall clock does.
    Ends after `max_messages` messages, after `until_idle_s` seconds without one, or when
    `stop()` is true; otherwise runs for ever.
    """
    stats = RunStats()
    dedup = dedup or Dedup()
    commits = commits if commits is not None else Commits()
    unread_health = getattr(reader, "unread_health", lambda: 0)
    last_msg_s = clock()
    while not stop():
        records, polled = reader.poll(poll_s)
        now = clock()
        if watcher is not None and (cfg := watcher.changed(now)) is not None:
            rules.reconfigure(cfg, now)
            notifier.cfg = cfg
        if ended := notifier.silences_ended():  # before new alerts, which are not silenced
            notifier.reraise(rules.active(now), ended, now)
        for stream, rec in records:
            try:
                _handle(stream, rec, rules, notifier, dedup, stats, now)
            except Exception as e:
                stats.skipped += 1
                _unhandled(stream, rec, e)
        for alert in rules.tick(now, unread_health()):
            notifier.handle(alert, now)
        if polled:
            commits.read(reader.positions(), notifier.last_ticket)
            stats.messages += polled
            last_msg_s = now
        commits.commit_settled(reader, notifier.settled())  # at least once, to Slack too
        if max_messages is not None and stats.messages >= max_messages:
            break
        if until_idle_s is not None and now - last_msg_s >= until_idle_s:
            break
    stats.alerts = dict(notifier.outcomes)
    return stats


def _handle(
    stream: str,
    rec: dict[str, Any],
    rules: Rules,
    notifier: Notifier,
    dedup: Dedup,
    stats: RunStats,
    now: float,
) -> None:
    seen = dedup.check(stream, rec)
    if seen == CONFLICT:
        notifier.handle(conflict_alert(stream, rec), now)
        return
    if seen == DUPLICATE:
        stats.duplicates += 1
        if stream == "health":  # republished, but the flow is alive
            for alert in rules.beat(rec, now):
                notifier.handle(alert, now)
        return
    stats.records += 1
    for alert in rules.on_record(stream, rec, now):
        notifier.handle(alert, now)


@dataclass
class Commits:
    """Where reading got to after each batch, with the last alert ticket raised by then:
    committed once Slack has settled that ticket, each batch on its own, so one alert
    still waiting holds back only the batches from its own on."""

    pending: deque[tuple[Any, int]] = field(default_factory=deque)

    def read(self, positions: Any, ticket: int) -> None:
        self.pending.append((positions, ticket))

    def commit_settled(self, reader: Reader, settled: int) -> None:
        last = None
        while self.pending and self.pending[0][1] <= settled:
            last = self.pending.popleft()[0]
        if last is not None:
            reader.commit(last)


def slack_from_env(env: Mapping[str, str]) -> QueuedSink | None:
    """The webhook behind a bounded queue and its own thread: reading never waits on Slack."""
    url = env.get(SLACK_ENV, "").strip()
    if not url:
        return None
    webhook = SlackWebhook(url)
    queued = QueuedSink(webhook)
    webhook.sleep = queued.stopping.wait  # a retry's wait ends when the consumer stops
    return queued


def not_authorized(error: Exception, group_id: str) -> str:
    """What to do when the broker refuses this principal the consumer group or the topics:
    the alerts principal may only use groups named like ACCESS grants (dataflows/topics.py),
    and a group id outside them was a traceback, not a reason."""
    from kafka.errors import GroupAuthorizationFailedError  # kafka-python: the consumer only

    if isinstance(error, GroupAuthorizationFailedError):
        prefixes = next(a.group_prefixes for a in ACCESS if a.principal == "alerts")
        allowed = " or ".join(repr(p) for p in prefixes)
        return (
            f"the broker refused consumer group {group_id!r} to this principal "
            f"({type(error).__name__}); the alerts principal may use groups whose id starts "
            f"with {allowed}: set ENSEMBLE_ALERTS_GROUP_ID to one (e.g. {prefixes[0]}-ops)"
        )
    return (
        f"the broker refused this principal the telemetry topics ({type(error).__name__}); "
        "run as the alerts principal, and grant its ACLs with `python -m dataflows.topics "
        "--bootstrap HOST:PORT --prefix PREFIX` as admin"
    )


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:  # the ENSEMBLE_CONFIG file under the environment; unknown ENSEMBLE_* names refused
        env = environ(env)
    except ConfigError as e:
        print(f"alerts: cannot start: {e}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(
        prog="python -m consumers.alerts", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--bootstrap", default=env.get("ENSEMBLE_KAFKA_BOOTSTRAP"))
    ap.add_argument("--prefix", default=env.get("ENSEMBLE_TOPIC_PREFIX", "ensemble"))
    ap.add_argument("--config", default=env.get(CONFIG_ENV), help="JSON settings file")
    ap.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    ap.add_argument(
        "--until-idle", type=float, default=None, metavar="SECONDS", help="stop when idle"
    )
    ap.add_argument("--log-level", default=env.get("ENSEMBLE_LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # the Kafka client's own INFO lines (joins, fetches) drown the alerts
    logging.getLogger("kafka").setLevel(max(logging.getLogger().level, logging.WARNING))
    try:
        kafka = KafkaSettings.from_values(args.bootstrap, args.prefix)
        cfg = load_config(env, args.config)
        slack = slack_from_env(env)
    except (ConfigError, WebhookConfigError, ValueError) as e:
        print(f"alerts: cannot start: {e}", file=sys.stderr)
        return 2
    log.info("settings: %s", describe(cfg))
    log.info(
        "slack: %s",
        "webhook configured" if slack else f"{SLACK_ENV} unset, alerts go to the log only",
    )
    from kafka.errors import AuthorizationError as KafkaAuthorizationError

    now = time.monotonic()
    rules, dedup = Rules(cfg, now), Dedup()
    try:
        history = read_before_committed(kafka, STREAMS, cfg.group_id, cfg.rebuild_messages)
        n = rebuild(rules, dedup, history, now)
        if n:
            log.info("rebuilt dedup and rule state from the %d records handled last", n)
        reader = GroupReader(kafka, STREAMS, cfg.group_id, cfg.start, client_id="ensemble-alerts")
    except (TopicsMissing, ConnectionError) as e:
        print(f"alerts: cannot start: {e}", file=sys.stderr)
        return 2
    except KafkaAuthorizationError as e:
        print(f"alerts: cannot start: {not_authorized(e, cfg.group_id)}", file=sys.stderr)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    notifier, commits = Notifier(cfg, slack), Commits()
    log.info(
        "following %s as group %s (where it left off; a new group starts at the %s)",
        ", ".join(f"{kafka.prefix}.{s}" for s in STREAMS),
        cfg.group_id,
        cfg.start,
    )
    try:
        stats = run(
            reader,
            rules,
            notifier,
            max_messages=args.max_messages,
            until_idle_s=args.until_idle,
            watcher=ConfigWatcher(args.config, env),
            stop=lambda: bool(stopping),
            dedup=dedup,
            commits=commits,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        # Slack first: the last batches' alerts delivered while it drains are committed
        undelivered = slack.close() if slack is not None else 0
        commits.commit_settled(reader, notifier.settled())
        reader.close()
    log.info(
        "stopped: %d messages, %d records, %d duplicates dropped, %salerts %s%s",
        stats.messages,
        stats.records,
        stats.duplicates,
        f"{stats.skipped} skipped (logged above), " if stats.skipped else "",
        stats.alerts or "none",
        ""
        if slack is None
        else f"; slack: {slack.delivered} delivered, {slack.failed} failed, "
        f"{slack.dropped} dropped (queue full), {undelivered} undelivered at stop",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
