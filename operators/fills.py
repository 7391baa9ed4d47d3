"""Fills: the intent decided at the previous close meets this bar's open (SPEC 7).

The paper broker (`Portfolio.fill`) prices it; its execution and costs records go out
with the fill, before the ledger books the round trip (stats, loss streak, bandit reward)
and the new open trade, so no failure can leave a fill without its record. An intent
whose bar had no trades is rejected as stale.
"""

from __future__ import annotations

from operators import records
from operators.config import StrategyConfig
from operators.kpis import is_win
from operators.ledger import closing_of, opened_by
from operators.overlays import BarContext
from operators.reasons import Reason
from operators.records import Output
from operators.state import SymbolState
from operators.telemetry import Stamp


def fill_pending(
    s: SymbolState, ctx: BarContext, cfg: StrategyConfig, stamp: Stamp, out: list[Output]
) -> None:
    bar = ctx.bar
    p, s.pending = s.pending, None
    assert p is not None
    if bar.count == 0:
        s.count_rejection(Reason.STALE_INTENT.value)
        out.append(
            records.rejection(
                stamp,
                s.symbol,
                bar.end_ms,
                p.decision_id,
                "execution",
                Reason.STALE_INTENT,
                f"no trades in the bar after the decision (starting {bar.start_ms}) "
                "to fill against",
                p.arm,
                p.direction,
                s.risk.state,
            )
        )
        return
    # the fill bar's own features include its close: only the decision's vol is known here
    rv = cfg.risk.sigma_target if p.rv_annual is None else p.rv_annual
    fill = s.portfolio.fill(p.qty, bar.open, cfg.execution, rv / cfg.risk.sigma_target)
    closing = closing_of(s.open_trade, p, fill)
    pnl = None if closing is None else closing.pnl_usd
    reward = None if closing is None else closing.reward_bps
    dry = cfg.execution.dry_run
    out.append(
        records.execution(stamp, s.symbol, bar.start_ms, p, fill, s.portfolio, pnl, reward, dry)
    )
    out.append(
        records.costs(stamp, s.symbol, bar.start_ms, p.decision_id, fill, cfg.execution.fee_bps)
    )
    s.fills += 1
    if closing is not None:
        s.open_trade = None
        s.trades += 1
        if is_win(closing.pnl_usd):
            s.wins += 1
        else:
            s.losses += 1
        s.risk.record_trade_result(closing.pnl_usd)
        if closing.arm is not None:
            s.bandit.update(closing.arm, closing.reward_bps)
    opened = opened_by(p, fill, closing, s.bar_index, s.portfolio.qty)
    if opened is not None:
        s.open_trade = opened
        s.last_entry_bar = s.bar_index  # the cooldown counts from the fill
