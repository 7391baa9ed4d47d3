"""Benchmark (figures, not a test): bar end → decision and order intent, in process, paced.

    python bench/bench_latency.py [--days 1.5] [--speed 1440] [--lateness-ms 0]
                                  [--clock wall|event] [--trades-per-minute 12]

The generator's market (BTC-PERP trades, ETH-PERP 1m candles) is released into the flow
at `--speed` times real time: a record is handed to Bytewax when the wall clock reaches
its event time (a candle at its close) on the paced clock. For every 5m bar, the latency
is the wall time at which its decision (signals) and, when there is one, its order intent
reached the sink, minus the wall time of the bar's END on the paced clock.

`--clock wall` (the default) runs the flow as a live run (ENSEMBLE_CLOCK=wall) whose
clock is the paced one: a bar closes on the QUORUM-th trade at or past its end plus the
allowed lateness (operators/watermark.py), a candle-built one on its last candle, or,
whichever comes first, when the clock passes its end plus the lateness plus the time
from the 3rd latest trade's event time to the latest one's arrival (the quorum's spread
and that trade's delay; MarketState.tick_due_ms). `--clock event` runs it as a replay, where only
the records close bars. The wait on the paced clock for what closes the bar is printed
apart; the rest is the time in the flow, where the account decides a bar once every
symbol's bar up to that close is in (operators/account.py, EventTimeAligner). Trades the
flow set aside as late are counted. One worker, everything in this process.
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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
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
from marketdata.generator import GeneratorConfig  # noqa: E402
from marketdata.live import VENUE_CLASSES  # noqa: E402
from marketdata.live.frames import capture_lines  # noqa: E402
from operators.telemetry import Clock  # noqa: E402
from operators.watermark import QUORUM  # noqa: E402
from tests.venue_servers import BINANCE_CAPTURE as CAPTURE  # noqa: E402


class PacedClock(Clock):
    """The flow's clock in a paced live run: the replay's event ms, `speed` times faster
    than the wall clock from `t0_ns` (perf_counter), set once the flow is built."""

    def __init__(self, first_ms: int, speed: float) -> None:
        self.first_ms, self.speed, self.t0_ns = first_ms, speed, 0

    def now_ms(self) -> int:
        return self.first_ms + int((time.perf_counter_ns() - self.t0_ns) * self.speed / 1e6)

    def wake_at(self, ms: int) -> datetime:
        wait_ms = max(0, ms - self.now_ms()) / self.speed
        return datetime.now(UTC) + timedelta(milliseconds=wait_ms)


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
        self.seen, self.late = seen, 0

    def write_batch(self, items: list[Any]) -> None:
        now = time.perf_counter_ns()
        self.seen.extend((now, s, r) for s, r in items if s in ("signals", "orders"))
        self.late += sum(s == "dead_letters" and r["reason"].startswith("late") for s, r in items)


class StampSink(DynamicSink[Any]):
    """Keeps decisions and order intents with the wall time they reached the sink."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, dict]] = []
        self.parts: list[_StampPartition] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StampPartition:
        self.parts.append(_StampPartition(self.seen))
        return self.parts[-1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=1.5)
    ap.add_argument("--speed", type=float, default=1440.0)
    ap.add_argument("--lateness-ms", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "event"), default="wall")
    ap.add_argument(
        "--trades-per-minute",
        type=float,
        default=GeneratorConfig.trades_per_minute,
        help="the generator's BTC-PERP trades per minute in its calm regime (doubled in the "
        "wild one); what a bar waits for past its end shrinks as they grow",
    )
    args = ap.parse_args()
    live = args.clock == "wall"
    env = {
        "ENSEMBLE_CLOCK": args.clock,
        "ENSEMBLE_DAYS": str(args.days),
        "ENSEMBLE_OUT": tempfile.mkdtemp(),
        "ENSEMBLE_ALLOWED_LATENESS_MS": str(args.lateness_ms),
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 100}),
    }
    settings = Settings.from_env(env)
    assert settings.generator is not None
    gen = replace(settings.generator, trades_per_minute=args.trades_per_minute)
    settings = replace(settings, generator=gen)
    msgs = list(market_messages(settings))
    first_ms = _available_ms(msgs[0])
    sink = StampSink()
    clock = PacedClock(first_ms, args.speed)
    source = PacedSource(msgs, lambda ms: t0 + ms_ns(ms))
    flow = build_flow(settings, sink=sink, source=source, clock=clock)

    def ms_ns(ms: int) -> int:
        return int((ms - first_ms) * 1e6 / args.speed)

    # Per symbol, when the records that can close a bar become available: its candles (a
    # bar closes on its last one, whatever the lateness), or its trades (on the QUORUM-th
    # one at or past its end plus the lateness, or live by the clock: `_ticked_ms`).
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
    t0 = clock.t0_ns = time.perf_counter_ns() + 200_000_000  # once the flow is built
    run_main(flow)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; generator {args.days} days paced at {args.speed:.0f}x "
        f"real time, allowed lateness {args.lateness_ms} ms, one worker, "
        f"{'a live run on the paced clock' if live else 'a replay (event clock)'}, "
        f"{args.trades_per_minute:g} BTC-PERP trades a minute (calm); trades "
        f"set aside as late: {sum(p.late for p in sink.parts)}"
    )
    for stream in ("signals", "orders"):
        lat_ms, wait_ms = [], []
        for now, s, rec in sink.seen:
            if s != stream:
                continue
            end = rec["ts_event_ms"]
            lat_ms.append((now - (t0 + ms_ns(end))) / 1e6)
            closing = _ticked_ms if live else _closing_ms
            closed = max(
                _closing_ms(drivers, sym, end)  # its last candle, published at the bar's end
                if sym in settings.candle_symbols
                else closing(drivers, sym, end + args.lateness_ms)
                for sym in drivers
            )
            wait_ms.append((ms_ns(closed) - ms_ns(end)) / 1e6)
        if not lat_ms:
            print(f"{stream}: none emitted")
            continue
        in_flow = [a - w for a, w in zip(lat_ms, wait_ms, strict=True)]
        print(
            f"bar end → {stream} reaching the sink: n={len(lat_ms)}, p50 {pct(lat_ms, 0.5):.2f} "
            f"ms, p99 {pct(lat_ms, 0.99):.2f} ms, max {max(lat_ms):.2f} ms; waiting on the "
            f"paced clock for what closes it (every symbol's): p50 "
            f"{pct(wait_ms, 0.5):.2f} ms, p99 {pct(wait_ms, 0.99):.2f} ms; the rest, in the "
            f"flow: p50 {pct(in_flow, 0.5):.2f} ms, p99 {pct(in_flow, 0.99):.2f} ms"
        )
    waits = _capture_waits(CAPTURE)
    if waits is None:
        print(f"real-time estimate skipped: no capture at {CAPTURE}")
    else:
        print(
            f"at real time on {CAPTURE.name}'s trade times ({len(waits):,} bar ends spread over "
            f"it, allowed lateness 0): what closes a bar comes p50 {pct(waits, 0.5):.0f} ms, "
            f"p90 {pct(waits, 0.9):.0f} ms, p99 {pct(waits, 0.99):.0f} ms after its end, "
            "delivery delays not included"
        )


def _capture_waits(path: Path, n: int = 20_000) -> list[float] | None:
    """At real time, on a real feed's trade times: how long after a bar's end a live run
    (lateness 0) has what closes it (`_ticked_ms`), for `n` ends spread over the capture.
    None when the capture is absent. Delivery delays are left out (the capture's clock is
    not the exchange's)."""
    if not path.exists():
        return None
    parser = VENUE_CLASSES["binance"]().parser()  # the live ingestor's own reading
    times = sorted(
        item.record["ts_event_ms"]
        for recv_ns, frame in capture_lines(path)
        for item in parser.parse(frame, recv_ns // 1_000_000).items
        if item.stream == "trades"
    )
    drivers = {"BTC": (QUORUM, times)}
    span = times[-1] - times[0] - 10_000  # ends with ten seconds of trades after them
    ends = [times[0] + 1_000 + span * i // n for i in range(n)]
    return [float(_ticked_ms(drivers, "BTC", end) - end) for end in ends]


def _closing_ms(drivers: dict[str, tuple[int, list[int]]], symbol: str, at_ms: int) -> int:
    """When `symbol`'s records first let its bar ending at `at_ms` close: the `need`-th
    bar-driving record available at or after `at_ms`."""
    need, times = drivers[symbol]
    i = bisect.bisect_left(times, at_ms) + need - 1
    return times[i] if i < len(times) else at_ms


def _ticked_ms(drivers: dict[str, tuple[int, list[int]]], symbol: str, at_ms: int) -> int:
    """`_closing_ms` in a live run, where the clock closes the bar too if that comes first:
    once the progress (the `need`-th latest record's time) plus the time since the latest
    record came passes `at_ms` (MarketState.on_tick; records delivered at their time)."""
    need, times = drivers[symbol]
    k = max(need - 1, bisect.bisect_left(times, at_ms) - 1)  # the last record before at_ms
    while k < len(times):
        progress = times[k - need + 1]
        if progress >= at_ms:
            return times[k]  # the records close it
        tick = at_ms + times[k] - progress
        if k + 1 == len(times) or tick < times[k + 1]:
            return max(tick, at_ms)  # the clock does, before the next record comes
        k += 1
    return at_ms


if __name__ == "__main__":
    main()
