"""Scoring probability forecasts of up/down: the numbers the manifest and the card show.

Every score is computed on the same out-of-sample rows for the model and its baselines.
Bins are quantiles of the forecast (equal counts), and equal forecasts always share a
bin, so a forecast with ten or fewer distinct values (isotonic, the baselines) is
decomposed exactly.

Brier decomposition (Murphy 1973): Brier = REL - RES + UNC, with
  REL = sum_k n_k/N (mean forecast_k - observed frequency_k)^2  (lower is better),
  RES = sum_k n_k/N (observed frequency_k - base rate)^2       (higher is better),
  UNC = base rate (1 - base rate)                               (the data's, fixed).
With continuous forecasts the identity holds only up to a within-bin term, reported as
`brier_residual`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

N_BINS = 10
CONF_THRESHOLDS = (0.55, 0.60, 0.65)  # the no-trade zone and CONF_MIN of presets 1.0 / 1.1


def quantile_bins(p: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin index per row: equal-count bins over p; equal values share a bin."""
    if len(p) == 0:
        return np.zeros(0, dtype=int)
    inner = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(np.unique(inner), p, side="right")


def brier_decomposition(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    bins = quantile_bins(p)
    base = float(y.mean())
    rel = res = 0.0
    for b in np.unique(bins):
        sel = bins == b
        w = sel.mean()
        rel += w * (p[sel].mean() - y[sel].mean()) ** 2
        res += w * (y[sel].mean() - base) ** 2
    unc = base * (1.0 - base)
    brier = float(np.mean((p - y) ** 2))
    return {
        "brier": brier,
        "reliability": float(rel),
        "resolution": float(res),
        "uncertainty": float(unc),
        "brier_residual": float(brier - (rel - res + unc)),
    }


def scores(y: np.ndarray, p: np.ndarray, direction: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, log loss, Brier and its decomposition, AUC.

    `direction` (1 up, 0 down) is the call scored by accuracy; by default p >= 0.5.
    """
    call = (p >= 0.5).astype(int) if direction is None else direction
    auc_score = p if direction is None else call
    return {
        "n": int(len(y)),
        "base_rate_up": float(y.mean()),
        "accuracy": float(np.mean(call == y)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        **brier_decomposition(y, p),
        "auc": float(roc_auc_score(y, auc_score)) if len(np.unique(y)) > 1 else float("nan"),
    }


def reliability_table(y: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    bins = quantile_bins(p)
    rows = []
    for b in np.unique(bins):
        sel = bins == b
        rows.append(
            {
                "n": int(sel.sum()),
                "p_min": float(p[sel].min()),
                "p_max": float(p[sel].max()),
                "mean_p": float(p[sel].mean()),
                "freq_up": float(y[sel].mean()),
            }
        )
    return rows


def hit_rate_by_confidence(
    y: np.ndarray, p: np.ndarray, baselines: dict[str, np.ndarray]
) -> list[dict[str, float]]:
    """Deciles of the model's confidence max(p, 1-p): its hit rate, and each baseline's
    hit rate on the same rows (`baselines` maps name -> call, 1 up / 0 down)."""
    conf = np.maximum(p, 1.0 - p)
    call = (p >= 0.5).astype(int)
    bins = quantile_bins(conf)
    rows = []
    for b in np.unique(bins):
        sel = bins == b
        row = {
            "n": int(sel.sum()),
            "conf_min": float(conf[sel].min()),
            "conf_max": float(conf[sel].max()),
            "mean_conf": float(conf[sel].mean()),
            "hit_rate": float(np.mean(call[sel] == y[sel])),
        }
        for name, c in baselines.items():
            row[f"hit_rate_{name}"] = float(np.mean(c[sel] == y[sel]))
        rows.append(row)
    return rows


def threshold_table(y: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    """For each confidence threshold: share of rows at or above it and their hit rate."""
    conf = np.maximum(p, 1.0 - p)
    call = (p >= 0.5).astype(int)
    rows = []
    for t in CONF_THRESHOLDS:
        sel = conf >= t - 1e-12
        rows.append(
            {
                "conf_min": t,
                "share": float(sel.mean()),
                "n": int(sel.sum()),
                "hit_rate": float(np.mean(call[sel] == y[sel])) if sel.any() else float("nan"),
            }
        )
    return rows


def monotonicity(rows: list[dict[str, float]]) -> float:
    """Spearman correlation of decile confidence and hit rate (1 = perfectly monotone)."""
    if len(rows) < 3:
        return float("nan")
    a = np.argsort(np.argsort([r["mean_conf"] for r in rows]))
    b = np.argsort(np.argsort([r["hit_rate"] for r in rows]))
    return float(np.corrcoef(a, b)[0, 1])


def paired_brier_difference(
    y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, block_rows: int = 48
) -> dict[str, float]:
    """Brier(a) - Brier(b) on the same rows, with a standard error by batch means.

    Neighbouring rows share most of their label window (and volatility regime), so rows
    are not independent: the error is computed from the means of consecutive blocks of
    `block_rows` rows (time order), which absorbs short-range dependence.
    """
    d = (p_a - y) ** 2 - (p_b - y) ** 2
    n_blocks = len(d) // block_rows
    if n_blocks < 2:
        return {"diff": float(d.mean()), "se": float("nan"), "z": float("nan")}
    means = d[: n_blocks * block_rows].reshape(n_blocks, block_rows).mean(axis=1)
    se = float(means.std(ddof=1) / np.sqrt(n_blocks))
    diff = float(d.mean())
    return {"diff": diff, "se": se, "z": diff / se if se > 0 else float("nan")}
