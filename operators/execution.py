"""Paper execution and the portfolio it moves.

A fill happens at the open of the bar after the decision (never at the decision bar's
close), worse by the slippage, plus a fee on notional. Accounting is linear-perp style:
equity = cash + qty * mark; funding is paid by longs when the rate is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.config import ExecutionConfig


@dataclass(slots=True)
class Fill:
    qty: float  # signed: + bought, - sold
    px: float  # fill price after slippage
    ref_px: float  # the bar open it filled against
    slippage_bps: float
    fee_usd: float
    realized_usd: float  # price PnL realised by the part that closed exposure


@dataclass
class Portfolio:
    cash: float
    qty: float = 0.0
    avg_px: float = 0.0
    fees_usd: float = 0.0
    funding_usd: float = 0.0  # + received, - paid
    realized_usd: float = 0.0  # price PnL of closed exposure, before fees and funding
    turnover_usd: float = 0.0

    def equity(self, mark_px: float) -> float:
        return self.cash + self.qty * mark_px

    def unrealized(self, mark_px: float) -> float:
        return self.qty * (mark_px - self.avg_px)

    def fill(self, qty: float, ref_px: float, cfg: ExecutionConfig, vol_ratio: float = 1.0) -> Fill:
        """Execute `qty` (signed) against `ref_px`, the next bar's open."""
        if qty == 0:
            raise ValueError("a fill needs a non-zero quantity")
        slip_bps = cfg.slippage_bps * (max(vol_ratio, 0.0) if cfg.slippage_vol_scale else 1.0)
        px = ref_px * (1.0 + (1 if qty > 0 else -1) * slip_bps / 1e4)
        notional = abs(qty) * px
        fee = notional * cfg.fee_bps / 1e4
        realized = 0.0
        if self.qty != 0 and (self.qty > 0) != (qty > 0):  # closes some exposure
            closing = min(abs(qty), abs(self.qty))
            realized = closing * (px - self.avg_px) * (1 if self.qty > 0 else -1)
        new_qty = self.qty + qty
        if abs(new_qty) < 1e-12:
            new_qty, self.avg_px = 0.0, 0.0
        elif self.qty == 0 or (self.qty > 0) != (new_qty > 0):  # opened, or flipped through 0
            self.avg_px = px
        elif (self.qty > 0) == (qty > 0):  # added in the same direction
            self.avg_px = (self.avg_px * abs(self.qty) + px * abs(qty)) / abs(new_qty)
        self.qty = new_qty
        self.cash -= qty * px + fee
        self.fees_usd += fee
        self.realized_usd += realized
        self.turnover_usd += notional
        return Fill(qty, px, ref_px, slip_bps, fee, realized)

    def pay_funding(self, rate: float, mark_px: float) -> float:
        """Apply one funding payment; returns the cash flow (+ received)."""
        flow = -self.qty * mark_px * rate
        self.cash += flow
        self.funding_usd += flow
        return flow
