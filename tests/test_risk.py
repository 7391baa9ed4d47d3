"""SPEC 6 risk: vol guard, target position, kill-switches and pre-trade guards."""

from __future__ import annotations

import dataclasses

import pytest

from operators.config import ENSEMBLE_1_0, ENSEMBLE_1_1, GuardMode, RiskConfig
from operators.reasons import Reason
from operators.risk import (
    DAY_MS,
    RiskState,
    TradingState,
    pretrade_veto,
    sizing_scale,
    target_position,
    vol_guard_scale,
)

RISK_1_0 = ENSEMBLE_1_0.risk  # pos_max 1.0, vol guard off
RISK_1_1 = ENSEMBLE_1_1.risk  # pos_max 0.5, vol guard on 0.8 / 0.25
DAY0 = 19_000 * DAY_MS  # a UTC midnight


# vol guard


def test_rv_1_6_with_cap_0_8_scales_by_half():
    assert vol_guard_scale(1.6, 0.8, 0.25) == 0.5


def test_rv_5_0_with_cap_0_8_is_floored_at_min_scale_0_25():
    assert vol_guard_scale(5.0, 0.8, 0.25) == 0.25


def test_rv_at_or_below_the_cap_is_not_scaled():
    assert vol_guard_scale(0.8, 0.8, 0.25) == 1.0
    assert vol_guard_scale(0.3, 0.8, 0.25) == 1.0


# target position


def test_target_is_sigma_target_over_rv_times_alpha_times_scale():
    # (0.20 / 0.80) * 0.40 * 0.5 = 0.05 of base notional
    assert target_position(1, 0.40, 0.80, RISK_1_0, vol_scale=0.5) == pytest.approx(0.05)


def test_short_target_is_negative():
    assert target_position(-1, 0.40, 0.80, RISK_1_0) == pytest.approx(-0.10)


def test_target_is_clamped_to_pos_max_1_0_under_1_0():
    # (0.20 / 0.05) * 0.40 = 1.6 -> 1.0
    assert target_position(1, 0.40, 0.05, RISK_1_0) == 1.0
    assert target_position(-1, 0.40, 0.05, RISK_1_0) == -1.0


def test_target_is_clamped_to_pos_max_0_5_under_1_1():
    assert target_position(1, 0.40, 0.05, RISK_1_1) == 0.5
    assert target_position(-1, 0.40, 0.05, RISK_1_1) == -0.5


def test_direction_zero_gives_zero_target():
    assert target_position(0, 0.40, 0.80, RISK_1_0) == 0.0


@pytest.mark.parametrize("rv", [0.0, -0.1, float("nan")])
def test_non_positive_rv_refuses_to_size(rv):
    with pytest.raises(ValueError, match="realised volatility"):
        target_position(1, 0.40, rv, RISK_1_0)


# sizing_scale in each guard mode


def test_vol_guard_on_applies_the_computed_scale():
    assert sizing_scale(1.6, RISK_1_1) == (0.5, 0.5)


def test_vol_guard_off_applies_no_scale_but_reports_the_computed_one():
    assert sizing_scale(1.6, RISK_1_0) == (1.0, 0.5)


def test_vol_guard_shadow_applies_no_scale_but_reports_the_computed_one():
    cfg = dataclasses.replace(RISK_1_1, vol_guard=GuardMode.SHADOW)
    assert sizing_scale(1.6, cfg) == (1.0, 0.5)


# kill-switches


def _state_at(equity: float, ts_ms: int = DAY0) -> RiskState:
    s = RiskState()
    s.mark(equity, ts_ms)
    return s


def test_drawdown_over_10_percent_from_peak_fires_drawdown_limit():
    s = _state_at(10_000.0)
    s.mark(12_000.0, DAY0 + 1)
    s.mark(10_799.0, DAY0 + 2)  # 10.008% below the 12,000 peak
    assert s.check_kill_switches(10_799.0, RiskConfig(daily_loss_limit=0.5)) is (
        Reason.DRAWDOWN_LIMIT
    )


def test_drawdown_of_exactly_10_percent_does_not_fire():
    s = _state_at(10_000.0)
    s.mark(9_000.0, DAY0 + 1)
    assert s.check_kill_switches(9_000.0, RiskConfig(daily_loss_limit=0.5)) is None


def test_drawdown_limit_is_strictly_more_than_the_limit():
    # 25% is exact in binary floating point, so this pins '>' rather than '>='
    cfg = RiskConfig(max_drawdown=0.25, daily_loss_limit=0.5)
    s = _state_at(10_000.0)
    s.mark(7_500.0, DAY0 + 1)
    assert s.check_kill_switches(7_500.0, cfg) is None
    s.mark(7_499.0, DAY0 + 2)
    assert s.check_kill_switches(7_499.0, cfg) is Reason.DRAWDOWN_LIMIT


def test_daily_loss_over_5_percent_of_day_start_fires_daily_loss_limit():
    s = _state_at(10_000.0)
    s.mark(9_499.0, DAY0 + 3_600_000)
    assert s.check_kill_switches(9_499.0, RiskConfig()) is Reason.DAILY_LOSS_LIMIT


def test_daily_loss_limit_measures_from_the_new_day_start_after_utc_midnight():
    cfg = RiskConfig()  # daily limit 5%, drawdown limit 10%
    s = _state_at(10_000.0)
    s.mark(9_600.0, DAY0 + DAY_MS - 1)  # day 0 ends 4% down: no fire
    assert s.check_kill_switches(9_600.0, cfg) is None
    s.mark(9_600.0, DAY0 + DAY_MS)  # the close at 24:00 is day 0's last mark
    s.mark(9_300.0, DAY0 + DAY_MS + 60_000)  # 3.1% on the day (7% below yesterday's start)
    assert s.day_start_equity == 9_600.0  # day 1 starts at day 0's close
    assert s.check_kill_switches(9_300.0, cfg) is None
    s.mark(9_100.0, DAY0 + DAY_MS + 120_000)  # 5.2% on the day
    assert s.check_kill_switches(9_100.0, cfg) is Reason.DAILY_LOSS_LIMIT


def test_a_loss_in_the_bar_ending_at_midnight_counts_for_the_day_it_closes():
    s = _state_at(10_000.0, DAY0 + 300_000)
    s.mark(9_400.0, DAY0 + DAY_MS)  # the bar 23:55-24:00 loses 6% of day 0's start
    assert s.check_kill_switches(9_400.0, RiskConfig()) is Reason.DAILY_LOSS_LIMIT


def test_a_day_starts_at_the_previous_days_last_mark():
    s = _state_at(10_000.0, DAY0 + 300_000)
    s.mark(9_800.0, DAY0 + DAY_MS)
    s.mark(9_700.0, DAY0 + DAY_MS + 300_000)
    assert s.day_start_equity == 9_800.0


def test_a_zero_pnl_trade_is_a_loss_in_the_streak_as_in_the_stats():
    s = _state_at(10_000.0)
    for _ in range(6):
        s.record_trade_result(0.0)
    assert s.consecutive_losses == 6


def test_six_consecutive_losses_fire_consecutive_losses():
    s = _state_at(10_000.0)
    for _ in range(6):
        s.record_trade_result(-1.0)
    assert s.check_kill_switches(10_000.0, RiskConfig()) is Reason.CONSECUTIVE_LOSSES


def test_five_consecutive_losses_do_not_fire():
    s = _state_at(10_000.0)
    for _ in range(5):
        s.record_trade_result(-1.0)
    assert s.check_kill_switches(10_000.0, RiskConfig()) is None


def test_a_win_resets_the_consecutive_loss_count():
    s = _state_at(10_000.0)
    for pnl in [-1.0] * 5 + [2.0] + [-1.0] * 5:
        s.record_trade_result(pnl)
    assert s.consecutive_losses == 5
    assert s.check_kill_switches(10_000.0, RiskConfig()) is None


def test_once_halted_no_kill_switch_fires_again():
    s = _state_at(10_000.0)
    s.mark(8_000.0, DAY0 + 1)
    s.halt(Reason.DRAWDOWN_LIMIT)
    assert s.state is TradingState.HALTED
    assert s.check_kill_switches(8_000.0, RiskConfig()) is None


def test_reset_resumes_trading_and_rearms_the_limits_from_current_equity():
    cfg = RiskConfig()
    s = _state_at(10_000.0)
    s.mark(8_000.0, DAY0 + 1)
    for _ in range(6):
        s.record_trade_result(-1.0)
    s.halt(Reason.DRAWDOWN_LIMIT)
    s.reset(8_000.0)
    assert s.state is TradingState.ACTIVE
    assert s.check_kill_switches(8_000.0, cfg) is None
    s.mark(7_650.0, DAY0 + DAY_MS)  # day 0 closes 4.4% down
    assert s.check_kill_switches(7_650.0, cfg) is None
    s.mark(7_300.0, DAY0 + DAY_MS + 300_000)  # 4.6% on day 1, 8.75% below the re-armed peak
    assert s.check_kill_switches(7_300.0, cfg) is None
    s.mark(7_190.0, DAY0 + DAY_MS + 600_000)  # 10.1% below 8,000
    assert s.check_kill_switches(7_190.0, cfg) is Reason.DRAWDOWN_LIMIT


# pre-trade guards, in order


def _veto(**kw):
    args = {
        "state": TradingState.ACTIVE,
        "current_qty": 0.0,
        "direction": 1,
        "bars_since_entry": None,
        "order_notional": 1_000.0,
        "adv_notional": 1e9,
        "cfg": RiskConfig(),
    }
    args.update(kw)
    v = pretrade_veto(**args)
    return None if v is None else v[0]


def test_a_plain_entry_passes_every_guard():
    assert _veto() is None


def test_halted_is_checked_first():
    v = _veto(state=TradingState.HALTED, current_qty=1.0, bars_since_entry=0, order_notional=1.0)
    assert v is Reason.TRADING_STATE_HALTED


def test_no_doubling_down_on_a_long():
    assert _veto(current_qty=0.1, direction=1, bars_since_entry=0) is Reason.NO_DOUBLING_DOWN


def test_no_doubling_down_on_a_short():
    assert _veto(current_qty=-0.1, direction=-1) is Reason.NO_DOUBLING_DOWN


def test_a_flip_is_not_doubling_down():
    assert _veto(current_qty=-0.1, direction=1, bars_since_entry=5) is None


def test_cooldown_1_vetoes_one_bar_after_entry():
    assert _veto(current_qty=-0.1, bars_since_entry=1) is Reason.COOLDOWN


def test_cooldown_1_lets_a_trade_pass_two_bars_after_entry():
    assert _veto(current_qty=-0.1, bars_since_entry=2) is None


def test_cooldown_is_checked_before_adv_cap_and_min_order():
    cfg = RiskConfig(adv_cap_pct=1.0)
    v = _veto(bars_since_entry=1, order_notional=5.0, adv_notional=100.0, cfg=cfg)
    assert v is Reason.COOLDOWN


def test_adv_cap_vetoes_an_order_over_its_share_of_daily_volume():
    cfg = RiskConfig(adv_cap_pct=1.0)
    assert _veto(order_notional=1_001.0, adv_notional=100_000.0, cfg=cfg) is Reason.ADV_CAP
    assert _veto(order_notional=1_000.0, adv_notional=100_000.0, cfg=cfg) is None


def test_adv_cap_off_by_default_ignores_volume():
    assert _veto(order_notional=5_000.0, adv_notional=0.0) is None


def test_adv_cap_is_checked_before_min_order():
    cfg = RiskConfig(adv_cap_pct=1.0, min_order_notional=10.0)
    assert _veto(order_notional=5.0, adv_notional=100.0, cfg=cfg) is Reason.ADV_CAP


def test_order_below_min_notional_is_vetoed():
    assert _veto(order_notional=9.99) is Reason.BELOW_MIN_ORDER
    assert _veto(order_notional=10.0) is None
