"""One symbol's strategy step: fill → funding → control → mark → kill-switches → decide.

Bytewax has no cycles, and the bandit's reward needs the outcome of earlier decisions, so
gating, bandit, risk and the paper broker run in one step per symbol. Each concern lives
in its own module; this one only orders them. Everything that must survive a restart is
in `SymbolState` (plain data, picklable); the configuration is not state.

At a 5m close t the strategy:
1. fills the intent decided at the previous close at this bar's open (next-bar fill);
2. applies funding settlements and operator commands with event time <= t, in order;
3. marks to market at the close and checks the kill-switches;
4. decides: eligibility → Thompson bandit → side threshold → gates → sizing → pre-trade
   guards → an order intent for the next bar, or a rejection with its reason;
   with no new entry, a position held `max_hold_bars` is closed (time exit), and a halted
   symbol's position is flattened;
5. emits signals, ensemble, health and (hourly) calibration telemetry.
An intent is answered by exactly one execution or rejection (linked by decision id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.bandit import ThompsonBandit
from operators.config import GuardMode, StrategyConfig
from operators.events import ControlCommand
from operators.execution import Portfolio
from operators.gating import (
    Signals,
    consensus_veto,
    direction_and_alpha,
    effective_conf_min,
    eligibility,
    low_conf_veto,
    model_view,
)
from operators.overlays import BarContext
from operators.reasons import Reason
from operators.risk import (
    DAY_MS,
    RiskState,
    TradingState,
    pretrade_veto,
    sizing_scale,
    target_position,
)
from operators.telemetry import Stamp

Output = tuple[str, dict[str, Any]]
CALIBRATION_EVERY_BARS = 12
CALIBRATION_WINDOW = 288
_BINS = 10


@dataclass
class OpenTrade:
    decision_id: str
    arm: str | None
    direction: int
    entry_bar: int
    entry_px: float
    qty: float
    fees_usd: float
    funding_usd: float = 0.0


@dataclass
class PendingIntent:
    decision_id: str
    client_order_id: str
    qty: float
    purpose: Reason
    arm: str | None
    decided_bar: int
    decided_ms: int  # the decision bar's close


@dataclass
class SymbolState:
    symbol: str
    portfolio: Portfolio
    risk: RiskState
    bandit: ThompsonBandit
    rng: np.random.Generator
    bar_index: int = 0
    gap_bars: int = 0
    last_close: float = 0.0
    pending: PendingIntent | None = None
    open_trade: OpenTrade | None = None
    last_entry_bar: int | None = None
    shadow: bool = False
    started: bool = False
    decisions: int = 0
    trades: int = 0  # closed round trips
    wins: int = 0
    losses: int = 0
    fills: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    daily_equity: deque = field(default_factory=lambda: deque(maxlen=31))  # (day, close equity)
    recent_conf: deque = field(default_factory=lambda: deque(maxlen=50))
    volume_usd: deque = field(default_factory=lambda: deque(maxlen=288))  # 1 day of 5m bars
    calib_pending: deque = field(default_factory=deque)  # (bar_index, p_up, close)
    calib_resolved: deque = field(default_factory=lambda: deque(maxlen=CALIBRATION_WINDOW))


def symbol_seed(seed: int, symbol: str) -> int:
    """A per-symbol RNG seed that does not depend on Python's hash randomisation."""
    return (seed * 1_000_003 + zlib.crc32(symbol.encode())) % (2**32)


def new_state(cfg: StrategyConfig, symbol: str, seed: int) -> SymbolState:
    return SymbolState(
        symbol=symbol,
        portfolio=Portfolio(cash=cfg.risk.initial_equity),
        risk=RiskState(peak_equity=cfg.risk.initial_equity),
        bandit=ThompsonBandit(cfg.bandit),
        rng=np.random.default_rng(symbol_seed(seed, symbol)),
    )


def _shadowed(cfg: StrategyConfig) -> StrategyConfig:
    """The configuration in shadow mode: every guard that is ON only reports."""

    def sh(m: GuardMode) -> GuardMode:
        return GuardMode.SHADOW if m is GuardMode.ON else m

    g = cfg.gates
    return dataclasses.replace(
        cfg,
        gates=dataclasses.replace(
            g,
            low_conf_veto=sh(g.low_conf_veto),
            consensus_gate=sh(g.consensus_gate),
            dynamic_conf_min=sh(g.dynamic_conf_min),
        ),
        risk=dataclasses.replace(cfg.risk, vol_guard=sh(cfg.risk.vol_guard)),
    )


class Strategy:
    def __init__(
        self,
        cfg: StrategyConfig,
        state: SymbolState,
        stamp: Stamp,
        model_info: dict[str, Any],
        resumed: bool = False,
    ) -> None:
        self.base_cfg = cfg
        self.shadow_cfg = _shadowed(cfg)
        self.s = state
        self.stamp = stamp
        self.model_info = model_info
        self.resumed = resumed

    @property
    def cfg(self) -> StrategyConfig:
        return self.shadow_cfg if self.s.shadow else self.base_cfg

    # -- the bar ---------------------------------------------------------------------
    def on_bar(self, ctx: BarContext) -> list[Output]:
        s, bar = self.s, ctx.bar
        t = bar.end_ms
        out: list[Output] = []
        if not s.started or self.resumed:
            event = "resume" if s.started else "start"
            restored = self._restored_state() if s.started else {}
            out.append(self._repro(t, event, None, restored))
            s.started, self.resumed = True, False
        s.bar_index += 1
        if not bar.complete and bar.count == 0:
            s.gap_bars += 1
        if s.pending is not None:
            out.extend(self._fill(ctx))
        for f in ctx.funding_due:
            flow = s.portfolio.pay_funding(f.rate, bar.open if bar.count else bar.close)
            if s.open_trade is not None:
                s.open_trade.funding_usd += flow
        for cmd in ctx.controls_due:
            out.append(self._control(cmd, bar.close))
        s.last_close = bar.close
        s.volume_usd.append(bar.volume * bar.close)
        equity = s.portfolio.equity(bar.close)
        s.risk.mark(equity, t)
        self._track_daily(t, equity)
        fired = s.risk.check_kill_switches(equity, self.cfg.risk)
        if fired is not None:
            s.risk.halt(fired.value)
        self._resolve_calibration(bar.close)
        decision, intent_out = self._decide(ctx)
        out.extend(intent_out)
        out.append(self._signals(ctx, decision))
        out.append(self._ensemble(ctx, decision))
        out.append(self._health(t, equity))
        if s.bar_index % CALIBRATION_EVERY_BARS == 0 and s.calib_resolved:
            out.append(self._calibration(t))
        return out

    def on_eof(self) -> list[Output]:
        """The input ended: an intent that can no longer be filled is rejected."""
        s = self.s
        if s.pending is None:
            return []
        p, s.pending = s.pending, None
        t = p.decided_ms
        return [
            self._rejection(
                t,
                p.decision_id,
                "execution",
                Reason.END_OF_DATA,
                "the input ended before the next bar",
                p.arm,
                1 if p.qty > 0 else -1,
            )
        ]

    def summary(self) -> dict[str, Any]:
        s, pf = self.s, self.s.portfolio
        return {
            "symbol": s.symbol,
            "bars": s.bar_index,
            "gap_bars": s.gap_bars,
            "decisions": s.decisions,
            "fills": s.fills,
            "round_trips": s.trades,
            "wins": s.wins,
            "losses": s.losses,
            "rejections": dict(sorted(s.rejections.items())),
            "equity": pf.equity(s.last_close),
            "max_drawdown": s.risk.max_drawdown_seen,
            "fees_usd": pf.fees_usd,
            "funding_usd": pf.funding_usd,
            "trading_state": s.risk.state.value,
        }

    # -- execution -------------------------------------------------------------------
    def _fill(self, ctx: BarContext) -> list[Output]:
        s, bar, cfg = self.s, ctx.bar, self.cfg
        p, s.pending = s.pending, None
        assert p is not None
        direction = 1 if p.qty > 0 else -1
        if bar.count == 0:
            return [
                self._rejection(
                    bar.end_ms,
                    p.decision_id,
                    "execution",
                    Reason.STALE_INTENT,
                    f"no trades in the bar after the decision "
                    f"(starting {bar.start_ms}) to fill against",
                    p.arm,
                    direction,
                )
            ]
        rv = (ctx.features or {}).get("rv_annual", cfg.risk.sigma_target)
        fill = s.portfolio.fill(p.qty, bar.open, cfg.execution, rv / cfg.risk.sigma_target)
        s.fills += 1
        trade_pnl = reward = None
        closing_qty = 0.0
        ot = s.open_trade
        if ot is not None and (ot.qty > 0) != (p.qty > 0):
            closing_qty = min(abs(p.qty), abs(ot.qty))
            exit_fee = fill.fee_usd * closing_qty / abs(p.qty)
            trade_pnl = fill.realized_usd - ot.fees_usd - exit_fee + ot.funding_usd
            reward = trade_pnl / (abs(ot.qty) * ot.entry_px) * 1e4
            if ot.arm is not None:
                s.bandit.update(ot.arm, reward)
            s.risk.record_trade_result(trade_pnl)
            s.trades += 1
            if trade_pnl > 0:
                s.wins += 1
            else:
                s.losses += 1
            s.open_trade = None
        opened = abs(p.qty) - closing_qty
        if opened > 1e-12:
            s.open_trade = OpenTrade(
                p.decision_id,
                p.arm,
                direction,
                s.bar_index,
                fill.px,
                s.portfolio.qty,
                fill.fee_usd * opened / abs(p.qty),
            )
        pf = s.portfolio
        notional = abs(fill.qty) * fill.px
        slip_usd = abs(fill.qty) * abs(fill.px - fill.ref_px)
        return [
            (
                "executions",
                self.stamp(
                    s.symbol,
                    bar.start_ms,
                    decision_id=p.decision_id,
                    client_order_id=p.client_order_id,
                    status="filled",
                    side="buy" if fill.qty > 0 else "sell",
                    qty=abs(fill.qty),
                    fill_px=fill.px,
                    ref_px=fill.ref_px,
                    slippage_bps=fill.slippage_bps,
                    fee_usd=fill.fee_usd,
                    notional_usd=notional,
                    purpose=p.purpose.value,
                    position_qty=pf.qty,
                    avg_px=pf.avg_px,
                    cash_usd=pf.cash,
                    equity_usd=pf.equity(bar.open),
                    realized_usd=fill.realized_usd,
                    trade_pnl_usd=trade_pnl,
                    reward_bps=reward,
                    dry_run=cfg.execution.dry_run,
                ),
            ),
            (
                "costs",
                self.stamp(
                    s.symbol,
                    bar.start_ms,
                    decision_id=p.decision_id,
                    fee_usd=fill.fee_usd,
                    fee_bps=cfg.execution.fee_bps,
                    slippage_bps=fill.slippage_bps,
                    slippage_usd=slip_usd,
                    notional_usd=notional,
                ),
            ),
        ]

    # -- operator commands -------------------------------------------------------------
    def _control(self, cmd: ControlCommand, mark_px: float) -> Output:
        s = self.s
        before = {"trading_state": s.risk.state.value, "shadow": s.shadow}
        note = "applied"
        if cmd.command == "halt":
            if s.risk.state is TradingState.HALTED and not s.risk.halt_reason.startswith(
                Reason.OPERATOR_HALT.value
            ):  # keep the kill-switch's reason, so a later resume cannot lift it
                note = f"already halted by kill-switch {s.risk.halt_reason!r}; kept"
            else:
                s.risk.halt(f"{Reason.OPERATOR_HALT.value}: {cmd.reason}")
        elif cmd.command == "resume":
            if s.risk.state is TradingState.HALTED and not s.risk.halt_reason.startswith(
                Reason.OPERATOR_HALT.value
            ):
                note = (
                    f"ignored: halted by kill-switch {s.risk.halt_reason!r}; "
                    "only reset_kill_switch resumes it"
                )
            else:
                s.risk.state, s.risk.halt_reason = TradingState.ACTIVE, ""
        elif cmd.command == "reset_kill_switch":
            s.risk.reset(s.portfolio.equity(mark_px))
        elif cmd.command == "shadow_on":
            s.shadow = True
        elif cmd.command == "shadow_off":
            s.shadow = False
        after = {"trading_state": s.risk.state.value, "shadow": s.shadow}
        return self._repro(
            cmd.ts_event_ms, "control", cmd, {"before": before, "after": after, "result": note}
        )

    def _restored_state(self) -> dict[str, Any]:
        """What a restart brought back, for the audit trail: an operator reading the resume
        event sees the position, trading state and posteriors the strategy continues with."""
        s, pf, r = self.s, self.s.portfolio, self.s.risk
        return {
            "bars": s.bar_index,
            "position_qty": pf.qty,
            "avg_px": pf.avg_px,
            "cash_usd": pf.cash,
            "open_decision_id": None if s.open_trade is None else s.open_trade.decision_id,
            "pending_decision_id": None if s.pending is None else s.pending.decision_id,
            "trading_state": r.state.value,
            "halt_reason": r.halt_reason,
            "peak_equity_usd": r.peak_equity,
            "consecutive_losses": r.consecutive_losses,
            "bandit": s.bandit.as_dict(),
        }

    def _repro(
        self, t: int, event: str, cmd: ControlCommand | None, change: dict[str, Any]
    ) -> Output:
        command = (
            None
            if cmd is None
            else {
                "command": cmd.command,
                "operator": cmd.operator,
                "reason": cmd.reason,
                "command_id": cmd.command_id,
                "ts_command_ms": cmd.ts_event_ms,
                "signer": cmd.signer,
            }
        )
        return (
            "repro",
            self.stamp(
                self.s.symbol,
                t,
                event=event,
                config_json=json.dumps(self.cfg.as_dict(), sort_keys=True),
                model_id=self.model_info.get("model_id", ""),
                model_sha256=self.model_info.get("model_sha256", ""),
                command=command,
                change_json=json.dumps(change, sort_keys=True),
            ),
        )

    # -- the decision ----------------------------------------------------------------------
    def _decide(self, ctx: BarContext) -> tuple[dict[str, Any], list[Output]]:
        s, cfg, bar = self.s, self.cfg, ctx.bar
        t = bar.end_ms
        did = f"{cfg.strategy_id}:{s.symbol}:{t}"
        d: dict[str, Any] = {
            "decision_id": did,
            "action": "no_trade",
            "reason": "",
            "chosen_arm": None,
            "eligible": {},
            "samples": {},
            "direction": 0,
            "alpha": 0.0,
            "conf_min": None,
            "target_position": None,
            "vol_scale": None,
            "would_veto": [],
        }
        out: list[Output] = []
        entry = self._entry_decision(ctx, d, out) if ctx.features is not None else None
        if entry is None and not d["reason"]:
            d["reason"] = Reason.WARMUP.value
        if entry is not None:
            direction, target, arm = entry
            order_qty = target * cfg.risk.base_notional / bar.close - s.portfolio.qty
            adv = math.fsum(s.volume_usd)
            veto = pretrade_veto(
                state=s.risk.state,
                current_qty=s.portfolio.qty,
                direction=direction,
                bars_since_entry=None
                if s.last_entry_bar is None
                else s.bar_index - s.last_entry_bar,
                order_notional=abs(order_qty) * bar.close,
                adv_notional=adv,
                cfg=cfg.risk,
            )
            if veto is not None:
                d["action"], d["reason"] = "vetoed", veto[0].value
                out.append(self._rejection(t, did, "risk", veto[0], veto[1], arm, direction))
            else:
                purpose = Reason.FLIP if s.portfolio.qty != 0 else Reason.ENTRY
                d["action"], d["reason"] = "trade", purpose.value
                out.append(self._intent(ctx, did, order_qty, purpose, arm, target))
                s.last_entry_bar = s.bar_index
        if s.pending is None and s.portfolio.qty != 0:
            exit_reason = None
            if s.risk.state is TradingState.HALTED:
                exit_reason = Reason.KILL_SWITCH_FLATTEN
            elif s.open_trade is not None and (
                s.bar_index - s.open_trade.entry_bar >= cfg.risk.max_hold_bars
            ):
                exit_reason = Reason.TIME_EXIT
            if exit_reason is not None:
                if d["action"] == "no_trade":
                    d["action"] = "exit"
                d["exit"] = exit_reason.value
                out.append(
                    self._intent(
                        ctx,
                        did,
                        -s.portfolio.qty,
                        exit_reason,
                        s.open_trade.arm if s.open_trade else None,
                        0.0,
                    )
                )
        return d, out

    def _entry_decision(
        self, ctx: BarContext, d: dict[str, Any], out: list[Output]
    ) -> tuple[int, float, str] | None:
        """The bandit's choice through gates and sizing: (direction, target, arm) or None."""
        s, cfg = self.s, self.cfg
        feats = ctx.features
        assert feats is not None
        if s.bar_index <= cfg.warmup_bars or ctx.p_up is None:
            d["reason"] = Reason.WARMUP.value
            return None
        s.decisions += 1
        mv = model_view(ctx.p_up, ctx.p_up_bma, cfg.flip_model)
        s.recent_conf.append(mv.conf)
        s.calib_pending.append((s.bar_index, ctx.p_up, ctx.bar.close))
        sig = Signals(ctx.cohort.s_top, ctx.cohort.s_bot, ctx.cohort.s_mood, mv)
        th, gates = cfg.thresholds, cfg.gates
        conf_min = effective_conf_min(th, gates, feats["rv_1h_annual"])
        if gates.dynamic_conf_min is GuardMode.SHADOW:
            raised = effective_conf_min(
                th, dataclasses.replace(gates, dynamic_conf_min=GuardMode.ON), feats["rv_1h_annual"]
            )
            if mv.conf < raised and mv.conf >= conf_min:
                d["would_veto"].append(f"dynamic_conf_min: conf {mv.conf:.3f} < {raised:.2f}")
        d["conf_min"] = conf_min
        elig = eligibility(sig, th, conf_min)
        d["eligible"] = elig
        if not any(elig.values()):
            d["reason"] = Reason.NO_ELIGIBLE_ARM.value
            return None
        arm, samples = s.bandit.select(elig, s.rng)
        d["chosen_arm"], d["samples"] = arm, samples
        direction, alpha = direction_and_alpha(arm, sig, th)
        d["direction"], d["alpha"] = direction, alpha
        if direction == 0:
            d["reason"] = Reason.BELOW_SIDE_THRESHOLD.value
            return None
        t = ctx.bar.end_ms
        for veto in (
            low_conf_veto(arm, mv.conf, gates),
            consensus_veto(direction, ctx.overlays["1h"].usable_trend, gates),
        ):
            if veto is None:
                continue
            if veto.shadow:
                d["would_veto"].append(f"{veto.reason.value}: {veto.detail}")
                continue
            d["action"], d["reason"] = "vetoed", veto.reason.value
            out.append(
                self._rejection(
                    t, d["decision_id"], "gate", veto.reason, veto.detail, arm, direction
                )
            )
            return None
        rv = feats["rv_annual"]
        if not rv > 0.0:
            d["reason"] = "no_volatility"
            return None
        applied, computed = sizing_scale(rv, cfg.risk)
        if cfg.risk.vol_guard is GuardMode.SHADOW and computed < 1.0:
            d["would_veto"].append(f"vol_guard: scale {computed:.3f} at rv {rv:.3f}")
        d["vol_scale"] = applied
        target = target_position(direction, alpha, rv, cfg.risk, applied)
        d["target_position"] = target
        return direction, target, arm

    def _count_rejection(self, reason: Reason) -> None:
        self.s.rejections[reason.value] = self.s.rejections.get(reason.value, 0) + 1

    def _rejection(
        self,
        t: int,
        did: str,
        stage: str,
        reason: Reason,
        detail: str,
        arm: str | None,
        direction: int,
    ) -> Output:
        self._count_rejection(reason)
        return (
            "rejections",
            self.stamp(
                self.s.symbol,
                t,
                decision_id=did,
                stage=stage,
                reason=reason.value,
                detail=detail,
                arm=arm,
                direction=direction,
                trading_state=self.s.risk.state.value,
            ),
        )

    def _intent(
        self, ctx: BarContext, did: str, qty: float, purpose: Reason, arm: str | None, target: float
    ) -> Output:
        s, bar = self.s, ctx.bar
        coid = "ens-" + hashlib.sha256(did.encode()).hexdigest()[:24]
        s.pending = PendingIntent(did, coid, qty, purpose, arm, s.bar_index, bar.end_ms)
        return (
            "orders",
            self.stamp(
                s.symbol,
                bar.end_ms,
                decision_id=did,
                client_order_id=coid,
                side="buy" if qty > 0 else "sell",
                qty=abs(qty),
                ref_px=bar.close,
                notional_usd=abs(qty) * bar.close,
                purpose=purpose.value,
                arm=arm,
                target_position=target,
                position_qty=s.portfolio.qty,
                fill_rule="next_bar_open",
                dry_run=self.cfg.execution.dry_run,
            ),
        )

    # -- telemetry ------------------------------------------------------------------------
    def _signals(self, ctx: BarContext, d: dict[str, Any]) -> Output:
        bar = ctx.bar
        model = None
        if ctx.p_up is not None:
            mv = model_view(ctx.p_up, ctx.p_up_bma, self.cfg.flip_model)
            model = {
                "p_up": mv.p_up,
                "p_down": mv.p_down,
                "conf": mv.conf,
                "alpha": mv.alpha,
                "s_model_meta": mv.s_model_meta,
                "s_model_bma": mv.s_model_bma,
                "model_id": ctx.model_id,
            }
        c = ctx.cohort
        decision = dict(d)
        decision.setdefault("exit", None)
        return (
            "signals",
            self.stamp(
                self.s.symbol,
                bar.end_ms,
                bar={
                    "open": bar.open,
                    "high": bar.high,
                    "low": bar.low,
                    "close": bar.close,
                    "volume": bar.volume,
                    "count": bar.count,
                    "complete": bar.complete,
                },
                features=ctx.features,
                model=model,
                cohort={
                    "s_top": c.s_top,
                    "s_bot": c.s_bot,
                    "s_mood": c.s_mood,
                    "source": c.source,
                    "age_ms": c.age_ms,
                    "stale": c.stale,
                },
                decision=decision,
                trading_state=self.s.risk.state.value,
                shadow=self.s.shadow,
            ),
        )

    def _ensemble(self, ctx: BarContext, d: dict[str, Any]) -> Output:
        rows = []
        s5 = (
            0.0
            if ctx.p_up is None
            else model_view(ctx.p_up, ctx.p_up_bma, self.cfg.flip_model).s_model_meta
        )
        rows.append(
            {
                "timeframe": "5m",
                "signal": s5,
                "trend": ctx.bar.ret if ctx.bar.count else 0.0,
                "age_ms": 0,
                "stale": False,
                "missing": ctx.p_up is None,
                "ext_signal": 0.0,
                "ext_confidence": 0.0,
                "ext_stale": False,
            }
        )
        for tf in ("15m", "1h"):
            o = ctx.overlays[tf]
            rows.append(
                {
                    "timeframe": tf,
                    "signal": o.ext_signal,
                    "trend": o.trend,
                    "age_ms": o.age_ms,
                    "stale": o.stale,
                    "missing": o.missing,
                    "ext_signal": o.ext_signal,
                    "ext_confidence": o.ext_confidence,
                    "ext_stale": o.ext_stale,
                }
            )
        direction = d["direction"]
        usable = [ctx.overlays[tf].usable_trend for tf in ("15m", "1h")]
        usable = [u for u in usable if u is not None and u != 0.0]
        agree = sum(1 for u in usable if (u > 0) == (direction > 0)) if direction else 0
        return (
            "ensemble",
            self.stamp(
                self.s.symbol,
                ctx.bar.end_ms,
                timeframes=rows,
                combined={
                    "direction": direction,
                    "chosen_arm": d["chosen_arm"],
                    "agreeing_overlays": agree,
                    "usable_overlays": len(usable),
                    "action": d["action"],
                },
            ),
        )

    def _health(self, t: int, equity: float) -> Output:
        s, pf, r = self.s, self.s.portfolio, self.s.risk
        closed = s.wins + s.losses
        avg_conf = sum(s.recent_conf) / len(s.recent_conf) if s.recent_conf else None
        dd = r.drawdown(equity)
        if r.state is TradingState.HALTED:
            status = "halted"
        elif (
            dd > 0.5 * self.cfg.risk.max_drawdown
            or r.consecutive_losses >= self.cfg.risk.max_consecutive_losses
            or (avg_conf is not None and avg_conf < 0.5)
        ):
            status = "needs_attention"
        else:
            status = "ok"
        return (
            "health",
            self.stamp(
                s.symbol,
                t,
                heartbeat_seq=s.bar_index,
                bars=s.bar_index,
                gap_bars=s.gap_bars,
                equity_usd=equity,
                cash_usd=pf.cash,
                position_qty=pf.qty,
                position_notional_usd=pf.qty * s.last_close,
                unrealized_usd=pf.unrealized(s.last_close),
                realized_usd=pf.realized_usd,
                fees_usd=pf.fees_usd,
                funding_usd=pf.funding_usd,
                drawdown=dd,
                max_drawdown=r.max_drawdown_seen,
                peak_equity_usd=r.peak_equity,
                round_trips=s.trades,
                wins=s.wins,
                losses=s.losses,
                win_rate=None if closed == 0 else s.wins / closed,
                avg_conf=avg_conf,
                sharpe_30d=self._sharpe_30d(),
                consecutive_losses=r.consecutive_losses,
                trading_state=r.state.value,
                halt_reason=r.halt_reason,
                strategy_status=status,
                bandit=s.bandit.as_dict(),
            ),
        )

    def _track_daily(self, t: int, equity: float) -> None:
        day = t // DAY_MS
        de = self.s.daily_equity
        if de and de[-1][0] == day:
            de[-1] = (day, equity)
        else:
            de.append((day, equity))

    def _sharpe_30d(self) -> float | None:
        """Annualised (x sqrt(365)) Sharpe of up to 30 daily returns; None under 2 returns."""
        eq = [e for _, e in self.s.daily_equity]
        rets = [b / a - 1.0 for a, b in zip(eq, eq[1:], strict=False) if a > 0]
        if len(rets) < 2:
            return None
        m = sum(rets) / len(rets)
        sd = math.sqrt(sum((x - m) ** 2 for x in rets) / (len(rets) - 1))
        return None if sd == 0 else m / sd * math.sqrt(365)

    def _resolve_calibration(self, close: float) -> None:
        s = self.s
        h = int(self.model_info.get("horizon_bars", 1))
        while s.calib_pending and s.bar_index - s.calib_pending[0][0] >= h:
            _, p, c0 = s.calib_pending.popleft()
            s.calib_resolved.append((p, 1.0 if close > c0 else 0.0))

    def _calibration(self, t: int) -> Output:
        pairs = list(self.s.calib_resolved)
        n = len(pairs)
        brier = sum((p - y) ** 2 for p, y in pairs) / n
        base = sum(y for _, y in pairs) / n
        bins = []
        for i in range(_BINS):
            lo, hi = i / _BINS, (i + 1) / _BINS
            sel = [(p, y) for p, y in pairs if lo <= p < hi or (i == _BINS - 1 and p == 1.0)]
            if sel:
                bins.append(
                    {
                        "lo": lo,
                        "hi": hi,
                        "n": len(sel),
                        "mean_p": sum(p for p, _ in sel) / len(sel),
                        "freq_up": sum(y for _, y in sel) / len(sel),
                    }
                )
        return (
            "calibration",
            self.stamp(
                self.s.symbol,
                t,
                model_id=self.model_info.get("model_id", ""),
                horizon_bars=int(self.model_info.get("horizon_bars", 1)),
                window=n,
                brier=brier,
                brier_climatology=base * (1 - base),
                hit_rate=sum(1 for p, y in pairs if (p >= 0.5) == (y == 1.0)) / n,
                bins=bins,
            ),
        )
