"""Position sizing, pre-trade guards, kill-switches and the trading state.

Sizing (SPEC 6): target = clamp((sigma_target / rv) * alpha * vol_scale, +-pos_max), as a
fraction of base_notional, where vol_scale = max(min_scale, sigma_cap / rv) when
rv > sigma_cap (the vol guard) and 1 otherwise. Kill-switches: drawdown from peak
equity over max_drawdown, a day's loss over daily_loss_limit, or more than
max_consecutive_losses losing trades in a row put the symbol in HALTED until an operator
resets it. There is no reduce-only state: SPEC 6 has every limit halt and flatten.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from operators.config import GuardMode, RiskConfig
from operators.kpis import DAY_MS, is_win, utc_day
from operators.reasons import Reason, is_kill_switch

__all__ = ["DAY_MS", "RiskState", "TradingState", "pretrade_veto", "sizing_scale"]


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    HALTED = "HALTED"  # no new exposure; open exposure is flattened


def vol_guard_scale(rv_annual: float, sigma_cap: float, min_scale: float) -> float:
    """rv 1.6 with cap 0.8 and min scale 0.25 -> 0.5; rv 5.0 -> 0.25; rv <= cap -> 1."""
    if rv_annual <= sigma_cap:
        return 1.0
    return max(min_scale, sigma_cap / rv_annual)


def target_position(
    direction: int, alpha: float, rv_annual: float, cfg: RiskConfig, vol_scale: float = 1.0
) -> float:
    """Signed target position as a fraction of base_notional, clamped to +-pos_max."""
    if direction == 0 or alpha <= 0.0:
        return 0.0
    if not rv_annual > 0.0:
        raise ValueError(f"realised volatility must be > 0 to size a position, got {rv_annual!r}")
    size = min((cfg.sigma_target / rv_annual) * alpha * vol_scale, cfg.pos_max)
    return direction * size


def sizing_scale(rv_annual: float, cfg: RiskConfig) -> tuple[float, float]:
    """(scale applied, scale the vol guard computed); they differ in shadow mode."""
    computed = vol_guard_scale(rv_annual, cfg.vol_guard_sigma, cfg.vol_guard_min_scale)
    applied = computed if cfg.vol_guard is GuardMode.ON else 1.0
    return applied, computed


@dataclass
class RiskState:
    state: TradingState = TradingState.ACTIVE
    halt_reason: str = ""
    peak_equity: float = 0.0
    day: int = -1  # UTC day number of day_start_equity
    day_start_equity: float = 0.0
    last_equity: float | None = None  # at the last mark: the next day's start
    consecutive_losses: int = 0
    max_drawdown_seen: float = 0.0

    def drawdown(self, equity: float) -> float:
        return 0.0 if self.peak_equity <= 0 else max(0.0, 1.0 - equity / self.peak_equity)

    def mark(self, equity: float, ts_ms: int) -> None:
        """Track peak, day start and max drawdown at a mark-to-market (a 5m close)."""
        day = utc_day(ts_ms)
        if day != self.day:
            start = equity if self.last_equity is None else self.last_equity
            self.day, self.day_start_equity = day, start
        self.last_equity = equity
        self.peak_equity = max(self.peak_equity, equity)
        self.max_drawdown_seen = max(self.max_drawdown_seen, self.drawdown(equity))

    def record_trade_result(self, net_pnl: float) -> None:
        self.consecutive_losses = 0 if is_win(net_pnl) else self.consecutive_losses + 1

    @property
    def kill_switch_engaged(self) -> bool:
        """HALTED by a kill-switch (the symbol's or the account's), not by an operator."""
        return self.state is TradingState.HALTED and is_kill_switch(self.halt_reason)

    def check_kill_switches(self, equity: float, cfg: RiskConfig) -> Reason | None:
        """The kill-switch that fires now, if any (none while one is engaged). An operator's
        halt does not mask one: it fires and takes over, so `resume` cannot lift it."""
        if self.kill_switch_engaged:
            return None
        if self.drawdown(equity) > cfg.max_drawdown:
            return Reason.DRAWDOWN_LIMIT
        if (
            self.day_start_equity > 0
            and 1.0 - equity / self.day_start_equity > cfg.daily_loss_limit
        ):
            return Reason.DAILY_LOSS_LIMIT
        if self.consecutive_losses > cfg.max_consecutive_losses:
            return Reason.CONSECUTIVE_LOSSES
        return None

    def halt(self, reason: str) -> None:
        self.state, self.halt_reason = TradingState.HALTED, reason

    def reset(self, equity: float) -> None:
        """An operator's reset: trading resumes and the limits re-arm from here."""
        self.state, self.halt_reason = TradingState.ACTIVE, ""
        self.peak_equity = equity
        self.day_start_equity = equity
        self.consecutive_losses = 0


def pretrade_veto(
    *,
    state: TradingState,
    current_qty: float,
    direction: int,
    bars_since_entry: int | None,
    order_notional: float,
    adv_notional: float,
    cfg: RiskConfig,
) -> tuple[Reason, str] | None:
    """The first pre-trade guard that vetoes a new entry (or flip) in `direction`, or None.

    Exits (time exit, kill-switch flatten) reduce exposure and do not pass through here.
    """
    if state is TradingState.HALTED:
        return Reason.TRADING_STATE_HALTED, "trading is halted until an operator resets it"
    if current_qty != 0 and (current_qty > 0) == (direction > 0):
        return Reason.NO_DOUBLING_DOWN, "already positioned in this direction"
    if bars_since_entry is not None and bars_since_entry <= cfg.cooldown_bars:
        return Reason.COOLDOWN, (
            f"{bars_since_entry} bar(s) since the last entry, cooldown {cfg.cooldown_bars}"
        )
    if cfg.adv_cap_pct > 0 and order_notional > adv_notional * cfg.adv_cap_pct / 100.0:
        return Reason.ADV_CAP, (
            f"order {order_notional:.0f} USD over {cfg.adv_cap_pct}% of "
            f"1-day volume {adv_notional:.0f} USD"
        )
    if order_notional < cfg.min_order_notional:
        return Reason.BELOW_MIN_ORDER, (
            f"order {order_notional:.2f} USD < {cfg.min_order_notional}"
        )
    return None
