"""Train the model artifact the flow loads: `python -m models.train`.

Data: market-data files (file specs as in ENSEMBLE_INPUT; by default the real BTC data in
../shared/data), replayed through the flow's own operators into 5m features
(models/dataset.py). Labels: up/down over `--horizon` 5m bars, leaving out moves inside
`--dead-zone-bps`. Model: standardised, L2-regularised logistic regression, calibrated
with isotonic regression on time-ordered folds (never shuffled). The last
`--holdout` share of each file is held out for the metrics in the manifest, and the
shipped model is then fit on everything.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import TimeSeriesSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from marketdata.files import FileSpec, file_records
from models.dataset import contexts, matrix
from operators.features import FEATURES
from operators.predict import DEFAULT_ARTIFACT, sha256_file

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_DATA = (
    f"candles:{SHARED}/ftx_btc-perp_2021-12-31_2022-02-01_1m.csv?volume=quote",
    f"candles:{SHARED}/binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather",
    f"candles:{SHARED}/binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json",
)


def build_model(seed: int) -> CalibratedClassifierCV:
    base = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.05, max_iter=2000, random_state=seed)
    )
    return CalibratedClassifierCV(base, method="isotonic", cv=TimeSeriesSplit(n_splits=4))


def load(spec_text: str, horizon: int, dead_zone_bps: float):
    spec = FileSpec.parse(spec_text)
    ctxs = list(
        contexts(
            file_records([spec]),
            frozenset({spec.symbol}) if spec.kind == "candles" else frozenset(),
        )
    )
    return spec, matrix(ctxs, horizon, dead_zone_bps), len(ctxs)


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, p >= 0.5)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "auc": float(roc_auc_score(y, p)) if len(set(y)) > 1 else float("nan"),
        "base_rate_up": float(y.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        action="append",
        help="file spec KIND:PATH[?symbol=..&volume=quote]; "
        "repeat for several (default: the real BTC files in ../shared/data)",
    )
    ap.add_argument("--horizon", type=int, default=3, help="label horizon in 5m bars")
    ap.add_argument("--dead-zone-bps", type=float, default=5.0)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    args = ap.parse_args(argv)
    specs = args.data or list(DEFAULT_DATA)

    train_x, train_y, test_x, test_y, data = [], [], [], [], []
    spans = []
    for s in specs:
        t0 = time.perf_counter()
        spec, (x, y, _, ts), n_bars = load(s, args.horizon, args.dead_zone_bps)
        if len(y) < 500:
            raise SystemExit(f"{spec.path}: only {len(y)} labelled bars; need at least 500")
        cut = int(len(y) * (1 - args.holdout))
        train_x.append(x[:cut]), train_y.append(y[:cut])
        test_x.append(x[cut:]), test_y.append(y[cut:])
        spans.append((int(ts[0]), int(ts[-1])))
        data.append(
            {
                "spec": s.replace(str(SHARED), "../shared/data"),
                "sha256": sha256_file(spec.path),
                "bars_5m": n_bars,
                "labelled": int(len(y)),
            }
        )
        print(
            f"  {spec.path.name}: {n_bars} 5m bars, {len(y)} labelled "
            f"({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )

    xtr, ytr = np.vstack(train_x), np.concatenate(train_y)
    xte, yte = np.vstack(test_x), np.concatenate(test_y)
    print(f"fitting on {len(ytr)} rows, holding out {len(yte)}", file=sys.stderr)
    holdout_model = build_model(args.seed).fit(xtr, ytr)
    p_cal = holdout_model.predict_proba(xte)[:, 1]
    raw = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000)).fit(xtr, ytr)
    p_raw = raw.predict_proba(xte)[:, 1]
    mets = {
        "holdout_calibrated": metrics(yte, p_cal),
        "holdout_uncalibrated": metrics(yte, p_raw),
        "holdout_majority_brier": float(brier_score_loss(yte, np.full(len(yte), ytr.mean()))),
    }

    model = build_model(args.seed).fit(np.vstack([xtr, xte]), np.concatenate([ytr, yte]))
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.pkl"
    with open(model_path, "wb") as f:
        pickle.dump({"meta": model, "bma": None}, f, protocol=5)
    manifest = {
        "model_id": f"logreg-isotonic-h{args.horizon}-{sha256_file(model_path)[:12]}",
        "features": list(FEATURES),
        "horizon_bars": args.horizon,
        "dead_zone_bps": args.dead_zone_bps,
        "training_span_ms": [min(a for a, _ in spans), max(b for _, b in spans)],
        "data": data,
        "seed": args.seed,
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "metrics": mets,
        "model_sha256": sha256_file(model_path),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    c = mets["holdout_calibrated"]
    print(
        f"wrote {args.out}: holdout accuracy {c['accuracy']:.4f}, brier {c['brier']:.5f} "
        f"(uncalibrated {mets['holdout_uncalibrated']['brier']:.5f}, "
        f"majority {mets['holdout_majority_brier']:.5f}), auc {c['auc']:.4f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
