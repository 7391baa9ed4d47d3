"""A run's outputs, read back from the JSON-lines files the flow wrote.

Only the fields the report uses are kept; `signals` are slimmed as they are read (their
features are not needed), so a long replay stays small in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

HEALTH_COLUMNS = [
    "symbol",
    "ts_event_ms",
    "equity_usd",
    "fees_usd",
    "funding_usd",
    "trading_state",
    "halt_reason",
]
SIGNAL_COLUMNS = [
    "symbol",
    "ts_event_ms",
    "close",
    "p_up",
    "conf",
    "decision_id",
    "action",
    "reason",
    "chosen_arm",
    "would_veto",
    "exit",
]
BAR_COLUMNS = ["symbol", "start_ms", "end_ms", "count", "complete", "ts_init_ms"]


def _lines(path: Path, required: bool = False) -> Iterator[dict[str, Any]]:
    """A stream's records; the sink creates a file only for a stream that had records."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: the flow wrote no such output; did the run end?")
        return
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                # orjson: a few times json's speed on a year's outputs. It reads an integer
                # past 64 bits as a float; no output of the flow holds one (ids are text).
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:  # a number past a double's range
                    rec = json.loads(line)
                yield rec


def _slim_signal(r: dict[str, Any]) -> tuple:
    m, d = r.get("model") or {}, r["decision"]
    return (
        r["symbol"],
        r["ts_event_ms"],
        r["bar"]["close"],
        m.get("p_up"),
        m.get("conf"),
        d["decision_id"],
        d["action"],
        d["reason"],
        d["chosen_arm"],
        d.get("would_veto") or [],
        d.get("exit"),
    )


@dataclass
class RunOutputs:
    health: pd.DataFrame
    executions: list[dict[str, Any]]
    costs: list[dict[str, Any]]
    summary: dict[str, Any]
    orders: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    signals: pd.DataFrame | None = None
    bars_5m: pd.DataFrame | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)
    repro: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The strategy configuration the run started with (its first repro record)."""
        starts = [r for r in self.repro if r["event"] == "start"]
        if not starts:
            raise ValueError("the run emitted no repro start record")
        return json.loads(starts[0]["config_json"])


def load(out_dir: Path, full: bool = True) -> RunOutputs:
    """Read a run's outputs; `full=False` reads only what the slippage runs need."""
    health = pd.DataFrame(
        [
            {k: r[k] for k in HEALTH_COLUMNS}
            for r in _lines(out_dir / "health.jsonl", required=True)
        ],
        columns=HEALTH_COLUMNS,
    )
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    run = RunOutputs(
        health=health,
        executions=list(_lines(out_dir / "executions.jsonl")),
        costs=list(_lines(out_dir / "costs.jsonl")),
        summary=summary,
    )
    if not full:
        return run
    run.orders = list(_lines(out_dir / "orders.jsonl"))
    run.rejections = list(_lines(out_dir / "rejections.jsonl"))
    run.calibration = list(_lines(out_dir / "calibration.jsonl"))
    run.repro = list(_lines(out_dir / "repro.jsonl", required=True))
    run.errors = list(_lines(out_dir / "errors.jsonl"))
    run.signals = pd.DataFrame(
        [_slim_signal(r) for r in _lines(out_dir / "signals.jsonl", required=True)],
        columns=SIGNAL_COLUMNS,
    )
    run.bars_5m = pd.DataFrame(
        [
            {k: r[k] for k in BAR_COLUMNS}
            for r in _lines(out_dir / "bars.jsonl", required=True)
            if r["timeframe"] == "5m"
        ],
        columns=BAR_COLUMNS,
    )
    return run
