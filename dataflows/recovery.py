"""Prepare a Bytewax recovery directory, once: `python -m dataflows.recovery DIR [-n N]`.

The flow runs with recovery as
    python -m bytewax.run dataflows.ensemble -r DIR -s 5 -b 0
and then keeps, per snapshot (every `-s` seconds of wall time): the 5m/15m/1h windows and
cohorts, overlay buffers, feature state, positions, bandit posteriors, trading state and
kill-switches, and the input offsets (file position or Kafka partition offsets). A restart
with the same DIR resumes there; what was emitted after the last snapshot is emitted again
with the same decision ids (at-least-once: consumers deduplicate by
`operators.telemetry.record_key`). JSON-lines outputs are truncated back to the snapshot,
so the files are exactly-once.

`python -m bytewax.recovery` refuses an existing directory and crashes on initialised
partitions; this command is safe to run on every start (a Kubernetes init container):
it creates DIR and N partitions when there are none, leaves complete ones alone, and
stops with a message when DIR holds a different number of partitions than asked for.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bytewax.recovery import init_db_dir

_PART = re.compile(r"part-(\d+)\.sqlite3$")


def prepare(directory: Path, partitions: int) -> str:
    """Create `partitions` recovery partitions in `directory` unless already there."""
    if partitions < 1:
        raise ValueError(f"partitions={partitions} must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    found = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _PART.match(p.name)))
    if not found:
        init_db_dir(directory, partitions)
        return f"created {partitions} recovery partition(s) in {directory}"
    if found != list(range(partitions)):
        raise ValueError(
            f"{directory} holds partitions {found}, not 0..{partitions - 1}: it belongs to "
            "another deployment; point -r at an empty directory or use its partition count"
        )
    return f"{directory} already holds {partitions} recovery partition(s); resuming from them"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataflows.recovery", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("-n", "--partitions", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        print(prepare(args.directory, args.partitions))
    except ValueError as e:
        print(f"recovery: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
