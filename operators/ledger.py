"""The trade ledger: the intent waiting for its fill, the open round trip, and what a fill
does to them.

A fill against the open trade's direction closes (part of) it: the round trip's net PnL
is the realised price PnL less the entry's and the exit's fees plus the funding paid or
received while it was open; the bandit's reward is that PnL in bps of the entry notional.
Whatever the fill does not close opens a new trade (an entry, or the new side of a flip).
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.execution import Fill
from operators.reasons import Reason

FLAT_QTY = 1e-12  # a quantity this small is nothing


@dataclass
class OpenTrade:
    decision_id: str  # the entry order's id, which the exit names as entry_decision_id
    arm: str | None
    direction: int
    entry_bar: int  # the bar whose open filled the entry
    entry_px: float
    qty: float
    fees_usd: float
    funding_usd: float = 0.0


@dataclass
class PendingIntent:
    decision_id: str  # the order's own id
    client_order_id: str
    qty: float
    purpose: Reason
    arm: str | None
    decided_bar: int
    decided_ms: int  # the decision bar's close
    entry_decision_id: str | None = None  # the entry whose position this order closes
    # realised vol at the decision: all that is known of it at the open the order fills at
    rv_annual: float | None = None

    @property
    def direction(self) -> int:
        return 1 if self.qty > 0 else -1


@dataclass(frozen=True, slots=True)
class Closing:
    """What a fill closed of the open trade."""

    qty: float
    pnl_usd: float  # net of both fees and the funding
    reward_bps: float  # the bandit's reward for the entry's arm
    arm: str | None


def closing_of(trade: OpenTrade | None, intent: PendingIntent, fill: Fill) -> Closing | None:
    """The part of `trade` the fill of `intent` closes, or None if it closes nothing."""
    if trade is None or (trade.qty > 0) == (intent.qty > 0):
        return None
    qty = min(abs(intent.qty), abs(trade.qty))
    exit_fee = fill.fee_usd * qty / abs(intent.qty)
    pnl = fill.realized_usd - trade.fees_usd - exit_fee + trade.funding_usd
    reward = pnl / (abs(trade.qty) * trade.entry_px) * 1e4
    return Closing(qty, pnl, reward, trade.arm)


def opened_by(
    intent: PendingIntent, fill: Fill, closing: Closing | None, bar_index: int, position_qty: float
) -> OpenTrade | None:
    """The trade the fill opens with what it did not close, or None."""
    opened = abs(intent.qty) - (0.0 if closing is None else closing.qty)
    if opened <= FLAT_QTY:
        return None
    return OpenTrade(
        intent.decision_id,
        intent.arm,
        intent.direction,
        bar_index,
        fill.px,
        position_qty,
        fill.fee_usd * opened / abs(intent.qty),
    )
