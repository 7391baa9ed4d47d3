"""Benchmark (figures, not a test): one year of 1m candles replayed through the whole flow.

    python bench/bench_year.py [--days 365] [--preset ensemble_1_1]

Writes a seeded synthetic year of BTC-PERP 1m candles (a random walk whose volatility
switches between a calm and a wild regime, the generator's 0.45 / 1.6 annualised) to a
freqtrade-layout feather file in a temporary directory, then times one backtest replay
of it: `dataflows.ensemble` over the file source with its JSON-lines outputs, as
`python -m backtest` runs it (one Bytewax worker). Then times reading those outputs back
and computing the report's KPIs. Target: the replay in under 30 s on this machine.

Memory is this process's peak resident set (VmHWM) during the replay alone (the peak is
reset as it starts), beside what the process held as it started (imports, the generated
candles, the run's set-up), and the peak while the outputs are read back, apart: that
reading sets a higher peak than the replay's, and the one figure read at the end was that.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backtest import kpis, records  # noqa: E402
from backtest.runner import Dataset, Options, Run, replay  # noqa: E402
from bench.bench_throughput import status_kb  # noqa: E402
from operators.predict import load_runtime  # noqa: E402

MINUTE_MS = 60_000
MINUTES_PER_YEAR = 365 * 24 * 60
START = pd.Timestamp("2024-01-01", tz="UTC")
TARGET_S = 30.0  # issue 16


def synthetic_candles(days: float, seed: int) -> pd.DataFrame:
    """1m OHLCV with regime-switching volatility; same seed, same candles."""
    rng = np.random.default_rng(seed)
    n = int(days * 24 * 60)
    switches = rng.random(n) < 1 / 720
    wild = np.cumsum(switches) % 2 == 1
    sigma = np.where(wild, 1.6, 0.45) / np.sqrt(MINUTES_PER_YEAR)
    rets = sigma * rng.standard_normal(n)
    close = 42_000.0 * np.exp(np.cumsum(rets))
    open_ = np.concatenate([[42_000.0], close[:-1]])
    wick = np.abs(rng.standard_normal((2, n))) * sigma * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.lognormal(np.log(3.0), 0.8, n) * np.where(wild, 2.0, 1.0)
    return pd.DataFrame(
        {
            "date": START + pd.to_timedelta(np.arange(n), unit="min"),
            "open": open_.round(2),
            "high": high.round(2),
            "low": low.round(2),
            "close": close.round(2),
            "volume": volume.round(5),
        }
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=365.0)
    ap.add_argument("--preset", default="ensemble_1_1")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, one Bytewax worker"
    )
    with tempfile.TemporaryDirectory(prefix="bench-year-") as tmp:
        t0 = time.perf_counter()
        df = synthetic_candles(args.days, args.seed)
        path = Path(tmp) / "btc_perp_1m_synthetic.feather"
        df.to_feather(path)
        print(
            f"generated {len(df):,} 1m candles ({args.days:g} days) in "
            f"{time.perf_counter() - t0:.1f} s -> {path.stat().st_size / 1e6:.1f} MB feather"
        )

        run = Run(Dataset.parse(f"candles:{path}"), args.preset)
        out = Path(tmp) / "out"
        settings = run.settings(Options(seed=args.seed), out)
        held_mb = memory_mb("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        replay(settings)
        secs = time.perf_counter() - t0
        replay_mb = memory_mb("VmHWM")
        reset_peak()
        t1 = time.perf_counter()
        outputs = records.load(out)
        horizon = load_runtime(str(settings.model_dir)).horizon_bars
        block = kpis.run_kpis(outputs, settings.strategy.risk.initial_equity, horizon)
        report_secs = time.perf_counter() - t1
        bars = len(outputs.bars_5m)
        size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        k = block["kpis"]
        print(
            f"replay through the whole flow ({args.preset}, JSON-lines out): {secs:.1f} s = "
            f"{len(df) / secs:,.0f} candles/s, {bars / secs:,.0f} 5m bars/s "
            f"({bars:,} 5m bars, {k['decisions']:,} decisions, {k['fills']:,} fills, "
            f"{size_mb:,.0f} MB of outputs)"
        )
        print(
            f"target under {TARGET_S:.0f} s: {'met' if secs < TARGET_S else 'NOT met'}; "
            f"reading the outputs back and computing the KPIs: {report_secs:.1f} s"
        )
        print(
            f"peak resident memory of this process during the replay: {replay_mb:,.0f} MB "
            f"(it held {held_mb:,.0f} MB as the replay started: imports, the generated "
            f"candles, the run's set-up); while reading the outputs back and computing the KPIs: "
            f"{memory_mb('VmHWM'):,.0f} MB"
        )


def memory_mb(field: str) -> float:
    """This process's `field` of /proc/self/status (VmRSS now, VmHWM the peak since the
    last `reset_peak`), in MB."""
    return status_kb("self", field) / 1024


def reset_peak() -> None:
    """Start VmHWM again from the current resident set (Linux's clear_refs 5), so that a
    phase's peak is its own, not one set before it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


if __name__ == "__main__":
    main()
