"""What the running flow tells its operator on stderr: a start line, a periodic status line,
warm-up warnings, and a clean stop on SIGINT/SIGTERM.

A Kafka run has no natural end, so without these it is a black box. The status is read from
the flow's own Prometheus metrics (dataflows/metrics.py), which are themselves read off the
emitted records, so what the status line says is what the telemetry topics hold.

Stopping: the first SIGINT or SIGTERM sets `STOP`; the input partitions then end at their
next batch (`StoppableSource`), the steps keep their state instead of closing open bars
(`stopping()`), the sink flushes, Bytewax takes its final snapshot and the run summary is
printed, as at the end of a file. A second signal stops at once, as Bytewax would. In a
cluster (`-i/-a`) a stopped partition's last item, `Stopped`, tells every process that
runs a symbol or the account, so one signal to one process stops them all alike.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows import metrics
from dataflows.cluster import hold_thread_state
from dataflows.settings import Settings
from dataflows.topics import INPUT_TOPICS

BARS_PER_DAY = 288  # 5m bars

STOP = threading.Event()  # set by the first SIGINT/SIGTERM of the main job, or a peer's stop
_SIGNALLED = threading.Event()  # this process got a signal: the next one stops at once


def stopping() -> bool:
    """True once the operator asked the run to stop: steps keep state, they do not flush."""
    return STOP.is_set()


@dataclass(frozen=True, slots=True)
class Stopped:
    """The last item of an input partition ended by a stop, not by the input's end. The
    flow passes it to every symbol's steps and the account's (`peer_stopped`): a process
    of a cluster that got no signal itself must not take the end of the input for the
    real one, close the open bars and reject the pending intents that a restart needs."""


def peer_stopped() -> None:
    """A stopped input partition's `Stopped` reached this process: stop here too."""
    STOP.set()


_RECOVERY: list[Path | None] = [None]  # this process's `-r` directory (the main job's)


def note_recovery(recovery: Path | None) -> None:
    """Remember the run's recovery directory, for what the summary says at a stop."""
    _RECOVERY[0] = recovery


def stopped_line() -> str:
    """The summary's line for a run stopped by a signal: whether a restart continues."""
    kept = (
        "state kept for recovery"
        if _RECOVERY[0] is not None
        else "recovery off: a restart starts over"
    )
    return f"stopped by a signal before the end of the input ({kept})"


def _on_signal(signum: int, _frame: Any) -> None:
    if _SIGNALLED.is_set():  # the second signal: stop at once
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt
    _SIGNALLED.set()
    STOP.set()
    name = signal.Signals(signum).name
    print(
        f"ensemble: {name} received: stopping after the current batch "
        "(the summary follows; send it again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


def install_stop_handlers() -> None:
    """SIGINT and SIGTERM end the input instead of interrupting whatever Python code the
    worker runs (which Bytewax turns into a Rust panic and a traceback)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


class _StoppablePartition(StatefulSourcePartition):
    def __init__(self, inner: StatefulSourcePartition) -> None:
        self.inner = inner
        self.told = False  # its `Stopped` went out

    def next_batch(self) -> list[Any]:
        if STOP.is_set():
            if self.told:
                raise StopIteration
            self.told = True
            return [Stopped()]
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class StoppableSource(FixedPartitionedSource):
    """`inner`, whose partitions end (keeping their position) once `STOP` is set."""

    def __init__(self, inner: FixedPartitionedSource) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        hold_thread_state()  # every worker lists the parts, on its own thread
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))


# -- start -------------------------------------------------------------------------------
def main_job() -> bool:
    """True when this process is `python -m bytewax.run ...`, not a test importing the flow."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "bytewax.run"


def recovery_from_argv(argv: list[str]) -> Path | None:
    """The `-r` directory of `python -m bytewax.run` (or BYTEWAX_RECOVERY_DIRECTORY), read
    with Bytewax's own argument parser so the two cannot disagree."""
    from bytewax.run import _create_arg_parser  # the parser `python -m bytewax.run` uses

    args, _ = _create_arg_parser().parse_known_args(argv)
    return args.recovery_directory


def resumed_epoch(recovery: Path) -> int | None:
    """The epoch a run on these recovery partitions resumes from: the frontier the workers
    of the last execution reached (None: no execution recorded, a fresh start)."""
    fronts: list[tuple[int, int]] = []  # (execution, worker frontier)
    for db in sorted(recovery.glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as con:
                fronts += con.execute("SELECT ex_num, worker_frontier FROM fronts").fetchall()
        except sqlite3.OperationalError:  # no tables yet: a partition never run
            continue
    if not fronts:
        return None
    last = max(ex for ex, _ in fronts)
    return min(front for ex, front in fronts if ex == last)


def _days(bars: int) -> str:
    return f"{bars / BARS_PER_DAY:.1f} days"


def start_line(settings: Settings, model_id: str, recovery: Path | None) -> str:
    s = settings
    if s.kafka_bootstrap is not None:
        topics = ",".join(t.stream for t in INPUT_TOPICS)
        mode = "following" if s.kafka_tail else "to the end of"
        source = f"Kafka {s.kafka_bootstrap} ({mode} {s.topic_prefix}.{{{topics}}})"
        outputs = f"Kafka topics {s.topic_prefix}.<stream>"
    elif s.generator is not None:
        g = s.generator
        source = f"generated market (seed {g.seed}, {g.days:g} days)"
        outputs = f"{s.out_dir}/<stream>.jsonl"
    else:
        source = "files " + ", ".join(f"{f.kind}:{f.path}" for f in s.files)
        outputs = f"{s.out_dir}/<stream>.jsonl"
    if recovery is None:
        rec = "recovery off (a restart starts over)"
    else:
        epoch = resumed_epoch(recovery)
        rec = (
            f"recovery {recovery} (fresh)"
            if epoch is None
            else f"recovery {recovery} (resuming from epoch {epoch})"
        )
    w = s.strategy.warmup_bars
    return (
        f"ensemble: start: input {source}; outputs {outputs}; "
        f"preset {s.strategy.strategy_id}; model {model_id}; "
        f"symbols {','.join(sorted(s.symbols))}; clock {'wall' if s.wall_clock else 'event'}; "
        f"{rec}; warm-up {w} 5m bars ({_days(w)}) per symbol before the first decision"
    )


def warmup_warning(settings: Settings) -> str | None:
    """Said at start when the input is known to be shorter than the warm-up (the generator:
    its length is a setting; files and topics are only known once read: see the summary)."""
    g, w = settings.generator, settings.strategy.warmup_bars
    if g is None or g.days * BARS_PER_DAY > w:
        return None
    return (
        f"ensemble: warning: the generated market has {int(g.days * BARS_PER_DAY)} 5m bars "
        f"per symbol ({g.days:g} days) and the warm-up needs {w} ({_days(w)}): no decision "
        f"will be made; set ENSEMBLE_DAYS above {w / BARS_PER_DAY:.1f} or shorten the warm-up "
        """with ENSEMBLE_OVERRIDES='{"warmup_bars": 120}' (60 at least)"""
    )


def no_decision_reasons(summary: dict[str, Any]) -> list[str]:
    """Why a symbol made no decision, for the end-of-run summary (empty when all decided)."""
    out: list[str] = []
    if not summary["symbols"]:
        out.append(
            "no 5m bar reached the strategy: the input held no market data for the traded "
            "symbols (or the run stopped before the first bar closed)"
        )
    for sym, s in sorted(summary["symbols"].items()):
        if s["decisions"]:
            continue
        w = s.get("warmup_bars")
        if w is not None and s["bars"] <= w:
            out.append(
                f"{sym} made no decision: {s['bars']} 5m bars ({_days(s['bars'])}) is not "
                f"past the warm-up of {w} ({_days(w)}); give it more data or shorten the "
                """warm-up with ENSEMBLE_OVERRIDES='{"warmup_bars": 120}' (60 at least)"""
            )
        else:
            out.append(
                f"{sym} made no decision in {s['bars']} 5m bars past the warm-up: the model "
                "gave no prediction; see the errors output"
            )
    return out


# -- status ------------------------------------------------------------------------------
def _by_symbol(metric: Any, label: str = "symbol") -> dict[str, float]:
    """A counter's totals summed by one label."""
    out: dict[str, float] = defaultdict(float)
    for fam in metric.collect():
        for smp in fam.samples:
            if smp.name.endswith("_total"):
                out[smp.labels.get(label, "")] += smp.value
    return out


HEARTBEATS: dict[str, dict[str, Any]] = {}  # each symbol's latest health record


def heartbeat(record: dict[str, Any]) -> None:
    """The strategy's per-bar health record: how far each symbol got, and its state."""
    HEARTBEATS[record["symbol"]] = record


class Status:
    """The one-line status, from the flow's metrics and each symbol's latest heartbeat
    (the strategy's own bar count: the market step may run ahead of it); rates are since
    the previous line."""

    def __init__(self, warmup_bars: int) -> None:
        self.warmup_bars = warmup_bars
        self.last_inputs = 0.0
        self.last_t = time.monotonic()

    def line(self) -> str:
        now = time.monotonic()
        inputs = sum(_by_symbol(metrics.INPUT, "stream").values())
        rate = (inputs - self.last_inputs) / max(now - self.last_t, 1e-9)
        self.last_inputs, self.last_t = inputs, now
        beats = dict(HEARTBEATS)
        decisions = _by_symbol(metrics.DECISIONS)
        fills = _by_symbol(metrics.FILLS)
        parts = [f"{int(inputs):,} records ({rate:,.0f}/s)"]
        if beats:
            reached = min(b["ts_event_ms"] for b in beats.values()) / 1000  # all decided to here
            stamp = datetime.fromtimestamp(reached, UTC).strftime("%Y-%m-%d %H:%M")
            parts.append(f"event time {stamp}Z (lag {_duration(time.time() - reached)})")
        else:
            parts.append("no bar yet")
        for sym, b in sorted(beats.items()):
            state = b["trading_state"]
            if state == "HALTED" and b.get("halt_reason"):  # which: its code, no free text
                state += f" ({b['halt_reason'].split(':')[0]})"
            if b["bars"] <= self.warmup_bars:
                state = f"warm-up {b['bars']}/{self.warmup_bars}"
            parts.append(
                f"{sym} {int(decisions.get(sym, 0))} decisions {int(fills.get(sym, 0))} fills "
                f"{state}"
            )
        return "ensemble: status: " + "; ".join(parts)


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 120:
        text = f"{s:.0f}s"
    elif s < 7200:
        text = f"{s / 60:.0f}m"
    elif s < 172_800:
        text = f"{s / 3600:.1f}h"
    else:
        text = f"{s / 86_400:.1f}d"
    return text if seconds >= 0 else f"-{text}"


def report_status(every_s: float, warmup_bars: int) -> threading.Thread:
    """A daemon thread printing the status line every `every_s` seconds until the run ends."""
    status = Status(warmup_bars)

    def loop() -> None:
        while not STOP.wait(every_s):
            print(status.line(), file=sys.stderr, flush=True)

    thread = threading.Thread(target=loop, name="ensemble-status", daemon=True)
    thread.start()
    return thread
