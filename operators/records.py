"""The strategy's telemetry records, one builder per output stream (schemas/*.avsc).

Builders only shape what the strategy step decided and booked; they change no state.
"""

from __future__ import annotations

import json
from typing import Any

from operators.config import StrategyConfig
from operators.events import ControlCommand
from operators.execution import Fill, Portfolio
from operators.gating import ModelView
from operators.ledger import PendingIntent
from operators.overlays import BarContext
from operators.reasons import Reason
from operators.risk import TradingState
from operators.state import SymbolState
from operators.telemetry import Stamp

Output = tuple[str, dict[str, Any]]
LOW_SIDE_CONF = 0.5  # SPEC 9: trading while recent confidence is below 50% needs attention


def order(
    stamp: Stamp,
    symbol: str,
    ts_ms: int,
    p: PendingIntent,
    ref_px: float,
    target: float,
    position_qty: float,
    dry_run: bool,
) -> Output:
    return (
        "orders",
        stamp(
            symbol,
            ts_ms,
            decision_id=p.decision_id,
            client_order_id=p.client_order_id,
            entry_decision_id=p.entry_decision_id,
            side="buy" if p.qty > 0 else "sell",
            qty=abs(p.qty),
            ref_px=ref_px,
            notional_usd=abs(p.qty) * ref_px,
            purpose=p.purpose.value,
            arm=p.arm,
            target_position=target,
            position_qty=position_qty,
            fill_rule="next_bar_open",
            dry_run=dry_run,
        ),
    )


def rejection(
    stamp: Stamp,
    symbol: str,
    ts_ms: int,
    decision_id: str,
    stage: str,
    reason: Reason,
    detail: str,
    arm: str | None,
    direction: int,
    trading_state: TradingState,
) -> Output:
    return (
        "rejections",
        stamp(
            symbol,
            ts_ms,
            decision_id=decision_id,
            stage=stage,
            reason=reason.value,
            detail=detail,
            arm=arm,
            direction=direction,
            trading_state=trading_state.value,
        ),
    )


def execution(
    stamp: Stamp,
    symbol: str,
    ts_ms: int,
    p: PendingIntent,
    fill: Fill,
    pf: Portfolio,
    trade_pnl: float | None,
    reward: float | None,
    dry_run: bool,
) -> Output:
    return (
        "executions",
        stamp(
            symbol,
            ts_ms,
            decision_id=p.decision_id,
            client_order_id=p.client_order_id,
            entry_decision_id=p.entry_decision_id,
            status="filled",
            side="buy" if fill.qty > 0 else "sell",
            qty=abs(fill.qty),
            fill_px=fill.px,
            ref_px=fill.ref_px,
            slippage_bps=fill.slippage_bps,
            fee_usd=fill.fee_usd,
            notional_usd=abs(fill.qty) * fill.px,
            purpose=p.purpose.value,
            position_qty=pf.qty,
            avg_px=pf.avg_px,
            cash_usd=pf.cash,
            equity_usd=pf.equity(fill.ref_px),
            realized_usd=fill.realized_usd,
            trade_pnl_usd=trade_pnl,
            reward_bps=reward,
            dry_run=dry_run,
        ),
    )


def costs(
    stamp: Stamp, symbol: str, ts_ms: int, decision_id: str, fill: Fill, fee_bps: float
) -> Output:
    return (
        "costs",
        stamp(
            symbol,
            ts_ms,
            decision_id=decision_id,
            fee_usd=fill.fee_usd,
            fee_bps=fee_bps,
            slippage_bps=fill.slippage_bps,
            slippage_usd=abs(fill.qty) * abs(fill.px - fill.ref_px),
            notional_usd=abs(fill.qty) * fill.px,
        ),
    )


def repro(
    stamp: Stamp,
    symbol: str,
    ts_ms: int,
    event: str,
    cmd: ControlCommand | None,
    change: dict[str, Any],
    cfg: StrategyConfig,
    model_info: dict[str, Any],
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
        stamp(
            symbol,
            ts_ms,
            event=event,
            config_json=json.dumps(cfg.as_dict(), sort_keys=True),
            model_id=model_info.get("model_id", ""),
            model_sha256=model_info.get("model_sha256", ""),
            command=command,
            change_json=json.dumps(change, sort_keys=True),
        ),
    )


def signals(
    stamp: Stamp,
    ctx: BarContext,
    decision: dict[str, Any],
    mv: ModelView | None,
    trading_state: TradingState,
    shadow: bool,
) -> Output:
    bar = ctx.bar
    model = None
    if mv is not None:
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
    d = dict(decision)
    d.setdefault("exit", None)
    p = ctx.size_proxy
    proxy = {}  # the field exists only with the proxy on: the presets' records are unchanged
    if p is not None:
        proxy["size_proxy"] = {
            "s_top": p.s_top,
            "s_bot": p.s_bot,
            "s_mood": p.s_mood,
            "top_group": p.top_group,
            "large_min_usd": p.large_min_usd,
            "skill_large": p.skill_large,
            "skill_small": p.skill_small,
        }
    return (
        "signals",
        stamp(
            bar.symbol,
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
            decision=d,
            trading_state=trading_state.value,
            shadow=shadow,
            **proxy,
        ),
    )


def ensemble(stamp: Stamp, ctx: BarContext, d: dict[str, Any], mv: ModelView | None) -> Output:
    rows = [
        {
            "timeframe": "5m",
            "signal": 0.0 if mv is None else mv.s_model_meta,
            "trend": ctx.bar.ret if ctx.bar.count else 0.0,
            "age_ms": 0,
            "stale": False,
            "missing": ctx.p_up is None,
            "ext_signal": 0.0,
            "ext_confidence": 0.0,
            "ext_stale": False,
        }
    ]
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
        stamp(
            ctx.bar.symbol,
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


def strategy_status(s: SymbolState, equity: float, cfg: StrategyConfig) -> str:
    """halted, needs_attention (drawdown past half its limit, a loss streak at its limit, or
    recent entries taken at under 50% model probability for their side), or ok."""
    r = s.risk
    if r.state is TradingState.HALTED:
        return "halted"
    side_p = s.recent_side_p
    if (
        r.drawdown(equity) > 0.5 * cfg.risk.max_drawdown
        or r.consecutive_losses >= cfg.risk.max_consecutive_losses
        or (side_p and sum(side_p) / len(side_p) < LOW_SIDE_CONF)
    ):
        return "needs_attention"
    return "ok"


def health(
    stamp: Stamp,
    s: SymbolState,
    ts_ms: int,
    equity: float,
    status: str,
    sharpe_30d: float | None,
    bandit: dict[str, Any],
) -> Output:
    pf, r = s.portfolio, s.risk
    closed = s.wins + s.losses
    avg_conf = sum(s.recent_conf) / len(s.recent_conf) if s.recent_conf else None
    return (
        "health",
        stamp(
            s.symbol,
            ts_ms,
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
            drawdown=r.drawdown(equity),
            max_drawdown=r.max_drawdown_seen,
            peak_equity_usd=r.peak_equity,
            round_trips=s.trades,
            wins=s.wins,
            losses=s.losses,
            win_rate=None if closed == 0 else s.wins / closed,
            avg_conf=avg_conf,
            sharpe_30d=sharpe_30d,
            consecutive_losses=r.consecutive_losses,
            trading_state=r.state.value,
            halt_reason=r.halt_reason,
            strategy_status=status,
            bandit=bandit,
        ),
    )


def calibration(
    stamp: Stamp, symbol: str, ts_ms: int, model_info: dict[str, Any], c: dict[str, Any]
) -> Output:
    return (
        "calibration",
        stamp(
            symbol,
            ts_ms,
            model_id=model_info.get("model_id", ""),
            horizon_bars=int(model_info.get("horizon_bars", 1)),
            window=c["n"],
            brier=c["brier"],
            brier_climatology=c["brier_climatology"],
            hit_rate=c["hit_rate"],
            bins=c["bins"],
        ),
    )
