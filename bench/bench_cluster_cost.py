"""Benchmark (figures, not a test): what Bytewax's cluster path costs one worker.

    python bench/bench_cluster_cost.py [--ticks 2000000] [--rounds 3]

The same one-symbol run of the flow (seeded ticks from bench/ticks.py, one worker),
started four ways inside a fresh process each, rounds interleaved: `run_main` (what
`python -m bytewax.run` uses for one worker), `cluster_main` with no addresses (Timely's
threaded `Process` allocator, no networking), `cluster_main` with one address (the TCP
cluster allocator, as `-i 0 -a HOST:PORT`), and that again with the main thread parked
as the main job parks it (dataflows/cluster.py `install_parking`). Timed from the call
to its return, so start-up is left out. Two processes of two workers each pay the
cluster path's cost, so this is the part of the scale-out gap (docs/benchmarks.md)
that is Bytewax's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_throughput import TMP, _free_port, machine  # noqa: E402
from bench.ticks import write_ticks  # noqa: E402

MODES = (
    "run_main",
    "cluster_main, no address",
    "cluster_main, one address",
    "the same, main thread parked",
)

CHILD = """
import sys, time
from bytewax._bytewax import cluster_main
from bytewax.testing import run_main
from dataflows import cluster
from dataflows.ensemble import build_flow, tune_gc
from dataflows.settings import Settings
mode, port = sys.argv[1], sys.argv[2]
flow = build_flow(Settings.from_env())
tune_gc()
t = time.perf_counter()
if mode == "run_main":
    run_main(flow)
elif mode == "cluster_main, no address":
    cluster_main(flow, [], 0, worker_count_per_proc=1)
else:
    if mode == "the same, main thread parked":  # as the main job does
        cluster.install_parking()
    cluster_main(flow, [f"127.0.0.1:{port}"], 0, worker_count_per_proc=1)
print(time.perf_counter() - t)
"""


def one_run(mode: str, spec: str, out: Path) -> float:
    env = {**os.environ, "ENSEMBLE_INPUT": spec, "ENSEMBLE_OUT": str(out), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(_free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    TMP.mkdir(exist_ok=True)
    print(machine())
    spec = f"trades:{write_ticks(TMP / f'btc_{args.ticks}.parquet', args.ticks, seed=11)}"
    secs: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            for mode in MODES:
                secs[mode].append(one_run(mode, spec, Path(out) / "out"))
                print(f"  round {r + 1} {mode:28s}: {secs[mode][-1]:.2f} s", flush=True)
    base = statistics.median(secs["run_main"])
    for mode, xs in secs.items():
        med = statistics.median(xs)
        print(f"{mode:28s}: median {med:.2f} s ({med / base - 1:+.0%} against run_main)")


if __name__ == "__main__":
    main()
