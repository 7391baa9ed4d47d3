"""SPEC 6 gating: the model view, eligibility, side thresholds, and the 1.1 gates."""

from __future__ import annotations

import dataclasses

import pytest

from operators.config import ENSEMBLE_1_0, ENSEMBLE_1_1, GateConfig, GuardMode, Thresholds
from operators.gating import (
    ModelView,
    Signals,
    consensus_veto,
    direction_and_alpha,
    effective_conf_min,
    eligibility,
    low_conf_veto,
    model_view,
)
from operators.reasons import Reason

TH_1_0 = ENSEMBLE_1_0.thresholds  # S_MIN 0.12, CONF_MIN 0.60, ALPHA_MIN 0.10
TH_1_1 = ENSEMBLE_1_1.thresholds  # CONF_MIN 0.65
GATES_1_0 = ENSEMBLE_1_0.gates  # every gate OFF
GATES_1_1 = ENSEMBLE_1_1.gates  # every gate ON


def _view(conf: float, alpha: float, s_meta: float | None = None, s_bma: float | None = None):
    s_meta = alpha if s_meta is None else s_meta
    return ModelView(conf, 1 - conf, conf, alpha, s_meta, s_meta if s_bma is None else s_bma)


def _signals(s_top=0.0, s_bot=0.0, model: ModelView | None = None) -> Signals:
    return Signals(s_top, s_bot, (s_top - s_bot) / 2, model or _view(0.5, 0.0))


# model_view


def test_p_up_0_70_gives_conf_0_70_alpha_0_40_and_s_model_meta_plus_0_40():
    v = model_view(0.70)
    assert v.conf == pytest.approx(0.70)
    assert v.alpha == pytest.approx(0.40)
    assert v.s_model_meta == pytest.approx(0.40)
    assert v.p_down == pytest.approx(0.30)


def test_p_up_0_70_flipped_gives_s_model_meta_minus_0_40_with_same_conf_and_alpha():
    v = model_view(0.70, flip=True)
    assert (v.conf, v.alpha) == (pytest.approx(0.70), pytest.approx(0.40))
    assert v.s_model_meta == pytest.approx(-0.40)
    assert v.s_model_bma == pytest.approx(-0.40)
    # the model's 70% for up is our 70% for down: the side the signs give
    assert (v.p_up, v.p_down) == (pytest.approx(0.30), pytest.approx(0.70))
    assert model_view(0.70, p_up_bma=0.40, flip=True).s_model_bma == pytest.approx(0.20)


def test_p_up_0_30_is_a_short_view_with_conf_0_70():
    v = model_view(0.30)
    assert v.conf == pytest.approx(0.70)
    assert v.s_model_meta == pytest.approx(-0.40)


def test_s_model_bma_equals_s_model_meta_when_only_one_model_is_present():
    assert model_view(0.62).s_model_bma == model_view(0.62).s_model_meta


def test_s_model_bma_comes_from_its_own_probability_when_given():
    assert model_view(0.70, p_up_bma=0.40).s_model_bma == pytest.approx(-0.20)


# eligibility


def test_cohort_arms_are_eligible_at_exactly_s_min_0_12():
    e = eligibility(_signals(s_top=0.12, s_bot=-0.12), TH_1_0, TH_1_0.CONF_MIN)
    assert e["pros"] and e["amateurs"]


def test_cohort_arms_are_ineligible_just_below_s_min():
    e = eligibility(_signals(s_top=0.1199, s_bot=-0.1199), TH_1_0, TH_1_0.CONF_MIN)
    assert not e["pros"] and not e["amateurs"]


def test_both_model_arms_are_eligible_at_exactly_conf_min_0_60_and_alpha_min_0_10():
    e = eligibility(_signals(model=_view(0.60, 0.10)), TH_1_0, TH_1_0.CONF_MIN)
    assert e["model_meta"] and e["model_bma"]


def test_both_model_arms_are_ineligible_just_below_conf_min():
    e = eligibility(_signals(model=_view(0.5999, 0.40)), TH_1_0, TH_1_0.CONF_MIN)
    assert not e["model_meta"] and not e["model_bma"]


def test_both_model_arms_are_ineligible_just_below_alpha_min():
    e = eligibility(_signals(model=_view(0.70, 0.0999)), TH_1_0, TH_1_0.CONF_MIN)
    assert not e["model_meta"] and not e["model_bma"]


def test_model_view_of_p_up_0_60_makes_the_model_arms_eligible_under_1_0_but_not_1_1():
    sig = _signals(model=model_view(0.60))
    assert eligibility(sig, TH_1_0, TH_1_0.CONF_MIN)["model_meta"]
    assert not eligibility(sig, TH_1_1, TH_1_1.CONF_MIN)["model_meta"]


def test_no_arm_is_eligible_when_every_signal_is_weak():
    e = eligibility(_signals(s_top=0.05, s_bot=-0.05, model=model_view(0.55)), TH_1_0, 0.60)
    assert e == {"pros": False, "amateurs": False, "model_meta": False, "model_bma": False}


def test_eligibility_uses_the_conf_min_it_is_given_not_the_threshold_default():
    sig = _signals(model=_view(0.66, 0.32))
    assert eligibility(sig, TH_1_1, 0.65)["model_meta"]
    assert not eligibility(sig, TH_1_1, 0.70)["model_meta"]


# side thresholds after the choice


def test_cohort_arm_trades_in_its_sign_with_alpha_equal_to_abs_signal():
    assert direction_and_alpha("pros", _signals(s_top=-0.30), TH_1_0) == (-1, 0.30)
    assert direction_and_alpha("amateurs", _signals(s_bot=0.25), TH_1_0) == (1, 0.25)


def test_cohort_arm_below_s_min_gives_no_trade():
    assert direction_and_alpha("pros", _signals(s_top=0.11), TH_1_0) == (0, 0.0)


def test_model_arm_trades_with_the_model_alpha():
    sig = _signals(s_top=0.9, model=model_view(0.70))
    direction, alpha = direction_and_alpha("model_meta", sig, TH_1_0)
    assert direction == 1
    assert alpha == pytest.approx(0.40)


def test_model_bma_arm_takes_its_direction_from_s_model_bma_and_alpha_from_the_model():
    sig = _signals(model=model_view(0.70, p_up_bma=0.30))
    direction, alpha = direction_and_alpha("model_bma", sig, TH_1_0)
    assert direction == -1
    assert alpha == pytest.approx(0.40)


def test_model_bma_arm_below_alpha_min_gives_no_trade_even_when_eligible():
    sig = _signals(model=model_view(0.70, p_up_bma=0.52))  # s_model_bma 0.04 < ALPHA_MIN
    assert eligibility(sig, TH_1_0, TH_1_0.CONF_MIN)["model_bma"]
    assert direction_and_alpha("model_bma", sig, TH_1_0) == (0, 0.0)


# low_conf_veto (the no-trade zone)


def test_low_conf_veto_off_in_1_0_never_vetoes():
    assert low_conf_veto("pros", 0.50, GATES_1_0) is None


def test_low_conf_veto_on_vetoes_a_cohort_arm_when_conf_is_below_0_55():
    veto = low_conf_veto("amateurs", 0.54, GATES_1_1)
    assert veto is not None
    assert veto.reason is Reason.LOW_CONF_VETO
    assert veto.shadow is False


def test_low_conf_veto_lets_a_cohort_arm_trade_at_conf_0_55():
    assert low_conf_veto("pros", 0.55, GATES_1_1) is None


def test_low_conf_veto_never_applies_to_model_arms():
    assert low_conf_veto("model_meta", 0.50, GATES_1_1) is None
    assert low_conf_veto("model_bma", 0.50, GATES_1_1) is None


def test_low_conf_veto_in_shadow_mode_reports_a_shadow_veto():
    gates = GateConfig(low_conf_veto=GuardMode.SHADOW)
    veto = low_conf_veto("pros", 0.52, gates)
    assert veto is not None
    assert veto.reason is Reason.LOW_CONF_VETO
    assert veto.shadow is True


# consensus gate against the 1h trend


def test_short_against_a_plus_1_percent_1h_trend_is_vetoed_as_1h_trend():
    veto = consensus_veto(-1, 0.01, GATES_1_1)
    assert veto is not None
    assert veto.reason is Reason.CONSENSUS_1H
    assert veto.reason == "veto:1h_trend"
    assert veto.shadow is False


def test_long_against_a_minus_1_percent_1h_trend_is_vetoed():
    veto = consensus_veto(1, -0.01, GATES_1_1)
    assert veto is not None and veto.reason is Reason.CONSENSUS_1H


def test_short_with_a_weak_plus_0_1_percent_1h_trend_is_allowed():
    assert consensus_veto(-1, 0.001, GATES_1_1) is None


def test_long_with_a_plus_1_percent_1h_trend_is_allowed():
    assert consensus_veto(1, 0.01, GATES_1_1) is None


def test_stale_or_missing_1h_trend_never_vetoes():
    assert consensus_veto(-1, None, GATES_1_1) is None


def test_consensus_gate_off_in_1_0_never_vetoes():
    assert consensus_veto(-1, 0.05, GATES_1_0) is None


def test_consensus_gate_in_shadow_mode_reports_a_shadow_veto():
    veto = consensus_veto(-1, 0.01, GateConfig(consensus_gate=GuardMode.SHADOW))
    assert veto is not None and veto.shadow is True


# dynamic CONF_MIN


def test_dynamic_conf_min_raises_1_1_conf_min_by_the_step_when_1h_rv_is_high():
    assert effective_conf_min(TH_1_1, GATES_1_1, 1.20) == pytest.approx(0.70)


def test_dynamic_conf_min_keeps_conf_min_at_or_below_the_rv_threshold():
    assert effective_conf_min(TH_1_1, GATES_1_1, 0.80) == 0.65
    assert effective_conf_min(TH_1_1, GATES_1_1, 0.30) == 0.65


def test_dynamic_conf_min_off_in_1_0_keeps_conf_min_at_high_vol():
    assert effective_conf_min(TH_1_0, GATES_1_0, 5.0) == 0.60


def test_dynamic_conf_min_in_shadow_mode_does_not_change_the_threshold():
    gates = dataclasses.replace(GATES_1_1, dynamic_conf_min=GuardMode.SHADOW)
    assert effective_conf_min(TH_1_1, gates, 5.0) == 0.65


def test_dynamic_conf_min_never_exceeds_one():
    th = Thresholds(CONF_MIN=0.98)
    assert effective_conf_min(th, GATES_1_1, 5.0) == 1.0


# 0.65 + 0.05 is 0.7000000000000001 in floating point; the threshold must still admit 0.70
def test_p_up_0_70_is_eligible_at_the_raised_1_1_conf_min_of_0_70():
    conf_min = effective_conf_min(TH_1_1, GATES_1_1, 1.20)
    sig = _signals(model=model_view(0.70))
    assert eligibility(sig, TH_1_1, conf_min)["model_meta"]
