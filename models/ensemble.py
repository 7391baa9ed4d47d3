"""Fitting the stacked ensemble that operators/predict.py runs.

`fit_ensemble` works on time-ordered rows and never shuffles them:

1. The rows are cut into `INNER_BLOCKS` consecutive blocks B0..B4.
2. Out-of-sample base predictions: for j = 1..4 each base learner is fit on B0..B(j-1),
   less the rows whose label window reaches into the purge gap before Bj, and predicts Bj.
3. The meta-classifier is a logistic regression on the base learners' logits. Its own
   out-of-sample scores come the same way: for j = 2..4 a meta fit on B1..B(j-1) scores
   Bj. The shipped meta is fit on B1..B4.
4. Calibration: isotonic regression and Platt scaling (a logistic regression on the
   meta score) are each fit on the out-of-sample scores of B2..B3 and scored by Brier on
   B4; the better one (ties go to Platt) is refit on B2..B4 and ships. Both, and the
   uncalibrated score, are kept for the report.
5. Bayesian model averaging (`p_up_bma`): the candidate models are each base learner,
   calibrated on its own (the same method, fit on B1..B3), and a no-skill model that
   always says the base rate. With equal prior odds the posterior probability of model k
   is proportional to its marginal likelihood, and the marginal likelihood of a sequence
   is the product of one-step-ahead predictive probabilities (Dawid's prequential view),
   so
       w_k = exp(l_k) / sum_j exp(l_j),  l_k = sum over B4 of log p_k(y_i | x_i),
   with every p_k fit only on earlier rows. This is the out-of-sample counterpart of the
   BIC approximation (BIC's complexity penalty is paid here by predicting unseen rows).
   The member calibrators are then refit on B1..B4. On thousands of rows the weights
   are usually near 0 or 1: BMA picks the model most likely to be right rather than
   blending (it assumes one of them is true); the card shows the weights.
6. The base learners are refit on all rows; the meta and the calibrators stay as fit on
   out-of-sample predictions (scikit-learn's StackingClassifier does the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from operators.predict import BUNDLE_FORMAT, StackedEnsemble, calibrate, logit

INNER_BLOCKS = 5
MIN_BLOCK_ROWS = 50
CALIBRATION_METHODS = ("isotonic", "sigmoid")
BASE_LEARNERS = ("logreg", "hgb")
PROB_EPS = 1e-6  # probabilities are clipped to [eps, 1-eps] inside log-likelihoods


class FitError(ValueError):
    """The rows cannot support the fit; the message says which stage and why."""


HGB_MAX_ITER = 150


def make_base(name: str, seed: int, hgb_max_iter: int = HGB_MAX_ITER) -> Any:
    if name == "logreg":  # strong L2: the signal is weak and features correlate
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    if name == "hgb":  # shallow, slow and regularised; no early stopping (determinism)
        return HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=hgb_max_iter,
            max_depth=3,
            max_leaf_nodes=8,
            min_samples_leaf=200,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=seed,
        )
    raise ValueError(f"unknown base learner {name!r}; known: {BASE_LEARNERS}")


def fit_calibrator(method: str, score: np.ndarray, y: np.ndarray) -> Any:
    if method == "isotonic":
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score, y)
    if method == "sigmoid":  # Platt: an (almost) unregularised logistic fit on the score
        return LogisticRegression(C=1e6, max_iter=1000).fit(score.reshape(-1, 1), y)
    raise ValueError(f"unknown calibration method {method!r}; known: {CALIBRATION_METHODS}")


def loglik(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return float(np.sum(np.where(y == 1, np.log(q), np.log(1.0 - q))))


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class FittedEnsemble:
    bundle: dict[str, Any]
    calibrators: dict[str, Any]  # every method, fit on B4, for the report
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> StackedEnsemble:
        return StackedEnsemble(self.bundle)

    def components(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every forecast the report compares, for the rows of x."""
        m = self.model
        base_p = m.base_probs(x)
        score = m.meta_score(base_p)
        out = {
            "meta": calibrate(m.method, m.calibrator, score),
            "meta_raw": _expit(score),
            "bma": m.bma(base_p),
        }
        for method, cal in self.calibrators.items():
            out[f"meta_{method}"] = calibrate(method, cal, score)
        members = m.bma_members_p(base_p)
        for i, (name, _) in enumerate(m.bases):
            out[f"{name}_raw"] = base_p[:, i]
            out[f"{name}_cal"] = members[:, i]
        return out


def _blocks(n: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, INNER_BLOCKS + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _check(stage: str, y: np.ndarray) -> None:
    if len(y) < MIN_BLOCK_ROWS or len(np.unique(y)) < 2:
        raise FitError(
            f"{stage}: {len(y)} rows with classes {sorted(set(y.tolist()))}; need at least "
            f"{MIN_BLOCK_ROWS} rows of both classes (use more data or fewer folds)"
        )


def _before(end_ms: np.ndarray, lo: int, hi: int, purge_ms: int) -> np.ndarray:
    """Rows lo..hi-1 whose label window ends before the purge gap ahead of row hi."""
    rows = np.arange(lo, hi)
    return rows[end_ms[rows] <= end_ms[hi] - purge_ms]


def _fit_meta(z: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=1000).fit(z, y)


def _val_scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, PROB_EPS, 1 - PROB_EPS), labels=[0, 1])),
    }


def fit_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    end_ms: np.ndarray,
    purge_ms: int,
    seed: int,
    log: Callable[[str], None] = lambda _: None,
    hgb_max_iter: int = HGB_MAX_ITER,
) -> FittedEnsemble:
    """The stacked, calibrated ensemble and its BMA twin on time-ordered rows (see above)."""
    if not (len(x) == len(y) == len(end_ms)) or np.any(np.diff(end_ms) < 0):
        raise FitError("rows must be aligned and in time order (end_ms non-decreasing)")
    blocks = _blocks(len(y))
    for i, (a, b) in enumerate(blocks):
        _check(f"inner block B{i}", y[a:b])

    oos = np.full((len(y), len(BASE_LEARNERS)), np.nan)
    for j in range(1, INNER_BLOCKS):
        a, b = blocks[j]
        train = np.flatnonzero(end_ms[:a] <= end_ms[a] - purge_ms)
        _check(f"base fit before B{j}", y[train])
        for k, name in enumerate(BASE_LEARNERS):
            est = make_base(name, seed, hgb_max_iter).fit(x[train], y[train])
            oos[a:b, k] = est.predict_proba(x[a:b])[:, 1]
        log(f"    inner B{j}: bases fit on {len(train)} rows, predict {b - a}")

    z = logit(oos)
    # Out-of-sample meta scores: for j = 2..4 the meta fit on B1..B(j-1) scores Bj.
    score = np.full(len(y), np.nan)
    for j in range(2, INNER_BLOCKS):
        a, b = blocks[j]
        rows = _before(end_ms, blocks[1][0], a, purge_ms)
        _check(f"meta fit before B{j}", y[rows])
        score[a:b] = _fit_meta(z[rows], y[rows]).decision_function(z[a:b])

    # Calibration method: each fit on the scores of B2..B3, scored by Brier on B4.
    c_lo, c_hi = blocks[-1]
    fit_rows = _before(end_ms, blocks[2][0], c_lo, purge_ms)
    yc = y[c_lo:c_hi]
    validation = {}
    for method in CALIBRATION_METHODS:
        cal = fit_calibrator(method, score[fit_rows], y[fit_rows])
        validation[method] = _val_scores(yc, calibrate(method, cal, score[c_lo:c_hi]))
    validation["uncalibrated"] = _val_scores(yc, _expit(score[c_lo:c_hi]))
    # Ties go to Platt: two parameters against a step function.
    method = min(CALIBRATION_METHODS[::-1], key=lambda m: validation[m]["brier"])
    cal_rows = np.arange(blocks[2][0], len(y))
    calibrators = {m: fit_calibrator(m, score[cal_rows], y[cal_rows]) for m in CALIBRATION_METHODS}
    s_lo = blocks[1][0]
    meta = _fit_meta(z[s_lo:], y[s_lo:])

    # BMA: members calibrated on B1..B3, weighed by their predictive likelihood on B4.
    members_ll = {}
    bma_fit = _before(end_ms, s_lo, c_lo, purge_ms)
    for k, name in enumerate(BASE_LEARNERS):
        cal = fit_calibrator(method, z[bma_fit, k], y[bma_fit])
        members_ll[name] = loglik(y[c_lo:c_hi], calibrate(method, cal, z[c_lo:c_hi, k]))
    null_p_before = float(y[:c_lo].mean())
    members_ll["base_rate"] = loglik(y[c_lo:c_hi], np.full(c_hi - c_lo, null_p_before))
    lls = np.array(list(members_ll.values()))
    post = np.exp(lls - lls.max())
    post /= post.sum()
    weights = dict(zip(members_ll, post.tolist(), strict=True))
    member_cals = [
        (name, method, fit_calibrator(method, z[s_lo:, k], y[s_lo:]))
        for k, name in enumerate(BASE_LEARNERS)
    ]

    bases = [(name, make_base(name, seed, hgb_max_iter).fit(x, y)) for name in BASE_LEARNERS]
    bundle = {
        "format": BUNDLE_FORMAT,
        "bases": bases,
        "meta": meta,
        "calibration": {"method": method, "model": calibrators[method]},
        "bma": {
            "members": member_cals,
            "weights": [weights[n] for n in BASE_LEARNERS],
            "null_weight": weights["base_rate"],
            "null_p": float(y.mean()),
        },
    }
    info = {
        "rows": int(len(y)),
        "hgb_max_iter": hgb_max_iter,
        "stack_rows": int(len(y) - s_lo),
        "calibration_rows": int(len(cal_rows)),
        "validation_rows": int(c_hi - c_lo),
        "calibration_method": method,
        "calibration_validation": validation,
        "meta_coef": dict(zip(BASE_LEARNERS, meta.coef_[0].tolist(), strict=True))
        | {"intercept": float(meta.intercept_[0])},
        "bma_weights": weights,
        "bma_loglik_per_row": {k: v / (c_hi - c_lo) for k, v in members_ll.items()},
    }
    log(
        f"    calibration {method} (validation Brier isotonic "
        f"{validation['isotonic']['brier']:.5f}, Platt {validation['sigmoid']['brier']:.5f}); "
        "BMA weights " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items())
    )
    return FittedEnsemble(bundle, calibrators, info)
