"""Benchmark (figures, not a test): the whole flow beside NautilusTrader on the same ticks.

    python bench/bench_nautilus.py [--ticks 2000000] [--rounds 3] [--nautilus-python PY]

NautilusTrader is not a project dependency and this script installs nothing. Put it in a
separate venv once:

    python3.11 -m venv /tmp/nautilus && /tmp/nautilus/bin/pip install nautilus_trader==1.221.0

and pass `--nautilus-python /tmp/nautilus/bin/python` (default: this interpreter, if it
can import nautilus_trader). Each round runs, one after the other on the same seeded ticks
(bench/ticks.py, parquet): NautilusTrader's BacktestEngine (trades → 5m/15m/1h bars with
a 20-bar EMA each; bench/nautilus_bars.py; the figure is `engine.run()` alone, loading
the ticks not counted), then the whole Ensemble flow (`python -m bytewax.run
dataflows.ensemble` over the file: read, decode and validate, bars, cohorts, features,
model, strategy, JSON-lines outputs; the figure is the whole process, start-up included,
and without the start-up, measured on a 1,000-tick file in the same round). Prints the
medians and the ratio. Without NautilusTrader it prints the flow's figure and says the
comparison was skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_throughput import TMP, machine, run_flow  # noqa: E402
from bench.ticks import write_ticks  # noqa: E402

INSTALL = (
    "python3.11 -m venv /tmp/nautilus && /tmp/nautilus/bin/pip install nautilus_trader==1.221.0"
)


def nautilus_importable(python: str) -> bool:
    done = subprocess.run([python, "-c", "import nautilus_trader"], capture_output=True)
    return done.returncode == 0


def run_nautilus(python: str, path: Path) -> dict:
    done = subprocess.run(
        [python, str(ROOT / "bench" / "nautilus_bars.py"), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"NautilusTrader run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nautilus-python", default=sys.executable)
    args = ap.parse_args()
    TMP.mkdir(exist_ok=True)
    print(machine())
    ticks = write_ticks(TMP / f"btc_{args.ticks}.parquet", args.ticks, seed=11)
    tiny = write_ticks(TMP / "btc_1000.parquet", 1_000, seed=11)
    nautilus = nautilus_importable(args.nautilus_python)
    if not nautilus:
        print(
            f"NautilusTrader is not importable by {args.nautilus_python}: the comparison is "
            f"skipped. For it: {INSTALL}, then --nautilus-python /tmp/nautilus/bin/python"
        )
    naut_s, flow_s, flow_net_s = [], [], []
    for r in range(args.rounds):
        line = f"  round {r + 1}:"
        if nautilus:
            res = run_nautilus(args.nautilus_python, ticks)
            naut_s.append(res["run_s"])
            line += (
                f" NautilusTrader run() {res['run_s']:.2f} s = {res['ticks'] / res['run_s']:,.0f} "
                f"ticks/s ({res['bars']} bars);"
            )
        full = run_flow(f"trades:{ticks}", TMP / "out_nautilus_cmp")
        start = run_flow(f"trades:{tiny}", TMP / "out_nautilus_tiny")
        flow_s.append(full.wall_s)
        flow_net_s.append(full.wall_s - start.wall_s)
        print(
            f"{line} flow {full.wall_s:.2f} s = {args.ticks / full.wall_s:,.0f} ticks/s "
            f"({args.ticks / (full.wall_s - start.wall_s):,.0f} without its "
            f"{start.wall_s:.2f} s start-up), {full.peak_mb:,.0f} MB peak"
        )
    flow = args.ticks / statistics.median(flow_s)
    flow_net = args.ticks / statistics.median(flow_net_s)
    print(
        f"Ensemble whole flow, median of {args.rounds}: {flow:,.0f} ticks/s "
        f"({flow_net:,.0f} without start-up)"
    )
    if nautilus:
        naut = args.ticks / statistics.median(naut_s)
        print(f"NautilusTrader BacktestEngine.run(), median of {args.rounds}: {naut:,.0f} ticks/s")
        print(
            f"ratio flow / NautilusTrader: {flow / naut:.2f}x "
            f"({flow_net / naut:.2f}x without start-up)"
        )


if __name__ == "__main__":
    main()
