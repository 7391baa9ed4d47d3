"""Benchmark (figures, not a test): the model's time to predict one bar.

`python bench/bench_predict.py [--artifact DIR] [--bars N]`

Feature vectors come from the real 5m perp candles in ../shared/data replayed through
the flow's feature code (or, when that file is absent, from the embedded generator), and
each is predicted one at a time as the predict step does: `ModelRuntime.predict(dict)`,
feature dict in, (p_up, p_up_bma) out. Prints the median and p99 per bar for the fast
numpy path (what the flow runs) and for the scikit-learn reference path, and the largest
difference between the two. Target: median under 2 ms.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from operators.predict import DEFAULT_ARTIFACT, ModelRuntime  # noqa: E402

PERP_5M = ROOT.parent / "shared" / "data" / "binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json"


def feature_rows(n: int) -> tuple[str, list[dict[str, float]]]:
    from models.dataset import contexts

    if PERP_5M.is_file():
        from marketdata.files import FileSpec, file_records

        source = f"real 5m perp candles ({PERP_5M.name})"
        records = file_records([FileSpec.parse(f"candles:{PERP_5M}")])
        ctxs = contexts(records, frozenset({"BTC-PERP"}))
    else:
        from marketdata.generator import GeneratorConfig, generate

        source = "the embedded generator (../shared/data is absent)"
        ctxs = contexts(generate(GeneratorConfig(days=4)), frozenset({"ETH-PERP"}))
    rows = [c.features for c in ctxs if c.features is not None]
    return source, rows[:n]


def time_per_call(fn, rows: list[dict[str, float]]) -> list[float]:
    out = []
    for r in rows:
        t0 = time.perf_counter_ns()
        fn(r)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    ap.add_argument("--bars", type=int, default=5000)
    args = ap.parse_args()

    rt = ModelRuntime(args.artifact)
    source, rows = feature_rows(args.bars)
    if rt.fast is None:
        print("note: this artifact has no numpy fast path; predict uses scikit-learn")

    def reference(features: dict[str, float]) -> tuple[float, float]:
        p, b = rt.model.predict_proba(rt.vector(features).reshape(1, -1))
        return float(p[0]), float(b[0])

    for r in rows[:200]:  # warm caches and lazy imports
        rt.predict(r)
        reference(r)
    fast_ms = time_per_call(rt.predict, rows)
    ref_ms = time_per_call(reference, rows[: min(len(rows), 1000)])

    fast = np.array([[*(lambda p: (p.p_up, p.p_up_bma))(rt.predict(r))] for r in rows])
    ref_p, ref_b = rt.model.predict_proba(np.array([rt.vector(r) for r in rows]))
    gap = float(np.max(np.abs(fast - np.column_stack([ref_p, ref_b]))))

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q))

    print(f"predict one bar: {rt.model_id}, {len(rows)} bars from {source}")
    print(f"  machine: {platform.machine()}, Python {platform.python_version()}")
    print(
        f"  flow path (numpy):        median {statistics.median(fast_ms):.3f} ms, "
        f"p99 {pct(fast_ms, 99):.3f} ms"
    )
    print(
        f"  scikit-learn reference:   median {statistics.median(ref_ms):.3f} ms, "
        f"p99 {pct(ref_ms, 99):.3f} ms ({len(ref_ms)} bars)"
    )
    print(f"  largest |numpy - scikit-learn| over p_up and p_up_bma: {gap:.1e}")
    print(f"  target: median under 2 ms -> {'met' if statistics.median(fast_ms) < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
