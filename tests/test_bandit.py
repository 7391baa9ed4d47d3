"""SPEC 6 bandit: Gaussian Thompson sampling over eligible arms only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.bandit import ThompsonBandit
from operators.config import BanditConfig
from operators.gating import ARMS


def _trained(cfg: BanditConfig, seed: int = 0) -> ThompsonBandit:
    """A bandit with some history, so posteriors differ between arms."""
    b = ThompsonBandit()
    rng = np.random.default_rng(seed)
    for arm, mu in zip(ARMS, (30.0, -10.0, 5.0, 0.0), strict=True):
        for r in rng.normal(mu, 50.0, 20):
            b.update(arm, float(r))
    return b


@settings(max_examples=200, deadline=None)
@given(
    mask=st.lists(st.booleans(), min_size=4, max_size=4).filter(any),
    seed=st.integers(0, 2**32 - 1),
    optimism=st.sampled_from([0.0, 0.1, 5.0]),
    epsilon=st.sampled_from([0.0, 0.5]),
)
def test_select_never_returns_an_ineligible_arm(mask, seed, optimism, epsilon):
    eligible = dict(zip(ARMS, mask, strict=True))
    cfg = BanditConfig(model_optimism=optimism, epsilon=epsilon)
    arm, _ = _trained(cfg).select(eligible, np.random.default_rng(seed), cfg)
    assert eligible[arm]


def test_select_samples_only_the_eligible_arms():
    b = _trained(BanditConfig())
    eligible = {"amateurs": True, "model_bma": True}
    _, samples = b.select(eligible, np.random.default_rng(1), BanditConfig())
    assert set(samples) == {"amateurs", "model_bma"}


def test_select_with_no_eligible_arm_raises():
    b = ThompsonBandit()
    with pytest.raises(ValueError, match="at least one eligible arm"):
        b.select(dict.fromkeys(ARMS, False), np.random.default_rng(0), BanditConfig())


def test_same_seed_gives_the_same_choices():
    cfg = BanditConfig(model_optimism=0.1)
    b = _trained(cfg)
    eligible = dict.fromkeys(ARMS, True)
    r1, r2 = np.random.default_rng(42), np.random.default_rng(42)
    first = [b.select(eligible, r1, cfg)[0] for _ in range(200)]
    second = [b.select(eligible, r2, cfg)[0] for _ in range(200)]
    assert first == second
    assert len(set(first)) > 1  # the draws really vary


def test_welford_update_matches_numpy_mean_and_sample_variance():
    xs = np.random.default_rng(3).normal(12.0, 40.0, 500)
    b = ThompsonBandit()
    for x in xs:
        b.update("pros", float(x))
    s = b.stats["pros"]
    assert s.n == 500
    assert s.mean == pytest.approx(np.mean(xs), rel=1e-12)
    assert s.m2 / (s.n - 1) == pytest.approx(np.var(xs, ddof=1), rel=1e-12)


def test_update_refuses_a_non_finite_reward():
    b = ThompsonBandit()
    with pytest.raises(ValueError, match="finite"):
        b.update("pros", float("nan"))


def test_posterior_without_data_is_the_prior():
    cfg = BanditConfig(prior_mean_bps=0.0, prior_sd_bps=50.0, prior_weight=1.0)
    assert ThompsonBandit().posterior("model_meta", cfg) == (0.0, 50.0)


def _better_arm_share(best: str, optimism: float, seed: int = 2024) -> tuple[float, float]:
    """Share of rounds choosing `best` in the first and the last quarter of 2000 rounds.

    `best` pays N(+20, 50) bps, the others N(0, 50); every arm is always eligible.
    """
    b, cfg = ThompsonBandit(), BanditConfig(model_optimism=optimism)
    rng = np.random.default_rng(seed)
    eligible = dict.fromkeys(ARMS, True)
    picks = []
    for _ in range(2000):
        arm, _ = b.select(eligible, rng, cfg)
        b.update(arm, float(rng.normal(20.0 if arm == best else 0.0, 50.0)))
        picks.append(arm == best)
    picks = np.array(picks)
    return picks[:500].mean(), picks[-500:].mean()


@pytest.mark.parametrize("optimism", [0.0, 0.1])
def test_bandit_learns_to_prefer_a_better_cohort_arm(optimism):
    # with optimism 0.1, the model arms get a 5 bps head start against the better arm
    first, last = _better_arm_share("pros", optimism)
    assert last > first
    assert last > 0.5


@pytest.mark.parametrize("optimism", [0.0, 0.1])
def test_bandit_learns_to_prefer_a_better_model_arm(optimism):
    first, last = _better_arm_share("model_bma", optimism)
    assert last > first
    assert last > 0.5


def test_model_optimism_adds_to_the_model_arms_samples_only_and_only_at_selection():
    """SPEC 6's model_optimism 0.1 (1.1): a bonus of 0.1 x prior_sd_bps (5 bps) to the model
    arms' means when sampling; the cohort arms' draws and every posterior stay as they were."""
    b, eligible = _trained(BanditConfig()), dict.fromkeys(ARMS, True)
    plain, bonus = BanditConfig(), BanditConfig(model_optimism=0.1)
    _, s0 = b.select(eligible, np.random.default_rng(5), plain)
    _, s1 = b.select(eligible, np.random.default_rng(5), bonus)
    assert {a: s1[a] - s0[a] for a in ARMS} == {
        "pros": 0.0,
        "amateurs": 0.0,
        "model_meta": pytest.approx(5.0),
        "model_bma": pytest.approx(5.0),
    }
    assert b.as_dict(bonus) == b.as_dict(plain)
