"""The research baselines as probability forecasts and as artifacts the flow can load.

Each baseline is fit on the training rows of a walk-forward fold only:
- base_rate: always the training share of up moves;
- buy_and_hold: always call up, with the training share of up moves as its probability
  (as a forecast it equals base_rate; its PnL is the passive long, see models/evaluate.py);
- momentum_1h: call the sign of the last hour's return (`ret_12`);
- reversal_15m: call against the sign of the last 15 minutes' return (`ret_3`).
A rule's probability is its own training hit rate h: h when it calls up, 1 - h when down.

`rule_bundle` wraps a rule in the stacked-ensemble bundle format operators/predict.py
loads, with an identity meta and calibration, so the flow trades it like any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from operators.predict import BUNDLE_FORMAT

BASELINES = ("base_rate", "buy_and_hold", "momentum_1h", "reversal_15m")
# (feature whose sign the rule reads, +1 follow it / -1 fade it)
RULES: dict[str, tuple[str, int]] = {"momentum_1h": ("ret_12", 1), "reversal_15m": ("ret_3", -1)}


@dataclass(frozen=True)
class RuleModel:
    """P(up) of a baseline: a constant, or p_up_if_up / 1 - p_up_if_up by a feature's sign."""

    p_up: float  # the constant forecast, or the probability when the rule calls up
    feature_index: int | None = None
    direction: int = 1

    def calls(self, x: np.ndarray) -> np.ndarray:
        """1 up, 0 down per row."""
        if self.feature_index is None:
            return np.full(len(x), int(self.p_up >= 0.5))
        return (self.direction * x[:, self.feature_index] > 0).astype(int)

    def predict_one(self, x: np.ndarray) -> float:
        """P(up) of one row (the flow's per-bar fast path)."""
        if self.feature_index is None:
            return self.p_up
        return self.p_up if self.direction * x[self.feature_index] > 0 else 1.0 - self.p_up

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.feature_index is None:
            p = np.full(len(x), self.p_up)
        else:
            p = np.where(self.calls(x) == 1, self.p_up, 1.0 - self.p_up)
        return np.column_stack([1.0 - p, p])


def fit_baseline(name: str, x: np.ndarray, y: np.ndarray, features: tuple[str, ...]) -> RuleModel:
    """The baseline `name` fit on training rows (x in `features` order, y 1 up / 0 down)."""
    rate = float(y.mean())
    if name == "base_rate":
        return RuleModel(rate)
    if name == "buy_and_hold":
        return RuleModel(rate)  # always up: the call is up whenever rate >= 0.5
    if name not in RULES:
        raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")
    feature, direction = RULES[name]
    rule = RuleModel(0.5, features.index(feature), direction)
    hit = float(np.mean(rule.calls(x) == y))
    return RuleModel(hit, rule.feature_index, direction)


def _identity_logreg() -> LogisticRegression:
    """A logistic regression whose decision function is its input: logit in, logit out."""
    lr = LogisticRegression()
    lr.classes_ = np.array([0, 1])
    lr.coef_ = np.array([[1.0]])
    lr.intercept_ = np.array([0.0])
    lr.n_features_in_ = 1
    return lr


def rule_bundle(name: str, rule: RuleModel) -> dict[str, Any]:
    """The bundle operators/predict.py loads; p_up and p_up_bma both equal the rule's p."""
    return {
        "format": BUNDLE_FORMAT,
        "bases": [(name, rule)],
        "meta": _identity_logreg(),
        "calibration": {"method": "sigmoid", "model": _identity_logreg()},
        "bma": {
            "members": [(name, "sigmoid", _identity_logreg())],
            "weights": [1.0],
            "null_weight": 0.0,
            "null_p": 0.5,
        },
    }
