"""Profile (figures, not a test): where the whole flow spends its time on trade ticks.

    python bench/profile_flow.py [--ticks 2000000] [--top 25]

Runs the flow over the bench ticks (bench/ticks.py) in this process under cProfile (one
worker, JSON-lines outputs, the start-up of `python -m bytewax.run` included) and prints
the functions with the most time of their own. cProfile slows Python calls down about
twofold, so read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ticks import write_ticks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=2_000_000)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    tmp = Path(tempfile.gettempdir()) / "ensemble-bench"
    tmp.mkdir(exist_ok=True)
    path = write_ticks(tmp / f"btc_{args.ticks}.parquet", args.ticks, seed=11)
    os.environ.update({"ENSEMBLE_INPUT": f"trades:{path}", "ENSEMBLE_OUT": str(tmp / "prof")})
    prof = cProfile.Profile()
    prof.enable()
    from bytewax.run import cli_main

    import dataflows.ensemble as ens

    cli_main(ens.flow, workers_per_process=1)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
