"""SPEC 7 paper execution: fills with fee and slippage, and the portfolio they move."""

from __future__ import annotations

import pytest

from operators.config import ExecutionConfig
from operators.execution import Portfolio

NO_SLIP = ExecutionConfig(fee_bps=5.0, slippage_bps=0.0)
FREE = ExecutionConfig(fee_bps=0.0, slippage_bps=0.0)


def test_buy_then_sell_realises_the_price_pnl():
    p = Portfolio(cash=10_000.0)
    p.fill(0.5, 40_000.0, NO_SLIP)
    f = p.fill(-0.5, 41_000.0, NO_SLIP)
    assert f.realized_usd == pytest.approx(500.0)
    assert p.realized_usd == pytest.approx(500.0)
    assert p.qty == 0.0


def test_fee_is_notional_times_fee_bps():
    p = Portfolio(cash=10_000.0)
    f = p.fill(0.5, 40_000.0, NO_SLIP)  # 20,000 USD at 5 bps
    assert f.fee_usd == pytest.approx(10.0)
    assert p.fees_usd == pytest.approx(10.0)


def test_round_trip_cash_is_start_plus_pnl_minus_both_fees():
    p = Portfolio(cash=10_000.0)
    p.fill(0.5, 40_000.0, NO_SLIP)
    p.fill(-0.5, 41_000.0, NO_SLIP)
    assert p.cash == pytest.approx(10_000.0 + 500.0 - 10.0 - 10.25)


def test_short_then_cover_lower_realises_a_gain():
    p = Portfolio(cash=10_000.0)
    p.fill(-1.0, 100.0, FREE)
    f = p.fill(1.0, 90.0, FREE)
    assert f.realized_usd == pytest.approx(10.0)


def test_slippage_makes_a_buy_fill_above_the_reference_open():
    f = Portfolio(cash=1e6).fill(1.0, 40_000.0, ExecutionConfig(slippage_bps=2.0))
    assert f.px == pytest.approx(40_008.0)
    assert f.px > f.ref_px == 40_000.0


def test_slippage_makes_a_sell_fill_below_the_reference_open():
    f = Portfolio(cash=1e6).fill(-1.0, 40_000.0, ExecutionConfig(slippage_bps=2.0))
    assert f.px == pytest.approx(39_992.0)


def test_slippage_scales_with_the_vol_ratio_when_asked():
    cfg = ExecutionConfig(slippage_bps=2.0, slippage_vol_scale=True)
    f = Portfolio(cash=1e6).fill(1.0, 40_000.0, cfg, vol_ratio=3.0)
    assert f.slippage_bps == pytest.approx(6.0)
    assert f.px == pytest.approx(40_024.0)


def test_adding_to_a_long_averages_the_entry_price():
    p = Portfolio(cash=1e6)
    p.fill(1.0, 100.0, FREE)
    p.fill(3.0, 120.0, FREE)
    assert p.avg_px == pytest.approx(115.0)


def test_partial_close_keeps_the_entry_price():
    p = Portfolio(cash=1e6)
    p.fill(2.0, 100.0, FREE)
    f = p.fill(-1.0, 110.0, FREE)
    assert f.realized_usd == pytest.approx(10.0)
    assert (p.qty, p.avg_px) == (1.0, 100.0)


def test_flip_through_zero_realises_the_closed_part_and_sets_avg_px_to_the_new_fill():
    p = Portfolio(cash=1e6)
    p.fill(1.0, 100.0, FREE)
    f = p.fill(-3.0, 110.0, FREE)
    assert f.realized_usd == pytest.approx(10.0)  # only the 1 unit that was long
    assert p.qty == pytest.approx(-2.0)
    assert p.avg_px == 110.0


def test_equity_is_cash_plus_qty_times_mark_before_and_after_a_fill():
    p = Portfolio(cash=10_000.0)
    assert p.equity(40_000.0) == 10_000.0
    p.fill(0.25, 40_000.0, NO_SLIP)  # fee 5 USD
    assert p.equity(40_000.0) == pytest.approx(9_995.0)
    assert p.equity(42_000.0) == pytest.approx(p.cash + 0.25 * 42_000.0)
    assert p.equity(42_000.0) == pytest.approx(9_995.0 + 500.0)


def test_fill_counts_turnover_as_notional():
    p = Portfolio(cash=1e6)
    p.fill(1.0, 100.0, FREE)
    p.fill(-1.0, 120.0, FREE)
    assert p.turnover_usd == pytest.approx(220.0)


def test_zero_quantity_fill_raises():
    with pytest.raises(ValueError, match="non-zero quantity"):
        Portfolio(cash=1e6).fill(0.0, 100.0, FREE)


def test_long_pays_funding_when_the_rate_is_positive():
    p = Portfolio(cash=10_000.0)
    p.fill(0.5, 40_000.0, FREE)
    cash_before = p.cash
    flow = p.pay_funding(0.0001, 40_000.0)  # 20,000 USD long at 1 bp
    assert flow == pytest.approx(-2.0)
    assert p.cash == pytest.approx(cash_before - 2.0)
    assert p.funding_usd == pytest.approx(-2.0)


def test_short_receives_funding_when_the_rate_is_positive():
    p = Portfolio(cash=10_000.0)
    p.fill(-0.5, 40_000.0, FREE)
    assert p.pay_funding(0.0001, 40_000.0) == pytest.approx(2.0)


def test_long_receives_funding_when_the_rate_is_negative():
    p = Portfolio(cash=10_000.0)
    p.fill(0.5, 40_000.0, FREE)
    assert p.pay_funding(-0.0001, 40_000.0) == pytest.approx(2.0)


def test_flat_portfolio_pays_no_funding():
    assert Portfolio(cash=10_000.0).pay_funding(0.001, 40_000.0) == 0.0
