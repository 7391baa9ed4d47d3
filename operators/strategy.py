"""One symbol's strategy step, in the order SPEC 6-7 describe it.

Bytewax has no cycles, and the bandit's reward needs the outcome of earlier decisions, so
the steps of a bar run here, one after the other; each concern lives in its own module:

1. fill the intent decided at the previous close at this bar's open (`fills`, `ledger`,
   the paper broker in `execution`);
2. apply funding settlements and operator commands with event time <= t, in order (a
   settlement on the position after the fill, at the price at its time: `settlement_price`);
3. mark to market at the close; the symbol's kill-switches (`risk`); then, once every
   symbol closing at that time is marked, the account's limits (`account`, `on_close`);
4. decide: eligibility → Thompson bandit (`bandit`) → side threshold → gates (`gating`) →
   sizing → pre-trade guards (`risk`, the account's gross exposure, no gap bar in the
   features' lookback) → an order intent for the next bar, or a rejection with its reason;
   with no new entry, a position is closed after `max_hold_bars` (the model's label
   horizon) bars from fill to fill (time exit), and a halted symbol's position is
   flattened; an exit is an order of its own, naming the entry it closes;
5. emit signals, ensemble, health and (hourly) calibration telemetry (`records`, `kpis`).
Every intent is answered by exactly one execution or rejection (linked by its id). State
(`state.SymbolState`) is data only; the configuration is passed in, never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

from operators import records
from operators.account import AccountRisk
from operators.bars import Bar
from operators.config import GuardMode, StrategyConfig
from operators.events import ControlCommand
from operators.features import LOOKBACK_BARS
from operators.fills import fill_pending
from operators.gating import (
    Signals,
    arms_in_use,
    consensus_veto,
    direction_and_alpha,
    effective_conf_min,
    eligibility,
    low_conf_veto,
    model_view,
)
from operators.kpis import calibration, returns_of, sharpe, utc_day
from operators.ledger import PendingIntent
from operators.overlays import BarContext
from operators.reasons import Reason
from operators.records import Output
from operators.risk import TradingState, pretrade_veto, sizing_scale, target_position
from operators.state import SymbolState, new_state, symbol_seed
from operators.telemetry import Stamp

__all__ = ["BarFailed", "Output", "Strategy", "SymbolState", "new_state", "symbol_seed"]

CALIBRATION_EVERY_BARS = 12


def settlement_price(bar: Bar, ts_ms: int) -> float:
    """The last price at or before a funding settlement at `ts_ms`, which the bar closing at
    or after it brings: its close for one at the bar's end (settlements fall on the hour,
    a 5m close), its open for one inside the bar (a venue's stamp a few ms past the hour)."""
    if ts_ms >= bar.end_ms or not bar.count:
        return bar.close
    return bar.open


def on_close(
    group: list[tuple[Strategy, BarContext]],
) -> list[tuple[list[Output], Exception | None]]:
    """The bars of every symbol that close at one time, as one close of their account: each
    symbol's fill, funding, commands and mark first; then the account's limits on all those
    marks together; then each symbol's decision. Per symbol, its outputs and the exception
    a step raised (its later steps skipped), in the group's order.

    Deciding a symbol before another's mark at the same close let an entry out at the close
    where the other's loss halted the account (filled at the next open, then flattened),
    and made the account's peak of one symbol's new mark and another's old one."""
    results: list[tuple[list[Output], Exception | None]] = []
    marked: list[tuple[int, float]] = []
    for i, (strat, ctx) in enumerate(group):
        out: list[Output] = []
        try:
            marked.append((i, strat._mark(ctx, out)))
            results.append((out, None))
        except Exception as exc:
            results.append((out, exc))
    accounts = {id(group[i][0].account): group[i][0] for i, _ in marked}  # one, in the flow
    for strat in accounts.values():
        acct = strat.account
        acct.close(group[0][1].bar.end_ms)
        hit = acct.check(strat.cfg.account)
        if hit is not None:
            acct.halt(*hit)
    for i, equity in marked:
        strat, ctx = group[i]
        out = results[i][0]
        try:
            strat._decide_and_report(ctx, out, equity)
        except Exception as exc:
            results[i] = (out, exc)
    return results


class BarFailed(Exception):
    """A step of the bar raised; `outputs` are the records of the steps that completed."""

    def __init__(self, outputs: list[Output]) -> None:
        super().__init__("the strategy step failed part-way through a bar")
        self.outputs = outputs


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
        account: AccountRisk | None = None,
    ) -> None:
        if "horizon_bars" not in model_info:
            raise ValueError("model_info needs the model's horizon_bars (its manifest)")
        cfg = cfg.with_model_horizon(int(model_info["horizon_bars"]))
        self.base_cfg = cfg
        self.shadow_cfg = _shadowed(cfg)
        self.s = state
        self.stamp = stamp
        self.model_info = model_info
        self.resumed = resumed
        # shared by every symbol of the account in the flow; a lone strategy has its own
        self.account = account or AccountRisk.new([state.symbol], cfg.risk.initial_equity)
        self._sharpe_memo: tuple[list[float], float | None] = ([], None)

    @property
    def cfg(self) -> StrategyConfig:
        return self.shadow_cfg if self.s.shadow else self.base_cfg

    # -- the bar ---------------------------------------------------------------------
    def on_bar(self, ctx: BarContext) -> list[Output]:
        """The bar's outputs, as a close of the account at which no other symbol closes
        (`on_close` takes every symbol's bar closing at one time). If a step raises,
        `BarFailed` carries what the steps before it emitted: every state change made so
        far has its record (a fill its execution), so state and outputs never disagree."""
        [(out, failure)] = on_close([(self, ctx)])
        if failure is not None:
            raise BarFailed(out) from failure
        return out

    def _mark(self, ctx: BarContext, out: list[Output]) -> float:
        """Steps 1-3 of the bar up to the symbol's own kill-switches and its book in the
        account; returns the equity marked at the close."""
        s, bar = self.s, ctx.bar
        t = bar.end_ms
        if not s.started or self.resumed:
            event = "resume" if s.started else "start"
            restored = self._restored_state() if s.started else {}
            out.append(self._repro(t, event, None, restored))
            s.started, self.resumed = True, False
        s.bar_index += 1
        if not bar.complete:
            s.last_gap_bar = s.bar_index
            if bar.count == 0:
                s.gap_bars += 1
        # 1. fill
        if s.pending is not None:
            fill_pending(s, ctx, self.cfg, self.stamp, out)
        # 2. funding and operator commands
        for f in ctx.funding_due:
            flow = s.portfolio.pay_funding(f.rate, settlement_price(bar, f.ts_event_ms))
            if s.open_trade is not None:
                s.open_trade.funding_usd += flow
        for cmd in ctx.controls_due:
            out.append(self._control(cmd, bar.close))
        # 3. mark, kill-switches, the book in the account (its limits: `on_close`)
        s.last_close = bar.close
        s.volume_usd.append(bar.volume * bar.close)
        equity = s.portfolio.equity(bar.close)
        s.risk.mark(equity, t)
        self._track_daily(t, equity)
        fired = s.risk.check_kill_switches(equity, self.cfg.risk)
        if fired is not None:
            s.risk.halt(fired.value)
        self.account.book(s.symbol, equity, s.portfolio.qty * bar.close)
        return equity

    def _decide_and_report(self, ctx: BarContext, out: list[Output], equity: float) -> None:
        """Steps 3-5 after the account's limits at this close: decide, then telemetry."""
        s, bar, t = self.s, ctx.bar, ctx.bar.end_ms
        acct = self.account
        if acct.state is TradingState.HALTED and not s.risk.kill_switch_engaged:
            s.risk.halt(acct.halt_reason)  # an account halt halts and flattens every symbol
        self._resolve_calibration(bar.close)
        # 4. decide
        decision = self._decide(ctx, out)
        # 5. telemetry
        cfg = self.cfg
        mv = None if ctx.p_up is None else model_view(ctx.p_up, ctx.p_up_bma, cfg.flip_model)
        out.append(records.signals(self.stamp, ctx, decision, mv, s.risk.state, s.shadow))
        out.append(records.ensemble(self.stamp, ctx, decision, mv))
        status = records.strategy_status(s, equity, cfg)
        sharpe_30d = self._sharpe_30d()
        bandit = s.bandit.as_dict(cfg.bandit, arms_in_use(cfg.size_proxy.enabled))
        out.append(records.health(self.stamp, s, t, equity, status, sharpe_30d, bandit))
        if s.bar_index % CALIBRATION_EVERY_BARS == 0 and s.calib_resolved:
            pairs = list(s.calib_resolved)
            c = calibration([p for p, _ in pairs], [y for _, y in pairs])
            out.append(records.calibration(self.stamp, s.symbol, t, self.model_info, c))

    def on_eof(self) -> list[Output]:
        """The input ended: an intent that can no longer be filled is rejected."""
        s = self.s
        if s.pending is None:
            return []
        p, s.pending = s.pending, None
        detail = "the input ended before the next bar"
        return [
            self._rejection(
                p.decided_ms, p.decision_id, "execution", Reason.END_OF_DATA, detail, p.arm,
                p.direction,
            )
        ]  # fmt: skip

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
            "warmup_bars": self.cfg.warmup_bars,  # so the summary can say why nothing decided
        }

    # -- operator commands -------------------------------------------------------------
    def on_control(self, cmd: ControlCommand) -> list[Output]:
        """Live: a command applied on arrival, between bars, marked at the last close."""
        return [self._control(cmd, self.s.last_close)]

    def _control(self, cmd: ControlCommand, mark_px: float) -> Output:
        s = self.s
        before = {"trading_state": s.risk.state.value, "shadow": s.shadow}
        note = "applied"
        if cmd.command == "halt":
            if s.risk.kill_switch_engaged:  # its reason kept: a later resume cannot lift it
                note = f"already halted by kill-switch {s.risk.halt_reason!r}; kept"
            else:
                s.risk.halt(f"{Reason.OPERATOR_HALT.value}: {cmd.reason}")
        elif cmd.command == "resume":
            if s.risk.kill_switch_engaged:
                note = (
                    f"ignored: halted by kill-switch {s.risk.halt_reason!r}; "
                    "only reset_kill_switch resumes it"
                )
            else:
                s.risk.state, s.risk.halt_reason = TradingState.ACTIVE, ""
        elif cmd.command == "reset_kill_switch":
            s.risk.reset(s.portfolio.equity(mark_px))
            if self.account.state is TradingState.HALTED:
                self.account.reset()
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
            "bandit": s.bandit.as_dict(self.cfg.bandit, arms_in_use(self.cfg.size_proxy.enabled)),
            "account": {
                "trading_state": self.account.state.value,
                "halt_reason": self.account.halt_reason,
                "peak_equity_usd": self.account.peak_equity,
            },
        }

    def _repro(
        self, t: int, event: str, cmd: ControlCommand | None, change: dict[str, Any]
    ) -> Output:
        return records.repro(
            self.stamp, self.s.symbol, t, event, cmd, change, self.cfg, self.model_info
        )

    # -- the decision ----------------------------------------------------------------------
    def _decide(self, ctx: BarContext, out: list[Output]) -> dict[str, Any]:
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
            new_notional = abs(s.portfolio.qty + order_qty) * bar.close
            if veto is None:
                veto = self.account.entry_veto(s.symbol, new_notional, cfg.account)
            if veto is None and s.last_gap_bar is not None:
                since = s.bar_index - s.last_gap_bar
                if since < LOOKBACK_BARS:
                    veto = (
                        Reason.GAP_IN_LOOKBACK,
                        (
                            f"a bar without complete data {since} bar(s) ago is inside the "
                            f"features' {LOOKBACK_BARS}-bar lookback"
                        ),
                    )
            if veto is not None:
                d["action"], d["reason"] = "vetoed", veto[0].value
                out.append(self._rejection(t, did, "risk", veto[0], veto[1], arm, direction))
            else:
                purpose = Reason.FLIP if s.portfolio.qty != 0 else Reason.ENTRY
                d["action"], d["reason"] = "trade", purpose.value
                closes = None if s.open_trade is None else s.open_trade.decision_id
                out.append(self._intent(ctx, did, order_qty, purpose, arm, target, closes))
                self.account.commit(s.symbol, new_notional)
                mv = model_view(ctx.p_up, ctx.p_up_bma, cfg.flip_model)
                s.recent_side_p.append(mv.p_up if direction > 0 else mv.p_down)
        if s.pending is None and s.portfolio.qty != 0:
            exit_reason = None
            if s.risk.state is TradingState.HALTED:
                exit_reason = Reason.KILL_SWITCH_FLATTEN
            elif s.open_trade is not None and (
                # held from the entry bar's open to the next bar's open, where the exit fills
                s.bar_index + 1 - s.open_trade.entry_bar >= cfg.risk.max_hold_bars
            ):
                exit_reason = Reason.TIME_EXIT
            if exit_reason is not None:
                # the exit is an order of its own: its own id, linked to the entry it closes
                d["action"], d["exit"] = "exit", exit_reason.value
                ot = s.open_trade
                out.append(
                    self._intent(
                        ctx,
                        f"{did}:{exit_reason.value}",
                        -s.portfolio.qty,
                        exit_reason,
                        ot.arm if ot else None,
                        0.0,
                        ot.decision_id if ot else None,
                    )
                )
        return d

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
        s.calib_pending.append((s.bar_index, mv.p_up, ctx.bar.close))
        sig = Signals(ctx.cohort.s_top, ctx.cohort.s_bot, ctx.cohort.s_mood, mv, ctx.size_proxy)
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
        arm, samples = s.bandit.select(elig, s.rng, cfg.bandit)
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
            d["reason"] = Reason.NO_VOLATILITY.value
            return None
        applied, computed = sizing_scale(rv, cfg.risk)
        if cfg.risk.vol_guard is GuardMode.SHADOW and computed < 1.0:
            d["would_veto"].append(f"vol_guard: scale {computed:.3f} at rv {rv:.3f}")
        d["vol_scale"] = applied
        target = target_position(direction, alpha, rv, cfg.risk, applied)
        d["target_position"] = target
        return direction, target, arm

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
        self.s.count_rejection(reason.value)
        return records.rejection(
            self.stamp, self.s.symbol, t, did, stage, reason, detail, arm, direction,
            self.s.risk.state,
        )  # fmt: skip

    def _intent(
        self,
        ctx: BarContext,
        did: str,
        qty: float,
        purpose: Reason,
        arm: str | None,
        target: float,
        entry_did: str | None = None,
    ) -> Output:
        s, bar = self.s, ctx.bar
        coid = "ens-" + hashlib.sha256(did.encode()).hexdigest()[:24]
        rv = (ctx.features or {}).get("rv_annual")
        s.pending = PendingIntent(
            did, coid, qty, purpose, arm, s.bar_index, bar.end_ms, entry_did, rv
        )
        return records.order(
            self.stamp, s.symbol, bar.end_ms, s.pending, bar.close, target, s.portfolio.qty,
            self.cfg.execution.dry_run,
        )  # fmt: skip

    # -- daily equity and calibration ---------------------------------------------------------
    def _track_daily(self, t: int, equity: float) -> None:
        day = utc_day(t)
        de = self.s.daily_equity
        if de and de[-1][0] == day:
            de[-1] = (day, equity)
        else:
            de.append((day, equity))

    def _sharpe_30d(self) -> float | None:
        """Sharpe of the daily closes, recomputed only when one of them moved (flat, the
        equity stays put bar after bar, and numpy's std cost more than the decision)."""
        equity = [e for _, e in self.s.daily_equity]
        if equity != self._sharpe_memo[0]:
            self._sharpe_memo = (equity, sharpe(returns_of(equity)))
        return self._sharpe_memo[1]

    def _resolve_calibration(self, close: float) -> None:
        s = self.s
        h = int(self.model_info.get("horizon_bars", 1))
        while s.calib_pending and s.bar_index - s.calib_pending[0][0] >= h:
            _, p, c0 = s.calib_pending.popleft()
            s.calib_resolved.append((p, 1.0 if close > c0 else 0.0))
