"""Typed reason codes for every veto, rejection and no-trade outcome.

One place, so a reason is never a free-text string built in three places; the values are
what appears on the wire and in reports.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # no-trade outcomes of the decision (reported in `signals`, not rejections)
    WARMUP = "warmup"
    NO_ELIGIBLE_ARM = "no_eligible_arm"
    BELOW_SIDE_THRESHOLD = "below_side_threshold"
    NO_VOLATILITY = "no_volatility"  # realised vol is 0: no position can be sized
    # gates (SPEC 6)
    LOW_CONF_VETO = "low_conf_veto"
    CONSENSUS_1H = "veto:1h_trend"
    # pre-trade risk guards
    COOLDOWN = "cooldown"
    NO_DOUBLING_DOWN = "no_doubling_down"
    ADV_CAP = "adv_cap"
    BELOW_MIN_ORDER = "below_min_order"
    TRADING_STATE_HALTED = "trading_state_halted"
    GAP_IN_LOOKBACK = "gap_in_lookback"  # the features look back over a bar without data
    # execution
    STALE_INTENT = "stale_intent"  # the next bar had no trades to fill against
    END_OF_DATA = "end_of_data"  # the input ended before the next bar
    # kill-switches (why the state became HALTED)
    DRAWDOWN_LIMIT = "drawdown_limit"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    CONSECUTIVE_LOSSES = "consecutive_losses"
    OPERATOR_HALT = "operator_halt"
    # account-wide limits (operators/account.py)
    ACCOUNT_DRAWDOWN_LIMIT = "account_drawdown_limit"
    ACCOUNT_DAILY_LOSS_LIMIT = "account_daily_loss_limit"
    ACCOUNT_GROSS_EXPOSURE = "account_gross_exposure"  # an entry vetoed: too much exposure
    # why an order exists
    ENTRY = "entry"
    FLIP = "flip"
    TIME_EXIT = "time_exit"
    KILL_SWITCH_FLATTEN = "kill_switch_flatten"


# Limits whose halt only an operator's reset_kill_switch lifts (alerts call them kill-switches).
KILL_SWITCH_REASONS: tuple[str, ...] = tuple(
    r.value
    for r in (
        Reason.DRAWDOWN_LIMIT,
        Reason.DAILY_LOSS_LIMIT,
        Reason.CONSECUTIVE_LOSSES,
        Reason.ACCOUNT_DRAWDOWN_LIMIT,
        Reason.ACCOUNT_DAILY_LOSS_LIMIT,
    )
)


def is_kill_switch(halt_reason: str) -> bool:
    """Whether a halt reason (`"drawdown_limit: ..."`) is a kill-switch's, which only an
    operator's reset_kill_switch lifts (an operator's own halt is not)."""
    return halt_reason.split(":")[0] in KILL_SWITCH_REASONS
