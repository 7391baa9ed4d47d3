"""Benchmark (figures, not a test): trade ticks/s through the whole flow, from a file.

    python bench/bench_throughput.py [--ticks 2000000] [--rounds 3] [--workers 1]

Writes seeded synthetic BTC ticks (bench/ticks.py) to a parquet file in a temporary
directory (kept between runs under the same name), then runs
`python -m bytewax.run dataflows.ensemble` over it as a fresh process per round
(`ENSEMBLE_INPUT=trades:FILE`, JSON-lines outputs): decode, validation, bars, features,
model, strategy, outputs. Prints per round the wall time (process start to exit, so
start-up is included), ticks/s and the process's peak RSS, then the medians.

`--workers 2` runs `-w 2`; `--processes 2` runs two processes (`-i/-a`), each with
`--workers` workers. With `--compare-workers` the rounds interleave 1 worker, `-w 2` and
two processes on a two-symbol input (`--ticks` per symbol), and the outputs are checked
to be equal (as sorted lines: the order of lines across symbols is the scheduler's).
Each round also runs one symbol's flow alone and both symbols as two separate flows at
once (no cluster, two accounts): how much two processes can get from this machine at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ticks import write_ticks  # noqa: E402

TMP = Path(tempfile.gettempdir()) / "ensemble-bench"
TIMEOUT_S = 600.0  # one run of the flow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system of every process: less disturbed by other jobs on the cores
    peak_mb: float  # peak RSS of the largest process


def flow_env(spec: str, out: Path, tree: Path = ROOT) -> dict[str, str]:
    """The environment of a run of the flow in `tree` over the input `spec` into `out`."""
    return {**os.environ, "ENSEMBLE_INPUT": spec, "ENSEMBLE_OUT": str(out), "PYTHONPATH": str(tree)}


def run_flow(spec: str, out: Path, workers: int = 1, processes: int = 1, tree: Path = ROOT) -> Run:
    """One run of the flow in the checkout `tree` (another worktree: the same ticks
    before and after a change)."""
    return run_processes(flow_env(spec, out, tree), workers, processes, tree)


def run_processes(
    env: dict[str, str] | list[dict[str, str]],
    workers: int = 1,
    processes: int = 1,
    cwd: Path = ROOT,
) -> Run:
    """`python -m bytewax.run dataflows.ensemble` with `workers` workers in each of
    `processes` processes (`-i/-a` on free local ports), timed from start to the last
    exit. A list of environments instead runs one separate flow per environment, all at
    once (no cluster: the machine's own ceiling for running them side by side). Their
    stderr goes to a file (a full pipe would block a flow); a run that fails, or takes
    more than TIMEOUT_S, stops the benchmark with its stderr."""
    base = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble", "-w", str(workers)]
    if isinstance(env, list):
        runs = [(base, e) for e in env]
    elif processes == 1:
        runs = [(base, env)]
    else:
        addrs = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
        runs = [([*base, "-i", str(i), "-a", addrs], env) for i in range(processes)]
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(c, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
            for c, e in runs
        ]
        peak_kb, cpu, codes = 0, 0.0, []
        waiting = {p.pid for p in procs}
        while waiting:
            for pid in list(waiting):
                peak_kb = max(peak_kb, status_kb(pid))
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    waiting.discard(pid)
                    codes.append(os.waitstatus_to_exitcode(status))
                    cpu += usage.ru_utime + usage.ru_stime
            if waiting and time.perf_counter() - t0 > TIMEOUT_S:
                for p in procs:
                    p.kill()
                raise SystemExit(f"the flow did not finish in {TIMEOUT_S:.0f} s")
            time.sleep(0.005)
        secs = time.perf_counter() - t0
        if any(codes):
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise SystemExit(f"flow failed ({sorted(codes)}): {err[-2000:]}")
    return Run(secs, cpu, peak_kb / 1024)


def status_kb(pid: int | str, field: str = "VmHWM") -> int:
    """A field of the process's /proc status in kB: VmHWM, its peak resident memory so far,
    by default; 0 once it has exited. Not `wait4`'s ru_maxrss: Linux keeps the largest of
    the forking process's memory in its children across exec, so a child of this process
    (which generated the ticks, over a GB for 2 x 8M) reported this process's size, not its
    own. Read every 5 ms while the flow runs, it misses at most what the last 5 ms added."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def outputs(out: Path, ordered: bool = True) -> dict[str, list[str]]:
    """Each output file's lines; sorted unless `ordered` (several workers interleave
    symbols in their own order)."""
    got = {f.name: f.read_text().splitlines() for f in sorted(out.glob("*.jsonl"))}
    return got if ordered else {name: sorted(lines) for name, lines in got.items()}


def _median(runs: list[Run]) -> Run:
    return Run(
        *(statistics.median(getattr(r, f) for r in runs) for f in ("wall_s", "cpu_s", "peak_mb"))
    )


def _figures(run: Run, ticks: int) -> str:
    return (
        f"{run.wall_s:.2f} s wall = {ticks / run.wall_s:,.0f} ticks/s; "
        f"{run.cpu_s:.2f} s CPU = {ticks / run.cpu_s:,.0f} ticks/CPU-s; {run.peak_mb:,.0f} MB peak"
    )


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load:.2f} at start"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--compare-workers", action="store_true")
    ap.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="run the flow from this checkout instead (repeat: interleaved rounds, "
        "outputs compared)",
    )
    args = ap.parse_args()
    TMP.mkdir(exist_ok=True)
    print(machine())
    btc = write_ticks(TMP / f"btc_{args.ticks}.parquet", args.ticks, seed=11)
    if not args.compare_workers:
        spec = f"trades:{btc}"
        trees = args.tree or [ROOT]
        runs: dict[Path, list[Run]] = {t: [] for t in trees}
        reference = None
        for r in range(args.rounds):
            for i, tree in enumerate(trees):
                out = TMP / f"out_tree{i}"
                run = run_flow(spec, out, args.workers, args.processes, tree)
                runs[tree].append(run)
                got = outputs(out)
                if reference is None:
                    reference, same = got, ""
                else:
                    same = ", same outputs" if got == reference else ", DIFFERENT OUTPUTS"
                print(f"  round {r + 1} {tree}: {_figures(run, args.ticks)}{same}")
        for tree, rs in runs.items():
            print(
                f"whole flow ({tree}), {args.ticks:,} ticks from parquet, {args.processes} "
                f"process(es) x {args.workers} worker(s), median of {len(rs)}: "
                f"{_figures(_median(rs), args.ticks)}"
            )
        return
    eth = write_ticks(TMP / f"eth_{args.ticks}.parquet", args.ticks, seed=12)
    spec = f"trades:{btc}?symbol=BTC-PERP,trades:{eth}?symbol=ETH-PERP"
    layouts = {"1 worker": (1, 1), "-w 2": (2, 1), "2 processes": (1, 2)}
    times: dict[str, list[Run]] = {
        k: [] for k in [*layouts, "one symbol alone", "2 separate flows"]
    }
    reference = None
    differed = []
    for r in range(args.rounds):
        for name, (w, p) in layouts.items():
            out = TMP / f"out_{w}_{p}"
            run = run_flow(spec, out, w, p)
            times[name].append(run)
            got = outputs(out, ordered=False)
            if reference is None:
                reference, same = got, ""
            else:
                same = " same outputs" if got == reference else " DIFFERENT OUTPUTS"
                if got != reference:
                    differed.append(f"round {r + 1} {name}")
            print(f"  round {r + 1} {name:12s}: {_figures(run, 2 * args.ticks)}{same}")
        # the ceiling: each symbol as a flow of its own, both at once, no cluster (two
        # accounts, so outputs differ); beside it, one of them alone
        alone = [
            flow_env(f"trades:{f}?symbol={sym}", TMP / f"out_alone_{i}")
            for i, (f, sym) in enumerate(((btc, "BTC-PERP"), (eth, "ETH-PERP")))
        ]
        times["one symbol alone"].append(run_processes(alone[0]))
        times["2 separate flows"].append(run_processes(alone))
        for name, ticks in (("one symbol alone", args.ticks), ("2 separate flows", 2 * args.ticks)):
            print(f"  round {r + 1} {name:12s}: {_figures(times[name][-1], ticks)}")
    base = _median(times["1 worker"]).wall_s
    for name in layouts:
        med = _median(times[name])
        print(
            f"{name:12s}: median {_figures(med, 2 * args.ticks)} "
            f"({base / med.wall_s:.2f}x one worker's wall time)"
        )
    one, two = (_median(times[k]).wall_s for k in ("one symbol alone", "2 separate flows"))
    print(
        f"ceiling on this machine: one symbol's flow alone {one:.2f} s, two separate flows "
        f"at once {two:.2f} s ({one / two * 2:.2f}x the work in the time of one); one worker "
        f"on both symbols against the separate flows: {base / two:.2f}x"
    )
    if differed:  # figures of runs that wrote something else compare nothing
        raise SystemExit(f"outputs differed from the first run's in: {', '.join(differed)}")


if __name__ == "__main__":
    main()
