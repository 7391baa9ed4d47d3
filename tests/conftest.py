"""Shared helpers: small runs of the real dataflow, and where the real data lives."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, run_main
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataflows.ensemble import build_flow
from dataflows.io import RawMessage, market_messages
from dataflows.settings import Settings
from operators.commands import public_key_b64, sign

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path


# Operators whose commands the test flows accept; keys made per test session, never stored.
OPERATOR_KEYS = {name: Ed25519PrivateKey.generate() for name in ("alice", "ops-oncall", "ops")}
OPERATOR_KEYS_JSON = json.dumps({n: public_key_b64(k) for n, k in OPERATOR_KEYS.items()})


def signed(
    cmd: dict[str, Any], key: Ed25519PrivateKey | None = None, topic: str = "ensemble.control"
) -> dict[str, Any]:
    """`cmd` (strategy ensemble_1_1 unless it names one) signed by its operator's key for the
    control topic `topic` (a file run verifies against the default prefix's)."""
    full = {"strategy_id": "ensemble_1_1", **cmd}
    return {**full, "signature": sign(full, key or OPERATOR_KEYS[full["operator"]], topic)}


def small_settings(out: Path, **env: str) -> Settings:
    """Two generated days, a short warm-up, so a run takes about a second."""
    base = {
        "ENSEMBLE_DAYS": "2",
        "ENSEMBLE_SEED": "11",
        "ENSEMBLE_OUT": str(out),
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
        "ENSEMBLE_OPERATOR_KEYS_JSON": OPERATOR_KEYS_JSON,
    }
    base.update(env)
    return Settings.from_env(base)


def run_records(
    settings: Settings, messages: list[RawMessage] | None = None, source: Any = None
) -> dict[str, list[dict[str, Any]]]:
    """Run the flow in-process; every emitted record by stream, before serialisation."""
    items: list[tuple[str, dict[str, Any]]] = []
    run_main(build_flow(settings, messages, sink=TestingSink(items), source=source))
    by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for stream, rec in items:
        by_stream[stream].append(rec)
    return by_stream


def run_files(settings: Settings, messages: list[RawMessage] | None = None) -> dict[str, bytes]:
    """Run the flow into its JSON-lines directory; file name -> bytes."""
    run_main(build_flow(settings, messages))
    return {p.name: p.read_bytes() for p in sorted(settings.out_dir.iterdir())}


def messages(settings: Settings) -> list[RawMessage]:
    return list(market_messages(settings))


def kill_after_a_snapshot(proc, recovery: Path, ready, timeout_s: float = 180.0) -> None:
    """SIGKILL `proc` (a `python -m bytewax.run ... -r recovery` process) once Bytewax has
    committed a strategy snapshot taken after `ready()` held, so a restart must resume from
    state that was built mid-stream, not start from scratch.

    Reads Bytewax's recovery database itself: a change of its write-ahead log is not yet a
    commit (a kill between the snapshot rows and the commit row resumes from the epoch
    before, which early in a run is no state at all)."""
    import signal
    import sqlite3
    import time

    db = recovery / "part-0.sqlite3"

    def committed_strategy_epoch() -> int:
        """The newest epoch with a committed strategy snapshot (-1 when none)."""
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as con:
                row = con.execute(
                    "SELECT MAX(s.snap_epoch) FROM snaps s, commits c"
                    " WHERE s.step_id LIKE '%strategy%' AND s.snap_epoch <= c.commit_epoch"
                ).fetchone()
        except sqlite3.OperationalError:  # busy, or the tables are not created yet
            return -1
        return -1 if row is None or row[0] is None else int(row[0])

    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        assert time.monotonic() < deadline, "the run never got far enough"
        time.sleep(0.01)
    before = committed_strategy_epoch()
    while committed_strategy_epoch() <= before:
        assert proc.poll() is None, "the run ended before its next snapshot; make it longer"
        assert time.monotonic() < deadline, "the run never committed a strategy snapshot"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def read_batch(view: Any, part: str, n_records: int, caught_up: bool, now_ms: int) -> None:
    """Tell a step's view (operators/watermark.py InputPartitions) of one batch of
    `n_records` read from `part` at `now_ms`, as the source's mark after it would."""
    from operators.watermark import PartitionMark

    records = view.records.get(part, 0) + n_records
    read_ms = now_ms if n_records or part not in view.last_read_ms else view.last_read_ms[part]
    view.apply(PartitionMark(part, caught_up, records, read_ms), now_ms)
