"""Cohort cost per 5m bar over a simulated month (figures, not tests):
`make bench-cohorts` or `python bench/bench_cohorts.py [--days 30] [--cap 20000]`.

Live Hyperliquid data brings about 11,500 new addresses a day. The simulation feeds the
cohort tracker one month of 5m bars (8,640), each with ~40 first-time addresses (11.5k a
day) and trades among 2,000 regulars, and prints per simulated day the address table
size and the cost of a bar close (median and p99, microseconds), plus the cost of a
snapshot (what Bytewax recovery pickles). `--reference` also runs the unbounded tracker
this replaced (a full decay and sort per bar) for the first days, for comparison.
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.bars import Bar  # noqa: E402
from operators.cohorts import CohortTracker  # noqa: E402
from operators.config import CohortConfig  # noqa: E402

BAR_MS = 300_000
BARS_PER_DAY = 288
T0 = 1_704_067_200_000


def simulate(tracker, days: int, new_per_day: int, trades_per_bar: int, seed: int = 7):
    """Yields (day, bar close seconds) per bar; trades go in between, untimed."""
    rng = random.Random(seed)
    new_per_bar = new_per_day / BARS_PER_DAY
    px, n_new, owed = 60_000.0, 0, 0.0
    for i in range(days * BARS_PER_DAY):
        start = T0 + i * BAR_MS
        owed += new_per_bar
        fresh = int(owed)
        owed -= fresh
        for j in range(trades_per_bar):
            if j < fresh:
                a, n_new = f"0xnew{n_new:08d}", n_new + 1
            else:
                a = f"0xreg{rng.randrange(2_000):05d}"
            b = f"0xmm{rng.randrange(50):03d}"
            buyer, seller = (a, b) if rng.random() < 0.5 else (b, a)
            tracker.add_trade(start + j * 1_000, px, rng.uniform(0.001, 0.5), buyer, seller)
        px *= math.exp(rng.gauss(0.0, 0.0015))
        bar = Bar("BTC-PERP", "5m", start, start + BAR_MS, px, px, px, px, 1.0, 1, True)
        t0 = time.perf_counter()
        tracker.close_bar(bar)
        yield i // BARS_PER_DAY, time.perf_counter() - t0


def run(tracker, label: str, days: int, args) -> None:
    per_day: dict[int, list[float]] = {}
    for day, dt in simulate(tracker, days, args.new_per_day, args.trades_per_bar):
        per_day.setdefault(day, []).append(dt)
        if len(per_day[day]) == BARS_PER_DAY and (day + 1) % args.every == 0:
            xs = sorted(per_day[day])
            p99_us = xs[int(0.99 * len(xs))] * 1e6
            size = len(tracker.raw) if hasattr(tracker, "raw") else len(tracker.skill)
            t0 = time.perf_counter()
            blob = pickle.dumps(tracker)
            snap_ms = (time.perf_counter() - t0) * 1e3
            print(
                f"{label:9} day {day + 1:3}: {size:7,} addresses, bar close median "
                f"{statistics.median(xs) * 1e6:8.0f} us, p99 {p99_us:8.0f} us"
                f", snapshot {len(blob) / 1e6:6.2f} MB in {snap_ms:6.1f} ms",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--cap", type=int, default=CohortConfig().max_addresses)
    ap.add_argument("--new-per-day", type=int, default=11_500)
    ap.add_argument("--trades-per-bar", type=int, default=200)
    ap.add_argument("--every", type=int, default=3, help="print every N days")
    ap.add_argument("--reference", type=int, default=0, help="days of the unbounded tracker")
    args = ap.parse_args()
    cfg = CohortConfig(max_addresses=args.cap)
    print(
        f"cohorts: {args.days} days x {BARS_PER_DAY} bars, {args.new_per_day:,} new addresses "
        f"a day, {args.trades_per_bar} trades a bar, cap {args.cap:,}"
    )
    run(CohortTracker(cfg), "bounded", args.days, args)
    if args.reference:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_cohort_bounds import _UnboundedReference

        run(_UnboundedReference(cfg), "unbounded", args.reference, args)


if __name__ == "__main__":
    main()
