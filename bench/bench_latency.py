"""Benchmark (figures, not a test): bar end → decision and order intent, in process, paced.

    python bench/bench_latency.py [--days 1.5] [--speed 1440] [--lateness-ms 0]

The generator's market (BTC-PERP trades, ETH-PERP 1m candles) is released into the flow
at `--speed` times real time: a record is handed to Bytewax when the wall clock reaches
its event time (a candle at its close) on the paced clock. For every 5m bar, the latency
is the wall time at which its decision (signals) and, when there is one, its order intent
reached the sink, minus the wall time of the bar's END on the paced clock. It includes
waiting on the paced clock for the records that close the bar, printed apart, and the
rest is the time in the flow: a trade-built bar closes on the QUORUM-th trade at or past
its end plus the allowed lateness (operators/watermark.py), a candle-built one on its
last candle, and the account decides a bar once every symbol's bar up to that close is
in (operators/account.py, EventTimeAligner). One worker, everything in this process.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import run_main  # noqa: E402

from dataflows.ensemble import build_flow, tune_gc  # noqa: E402
from dataflows.io import RawMessage, market_messages  # noqa: E402
from dataflows.settings import Settings  # noqa: E402
from operators.watermark import QUORUM  # noqa: E402


def _available_ms(msg: RawMessage) -> int:
    rec = msg.payload
    assert isinstance(rec, dict)
    return rec["ts_event_ms"] + rec.get("interval_ms", 0)


class _PacedPartition(StatefulSourcePartition[RawMessage, None]):
    def __init__(self, msgs: list[RawMessage], clock: Any) -> None:
        self.msgs, self.i, self.clock = msgs, 0, clock

    def next_batch(self) -> list[RawMessage]:
        if self.i >= len(self.msgs):
            raise StopIteration
        now = time.perf_counter_ns()
        j = self.i
        while j < len(self.msgs) and self.clock(_available_ms(self.msgs[j])) <= now:
            j += 1
        batch, self.i = self.msgs[self.i : j], j
        return batch

    def next_awake(self) -> Any:
        from datetime import UTC, datetime, timedelta

        if self.i >= len(self.msgs):
            return None
        wait_ns = self.clock(_available_ms(self.msgs[self.i])) - time.perf_counter_ns()
        return datetime.now(UTC) + timedelta(microseconds=max(0, wait_ns) / 1000)

    def snapshot(self) -> None:
        return None


class PacedSource(FixedPartitionedSource[RawMessage, None]):
    def __init__(self, msgs: list[RawMessage], clock: Any) -> None:
        self.msgs, self.clock = msgs, clock

    def list_parts(self) -> list[str]:
        return ["market"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PacedPartition:
        return _PacedPartition(self.msgs, self.clock)


class _StampPartition(StatelessSinkPartition[Any]):
    def __init__(self, seen: list[tuple[int, str, dict]]) -> None:
        self.seen = seen

    def write_batch(self, items: list[Any]) -> None:
        now = time.perf_counter_ns()
        self.seen.extend((now, s, r) for s, r in items if s in ("signals", "orders"))


class StampSink(DynamicSink[Any]):
    """Keeps decisions and order intents with the wall time they reached the sink."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, dict]] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StampPartition:
        return _StampPartition(self.seen)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=1.5)
    ap.add_argument("--speed", type=float, default=1440.0)
    ap.add_argument("--lateness-ms", type=int, default=0)
    args = ap.parse_args()
    env = {
        "ENSEMBLE_DAYS": str(args.days),
        "ENSEMBLE_OUT": tempfile.mkdtemp(),
        "ENSEMBLE_ALLOWED_LATENESS_MS": str(args.lateness_ms),
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 100}),
    }
    settings = Settings.from_env(env)
    msgs = list(market_messages(settings))
    first_ms = _available_ms(msgs[0])
    sink = StampSink()
    flow = build_flow(settings, sink=sink, source=PacedSource(msgs, lambda ms: t0 + ms_ns(ms)))

    def ms_ns(ms: int) -> int:
        return int((ms - first_ms) * 1e6 / args.speed)

    # Per symbol, when the records that can close a bar become available: its candles, or
    # its trades (a bar closes on the QUORUM-th one at or past its end plus the lateness).
    drivers: dict[str, tuple[int, list[int]]] = {}
    for m in msgs:
        sym = m.payload["symbol"]  # type: ignore[index]
        candles = sym in settings.candle_symbols
        if m.stream == ("candles" if candles else "trades"):
            need = 1 if candles else QUORUM
            drivers.setdefault(sym, (need, []))[1].append(_available_ms(m))
    for _, times in drivers.values():
        times.sort()
    tune_gc()  # as `python -m bytewax.run dataflows.ensemble` does after start-up
    t0 = time.perf_counter_ns() + 200_000_000  # start the clock once the flow is built
    run_main(flow)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; generator {args.days} days paced at {args.speed:.0f}x "
        f"real time, allowed lateness {args.lateness_ms} ms, one worker"
    )
    for stream in ("signals", "orders"):
        lat_ms, wait_ms = [], []
        for now, s, rec in sink.seen:
            if s != stream:
                continue
            end = rec["ts_event_ms"]
            lat_ms.append((now - (t0 + ms_ns(end))) / 1e6)
            closed = max(_closing_ms(drivers, sym, end + args.lateness_ms) for sym in drivers)
            wait_ms.append((ms_ns(closed) - ms_ns(end)) / 1e6)
        if not lat_ms:
            print(f"{stream}: none emitted")
            continue
        in_flow = [a - w for a, w in zip(lat_ms, wait_ms, strict=True)]
        print(
            f"bar end → {stream} reaching the sink: n={len(lat_ms)}, p50 {pct(lat_ms, 0.5):.2f} "
            f"ms, p99 {pct(lat_ms, 0.99):.2f} ms, max {max(lat_ms):.2f} ms; waiting on the "
            f"paced clock for the records that close it (every symbol's): p50 "
            f"{pct(wait_ms, 0.5):.2f} ms, p99 {pct(wait_ms, 0.99):.2f} ms; the rest, in the "
            f"flow: p50 {pct(in_flow, 0.5):.2f} ms, p99 {pct(in_flow, 0.99):.2f} ms"
        )


def _closing_ms(drivers: dict[str, tuple[int, list[int]]], symbol: str, at_ms: int) -> int:
    """When `symbol`'s records first let its bar ending at `at_ms` close: the `need`-th
    bar-driving record available at or after `at_ms`."""
    need, times = drivers[symbol]
    i = bisect.bisect_left(times, at_ms) + need - 1
    return times[i] if i < len(times) else at_ms


if __name__ == "__main__":
    main()
