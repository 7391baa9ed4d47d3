"""Gaussian Thompson sampling over the arms (SPEC 6's four, and the size proxy's two
when it is on), eligible arms only.

Each arm's reward (realised net PnL of its decisions, in bps) is modelled as Gaussian with
an unknown mean; its posterior mean shrinks toward the prior with `prior_weight`
pseudo-observations, and its noise variance shrinks toward `prior_sd_bps`^2 the same way.
Selection draws one sample per eligible arm and takes the largest; `model_optimism`
(in units of prior_sd_bps) is added to model arms' posterior means at selection only.
The bandit is plain data (the arms' statistics, picklable), so it survives restarts
through Bytewax recovery; its `BanditConfig` is passed in on every call and never stored,
so a restart under a changed configuration runs on the new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from operators.config import BanditConfig
from operators.gating import ALL_ARMS, ARMS, MODEL_ARMS


@dataclass(slots=True)
class ArmStats:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations (Welford)


@dataclass
class ThompsonBandit:
    stats: dict[str, ArmStats] = field(default_factory=lambda: {a: ArmStats() for a in ARMS})

    def posterior(self, arm: str, cfg: BanditConfig) -> tuple[float, float]:
        """Posterior mean and standard deviation of the arm's mean reward, in bps."""
        s, c = self.stats.get(arm) or ArmStats(), cfg
        w = c.prior_weight
        mu = (w * c.prior_mean_bps + s.n * s.mean) / (w + s.n)
        noise_var = (s.m2 + w * c.prior_sd_bps**2) / (max(s.n - 1, 0) + w)
        return mu, math.sqrt(noise_var / (w + s.n))

    def select(
        self, eligible: dict[str, bool], rng: np.random.Generator, cfg: BanditConfig
    ) -> tuple[str, dict]:
        """Choose among eligible arms; returns the arm and the per-arm samples drawn."""
        arms = [a for a in ALL_ARMS if eligible.get(a)]
        if not arms:
            raise ValueError("select() needs at least one eligible arm")
        if cfg.epsilon > 0.0 and rng.random() < cfg.epsilon:
            return arms[int(rng.integers(len(arms)))], {"explore": 1.0}
        bonus = cfg.model_optimism * cfg.prior_sd_bps
        samples: dict[str, float] = {}
        for a in arms:
            mu, sd = self.posterior(a, cfg)
            samples[a] = float(rng.normal(mu + (bonus if a in MODEL_ARMS else 0.0), sd))
        best = max(arms, key=lambda a: samples[a])  # ties: first in ALL_ARMS order
        return best, samples

    def update(self, arm: str, reward_bps: float) -> None:
        if not math.isfinite(reward_bps):
            raise ValueError(f"reward for {arm} must be finite, got {reward_bps!r}")
        s = self.stats.setdefault(arm, ArmStats())  # a proxy arm's first reward
        s.n += 1
        delta = reward_bps - s.mean
        s.mean += delta / s.n
        s.m2 += delta * (reward_bps - s.mean)

    def as_dict(
        self, cfg: BanditConfig, arms: tuple[str, ...] = ARMS
    ) -> dict[str, dict[str, float]]:
        out = {}
        for a in arms:
            mu, sd = self.posterior(a, cfg)
            n = self.stats[a].n if a in self.stats else 0  # a proxy arm not yet rewarded
            out[a] = {"n": float(n), "mean_bps": mu, "sd_bps": sd}
        return out
