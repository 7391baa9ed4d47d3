"""Train the model artifact the flow loads: `python -m models.train`.

Data: one or more inputs (`--data`, file specs as in ENSEMBLE_INPUT; several files of one
market joined with commas, e.g. candles plus funding; by default the three real BTC
candle files in ../shared/data), each replayed through the flow's own operators into 5m
features (models/dataset.py, which also checks the streaming features against their
batch twin). Labels: up/down over `--horizon` 5m bars; moves inside `--dead-zone-bps`
are left out (too small to pay the round-trip cost).

Validation: expanding walk-forward in time order, never shuffled. The rows of all inputs
are put in time order; the last `1 - --first-test` share is cut into `--folds`
consecutive test folds, and each fold is predicted by a model fit only on earlier rows,
less a purge gap of `--purge-bars` (no training label overlaps the test fold). The
baselines (always the majority class; a momentum rule) are fit on the same training rows
and scored on the same test rows.

Model (models/ensemble.py): L2 logistic regression and gradient boosting, stacked by a
logistic meta-classifier, calibrated with isotonic or Platt (chosen on validation inside
each fit), plus a Bayesian-model-averaging combination. The shipped model is fit on all
rows. Writes model.pkl (the estimators), fast.npz (the arrays the flow predicts from),
manifest.json, card.md and calibration.png to a new directory,
`out/models/<model_id>` (run the flow on it with ENSEMBLE_MODEL_DIR), or to `--out`. A
directory that already holds an artifact, the shipped one included, is replaced only
with `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from threadpoolctl import threadpool_limits

from models.card import utc_text, write_card
from models.dataset import Labelled, Source, load_source
from models.ensemble import BASE_LEARNERS, HGB_MAX_ITER, FitError, fit_ensemble
from models.evaluation import (
    hit_rate_by_confidence,
    monotonicity,
    paired_brier_difference,
    reliability_table,
    scores,
    threshold_table,
)
from operators.features import FEATURES
from operators.predict import DEFAULT_ARTIFACT, FastEnsemble, sha256_file, write_fast

NEW_ARTIFACTS = Path("out/models")  # where `make train` puts a new artifact (not committed)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_DATA = (
    f"candles:{SHARED}/ftx_btc-perp_2021-12-31_2022-02-01_1m.csv?volume=quote",
    f"candles:{SHARED}/binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather",
    f"candles:{SHARED}/binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json",
)
BAR_MS = 300_000
# The forecasts the report scores, in the order its tables list them.
FORECASTS = (
    "meta",
    "meta_raw",
    "meta_isotonic",
    "meta_sigmoid",
    "bma",
    *(f"{b}_{k}" for b in BASE_LEARNERS for k in ("raw", "cal")),
    "majority",
    "momentum",
)

# Paired Brier differences the card reports (negative = the first is better).
COMPARISONS = (
    ("meta", "meta_raw"),
    ("meta_isotonic", "meta_raw"),
    ("meta_sigmoid", "meta_raw"),
    ("meta", "majority"),
    ("meta", "momentum"),
    ("bma", "majority"),
    ("bma", "momentum"),
    ("meta", "bma"),
)


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...] = DEFAULT_DATA
    horizon_bars: int = 3
    dead_zone_bps: float = 5.0
    folds: int = 5
    first_test: float = 0.5
    purge_bars: int = 12
    seed: int = 7
    max_bars: int | None = None
    hgb_max_iter: int = HGB_MAX_ITER
    out: Path = DEFAULT_ARTIFACT

    def __post_init__(self) -> None:
        problems = []
        if not self.data:
            problems.append("no --data given")
        if self.horizon_bars < 1:
            problems.append(f"--horizon {self.horizon_bars} must be >= 1")
        if self.dead_zone_bps < 0:
            problems.append(f"--dead-zone-bps {self.dead_zone_bps} must be >= 0")
        if self.folds < 1:
            problems.append(f"--folds {self.folds} must be >= 1")
        if not 0.2 <= self.first_test < 1:
            problems.append(f"--first-test {self.first_test} must be in [0.2, 1)")
        if self.purge_bars < self.horizon_bars:
            problems.append(
                f"--purge-bars {self.purge_bars} must be >= --horizon {self.horizon_bars} "
                "(else training labels overlap the test fold)"
            )
        if self.hgb_max_iter < 1:
            problems.append(f"--hgb-iter {self.hgb_max_iter} must be >= 1")
        if self.max_bars is not None and self.max_bars < 200:
            problems.append(f"--max-bars {self.max_bars} must be >= 200")
        if problems:
            raise SystemExit("models.train: " + "; ".join(problems))

    @property
    def purge_ms(self) -> int:
        return self.purge_bars * BAR_MS


@dataclass
class WalkForward:
    """Out-of-sample forecasts of every fold, concatenated in time order."""

    y: np.ndarray
    end_ms: np.ndarray
    fold: np.ndarray
    forecasts: dict[str, np.ndarray]
    calls: dict[str, np.ndarray]  # baselines' up/down calls (1 up)
    folds: list[dict[str, Any]] = field(default_factory=list)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def display_spec(spec: str) -> str:
    """The spec with the shared data directory written as ../shared/data."""
    return spec.replace(str(SHARED), "../shared/data")


def baselines(train: Labelled, test: Labelled) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(probability, call) of the two baselines, fit on `train`, for the rows of `test`.

    majority: the training base rate as the probability, the majority class as the call.
    momentum: call the sign of the return over the previous `horizon` bars; its
    probability is the rule's training hit rate h (h when it calls up, 1 - h when down).
    """
    rate = float(train.y.mean())
    maj_call = np.full(len(test), int(rate >= 0.5))
    train_mom = (train.past_ret > 0).astype(int)
    h = float(np.mean(train_mom == train.y))
    mom_call = (test.past_ret > 0).astype(int)
    return {
        "majority": (np.full(len(test), rate), maj_call),
        "momentum": (np.where(mom_call == 1, h, 1.0 - h), mom_call),
    }


def _take(d: Labelled, idx: np.ndarray) -> Labelled:
    return Labelled(d.x[idx], d.y[idx], d.fwd_ret[idx], d.end_ms[idx], d.past_ret[idx])


def walk_forward(d: Labelled, cfg: TrainConfig, log: Callable[[str], None]) -> WalkForward:
    n = len(d)
    edges = np.linspace(int(n * cfg.first_test), n, cfg.folds + 1).astype(int)
    parts: dict[str, list[np.ndarray]] = {}
    calls: dict[str, list[np.ndarray]] = {"majority": [], "momentum": []}
    ys, ts, fold_ids, folds = [], [], [], []
    for f, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        t0 = time.perf_counter()
        train_idx = np.flatnonzero(d.end_ms[:a] <= d.end_ms[a] - cfg.purge_ms)
        test_idx = np.arange(a, b)
        if len(train_idx) == 0:
            raise FitError(f"fold {f + 1}: no training rows before the purge gap")
        log(
            f"[fold {f + 1}/{cfg.folds}] train {len(train_idx)} rows "
            f"to {utc_text(int(d.end_ms[train_idx[-1]]))}, test {len(test_idx)} rows "
            f"{utc_text(int(d.end_ms[a]))} .. {utc_text(int(d.end_ms[b - 1]))}"
        )
        train, test = _take(d, train_idx), _take(d, test_idx)
        fitted = fit_ensemble(
            train.x, train.y, train.end_ms, cfg.purge_ms, cfg.seed, log, cfg.hgb_max_iter
        )
        comp = fitted.components(test.x)
        for name, (p, call) in baselines(train, test).items():
            comp[name] = p
            calls[name].append(call)
        for name in FORECASTS:
            parts.setdefault(name, []).append(comp[name])
        ys.append(test.y)
        ts.append(test.end_ms)
        fold_ids.append(np.full(len(test), f))
        fold = {
            "fold": f + 1,
            "train_rows": int(len(train_idx)),
            "train_end_ms": int(train.end_ms[-1]),
            "test_rows": int(len(test_idx)),
            "test_span_ms": [int(test.end_ms[0]), int(test.end_ms[-1])],
            "calibration_method": fitted.info["calibration_method"],
            "bma_weights": fitted.info["bma_weights"],
            "scores": {
                name: _brief(scores(test.y, comp[name])) for name in ("meta", "meta_raw", "bma")
            }
            | {
                name: _brief(scores(test.y, comp[name], calls[name][-1]))
                for name in ("majority", "momentum")
            },
        }
        folds.append(fold)
        s = fold["scores"]
        log(
            f"[fold {f + 1}/{cfg.folds}] Brier meta {s['meta']['brier']:.5f} "
            f"(uncalibrated {s['meta_raw']['brier']:.5f}), bma {s['bma']['brier']:.5f}, "
            f"majority {s['majority']['brier']:.5f}, momentum {s['momentum']['brier']:.5f}; "
            f"AUC meta {s['meta']['auc']:.4f} ({time.perf_counter() - t0:.1f} s)"
        )
    return WalkForward(
        np.concatenate(ys),
        np.concatenate(ts),
        np.concatenate(fold_ids),
        {k: np.concatenate(v) for k, v in parts.items()},
        {k: np.concatenate(v) for k, v in calls.items()},
        folds,
    )


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("n", "accuracy", "log_loss", "brier", "auc")}


def report(wf: WalkForward) -> dict[str, Any]:
    """Pooled out-of-sample metrics of every forecast and the tables of the card."""
    y = wf.y
    pooled = {name: scores(y, wf.forecasts[name], wf.calls.get(name)) for name in wf.forecasts}
    base_calls = dict(wf.calls)
    tables = {
        name: {
            "reliability": reliability_table(y, wf.forecasts[name]),
            "hit_rate_by_confidence": hit_rate_by_confidence(y, wf.forecasts[name], base_calls),
            "thresholds": threshold_table(y, wf.forecasts[name]),
        }
        for name in ("meta", "meta_raw", "bma")
    }
    for t in tables.values():
        t["confidence_monotonicity"] = monotonicity(t["hit_rate_by_confidence"])
    cal, raw = pooled["meta"]["brier"], pooled["meta_raw"]["brier"]
    last = int(wf.fold.max())
    sel = wf.fold == last
    return {
        # The shipped p_up's out-of-sample scores, under the name earlier manifests used.
        "holdout_calibrated": {
            k: pooled["meta"][k]
            for k in ("n", "accuracy", "brier", "log_loss", "auc", "base_rate_up")
        },
        "walk_forward": pooled,
        "per_fold": wf.folds,
        "latest_fold": {
            name: _brief(scores(y[sel], wf.forecasts[name][sel], _sel(wf.calls.get(name), sel)))
            for name in ("meta", "meta_raw", "bma", "majority", "momentum")
        },
        "tables": tables,
        "brier_differences": {
            f"{a} - {b}": paired_brier_difference(y, wf.forecasts[a], wf.forecasts[b])
            for a, b in COMPARISONS
        },
        "calibration_brier_change": cal - raw,
        "calibration_helped": bool(cal < raw),
    }


def _sel(a: np.ndarray | None, sel: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[sel]


def load_data(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[list[Source], Labelled]:
    sources = []
    for spec in cfg.data:
        t0 = time.perf_counter()
        src = load_source(spec, cfg.horizon_bars, cfg.dead_zone_bps, cfg.max_bars)
        if len(src.data) < 200:
            raise SystemExit(
                f"{display_spec(spec)}: only {len(src.data)} labelled bars; need at least 200"
            )
        log(
            f"  {display_spec(spec)}: {src.bars_5m} 5m bars, {len(src.data)} labelled, "
            f"feature parity {src.parity_max_abs:.1e} ({time.perf_counter() - t0:.1f} s)"
        )
        sources.append(src)
    data = Labelled.concat([s.data for s in sources])
    order = np.argsort(data.end_ms, kind="stable")
    return sources, _take(data, order)


def train(cfg: TrainConfig, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Train, validate, write the artifact and its card; returns the manifest.

    Gradient boosting runs on one OpenMP thread: the fits are small (threads cost more
    than they save on a shared machine), and the pickled model then does not depend on
    the machine's core count (scikit-learn records the thread count in it).
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train(cfg, log)


def _train(cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, Any]:
    t_start = time.perf_counter()
    log(f"loading {len(cfg.data)} input(s)")
    sources, data = load_data(cfg, log)
    up = data.y.mean()
    log(f"{len(data)} labelled rows ({up:.1%} up), walk-forward over {cfg.folds} folds")
    try:
        wf = walk_forward(data, cfg, log)
        log(f"[final] fitting on all {len(data)} rows")
        final = fit_ensemble(
            data.x, data.y, data.end_ms, cfg.purge_ms, cfg.seed, log, cfg.hgb_max_iter
        )
    except FitError as e:
        raise SystemExit(f"models.train: {e}") from e
    metrics = report(wf)

    cfg.out.mkdir(parents=True, exist_ok=True)
    model_path = cfg.out / "model.pkl"
    with open(model_path, "wb") as f:
        pickle.dump(final.bundle, f, protocol=5)
    model_sha = sha256_file(model_path)
    fast_sha = write_fast(cfg.out, FastEnsemble.of(final.model), FEATURES)
    method = final.info["calibration_method"]
    manifest = {
        "model_id": f"stack-{method}-h{cfg.horizon_bars}-{model_sha[:12]}",
        "features": list(FEATURES),
        "horizon_bars": cfg.horizon_bars,
        "dead_zone_bps": cfg.dead_zone_bps,
        "label": (
            f"1 if log(close[t+{cfg.horizon_bars}] / close[t]) > 0 else 0; rows with "
            f"|move| < {cfg.dead_zone_bps} bps are left out of training and of every metric"
        ),
        "training_span_ms": [int(data.end_ms[0]), int(data.end_ms[-1])],
        "training_span_utc": [utc_text(int(data.end_ms[0])), utc_text(int(data.end_ms[-1]))],
        # One entry per file; an input of several files repeats its counts on each.
        "data": [
            {
                "spec": display_spec(f"{fs.kind}:{fs.path}"),
                "sha256": sha256_file(fs.path),
                "input": i + 1,
                "input_spec": display_spec(s.spec),
                "bars_5m": s.bars_5m,
                "labelled": len(s.data),
                "span_utc": [utc_text(int(s.data.end_ms[0])), utc_text(int(s.data.end_ms[-1]))],
                "feature_parity_max_abs": s.parity_max_abs,
            }
            for i, s in enumerate(sources)
            for fs in s.files
        ],
        "constant_features": [
            f for f, sd in zip(FEATURES, data.x.std(axis=0), strict=True) if sd == 0
        ],
        "max_bars": cfg.max_bars,
        "seed": cfg.seed,
        "validation": {
            "scheme": "expanding walk-forward, time-ordered, never shuffled",
            "folds": cfg.folds,
            "first_test_share": cfg.first_test,
            "purge_bars": cfg.purge_bars,
            "oos_rows": int(len(wf.y)),
        },
        "model": {
            "bases": list(BASE_LEARNERS),
            "meta": "logistic regression on the base learners' logits",
            **final.info,
        },
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
        "metrics": metrics,
        "model_sha256": model_sha,
        "fast_sha256": fast_sha,
    }
    (cfg.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    write_card(cfg.out, manifest, wf)
    m, r = metrics["walk_forward"]["meta"], metrics["walk_forward"]["meta_raw"]
    mj, mo = metrics["walk_forward"]["majority"], metrics["walk_forward"]["momentum"]
    log(
        f"wrote {cfg.out} ({manifest['model_id']}) in {time.perf_counter() - t_start:.0f} s\n"
        f"walk-forward OOS ({m['n']} rows): accuracy {m['accuracy']:.4f}, AUC {m['auc']:.4f}, "
        f"Brier {m['brier']:.5f} (uncalibrated {r['brier']:.5f}, majority {mj['brier']:.5f}, "
        f"momentum {mo['brier']:.5f}), log loss {m['log_loss']:.5f}"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    d = TrainConfig.__dataclass_fields__
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        action="append",
        help="input KIND:PATH[?symbol=..&volume=quote][,KIND:PATH...] (one market; repeat "
        "for several inputs; default: the real BTC candle files in ../shared/data)",
    )
    ap.add_argument("--horizon", type=int, default=d["horizon_bars"].default, help="5m bars")
    ap.add_argument("--dead-zone-bps", type=float, default=d["dead_zone_bps"].default)
    ap.add_argument("--folds", type=int, default=d["folds"].default)
    ap.add_argument(
        "--first-test",
        type=float,
        default=d["first_test"].default,
        help="share of the rows before the first test fold",
    )
    ap.add_argument("--purge-bars", type=int, default=d["purge_bars"].default)
    ap.add_argument("--seed", type=int, default=d["seed"].default)
    ap.add_argument(
        "--max-bars", type=int, default=None, help="use only the first N 5m bars of each input"
    )
    ap.add_argument(
        "--hgb-iter",
        type=int,
        default=HGB_MAX_ITER,
        help="boosting iterations of the gradient-boosting base learner",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"artifact directory (default: a new {NEW_ARTIFACTS}/<model_id>)",
    )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the artifact in --out (e.g. the shipped {DEFAULT_ARTIFACT})",
    )
    a = ap.parse_args(argv)
    if a.out is not None and (a.out / "manifest.json").exists() and not a.overwrite:
        raise SystemExit(
            f"models.train: {a.out} already holds an artifact; add --overwrite to replace it, "
            f"or leave out --out to write a new directory under {NEW_ARTIFACTS}/"
        )
    staging = NEW_ARTIFACTS / f".training-{os.getpid()}"
    out = a.out if a.out is not None else staging
    train(
        TrainConfig(
            data=tuple(a.data) if a.data else DEFAULT_DATA,
            horizon_bars=a.horizon,
            dead_zone_bps=a.dead_zone_bps,
            folds=a.folds,
            first_test=a.first_test,
            purge_bars=a.purge_bars,
            seed=a.seed,
            max_bars=a.max_bars,
            hgb_max_iter=a.hgb_iter,
            out=out,
        )
    )
    if a.out is None:  # named by what it is, so a retrain never replaces another artifact
        model_id = json.loads((staging / "manifest.json").read_text())["model_id"]
        final = NEW_ARTIFACTS / model_id
        if final.exists():
            shutil.rmtree(staging)
            _stderr(f"{final} already holds this artifact (same model_id); kept it")
        else:
            staging.rename(final)
            _stderr(f"artifact in {final}; run the flow on it with ENSEMBLE_MODEL_DIR={final}")


if __name__ == "__main__":
    main()
