"""Benchmarks (figures, not tests): `make bench` or `python bench/bench_flow.py`.

1. trades/s through trade → 5m/15m/1h bars (and cohorts): the market operator alone (also
   with the trade-size cohort proxy on), and the whole dataflow per trade (decode, market,
   context, features, predict, strategy, JSON-lines outputs) on the generator's trades.
2. 5m bars/s through the whole dataflow, on real 5m perp candles (../shared/data).
3. p50/p99 in-process latency from a bar's close (the market step emitting it) to the
   order intent (the strategy step emitting it), inside a running Bytewax flow.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bytewax.testing import TestingSink, run_main  # noqa: E402

import dataflows.ensemble as ens  # noqa: E402
from dataflows.io import market_messages  # noqa: E402
from dataflows.settings import Settings  # noqa: E402
from marketdata.generator import GeneratorConfig, generate  # noqa: E402
from operators.config import CohortConfig, SizeProxyConfig  # noqa: E402
from operators.events import parse_trade, trade_columns, trades_from_columns  # noqa: E402
from operators.market import DEFAULT_ALLOWED_LATENESS_MS, MarketState  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


BATCH = 16_384  # trades per input batch of a file run (sorted parquet is read in such chunks)


def bench_market_operator(
    days: float, size_proxy: bool = False, batched: bool = False, columns: bool = False
) -> tuple[int, float]:
    """One trade at a time (`on_event`), `BATCH` at a time (`on_events`, as the flow from
    Kafka), or `BATCH` at a time as TradeBlocks (columns, as the flow from a file)."""
    recs = [
        r
        for s, r in generate(GeneratorConfig(days=days, candle_symbols=()))
        if s == "trades" and r["symbol"] == "BTC-PERP"
    ]
    symbols = frozenset({"BTC-PERP"})
    if columns:  # decoded before the clock starts, as the flow's decode step does
        trades = [
            trades_from_columns(
                trade_columns("BTC-PERP", recs[i : i + BATCH]),
                len(recs[i : i + BATCH]),
                symbols,
                recs[-1]["ts_event_ms"],
                0,
            )
            for i in range(0, len(recs), BATCH)
        ]
    else:
        trades = [parse_trade(r, symbols) for r in recs]
    m = MarketState(
        "BTC-PERP",
        False,
        DEFAULT_ALLOWED_LATENESS_MS,
        CohortConfig(),
        size_proxy_cfg=SizeProxyConfig(enabled=size_proxy),
    )
    out: list = []
    t0 = time.perf_counter()
    if columns:
        for block in trades:
            m.on_events(block, out)
    elif batched:
        for i in range(0, len(trades), BATCH):
            m.on_events(trades[i : i + BATCH], out)
    else:
        for t in trades:
            m.on_event(t, out)
    m.flush(out)
    return len(recs), time.perf_counter() - t0


def run_flow(env: dict[str, str]) -> tuple[float, dict[str, list]]:
    settings = Settings.from_env(env)
    msgs = list(market_messages(settings))
    items: list = []
    flow = ens.build_flow(settings, msgs, sink=TestingSink(items))
    ens.tune_gc()  # as `python -m bytewax.run dataflows.ensemble` does after start-up
    t0 = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - t0
    by: dict[str, list] = {}
    for stream, rec in items:
        by.setdefault(stream, []).append(rec)
    return elapsed, by


def bench_latency(env: dict[str, str]) -> list[float]:
    """Wall time from the market step emitting a 5m close to the strategy's intent."""
    closed: dict[tuple[str, int], int] = {}
    lat_us: list[float] = []
    orig_emit, orig_item = ens.MarketLogic._emit, ens.StrategyLogic.on_item

    def emit(self, items):
        now = time.perf_counter_ns()
        for it in items:
            if isinstance(it, ens.Close):
                closed[(it.bar.symbol, it.bar.end_ms)] = now
        return orig_emit(self, items)

    def on_item(self, value):
        res = orig_item(self, value)
        now = time.perf_counter_ns()
        for e in res[0]:
            if e.stream == "orders":
                t0 = closed.get((e.record["symbol"], e.record["ts_event_ms"]))
                if t0 is not None:
                    lat_us.append((now - t0) / 1e3)
        return res

    ens.MarketLogic._emit, ens.StrategyLogic.on_item = emit, on_item
    try:
        run_flow(env)
    finally:
        ens.MarketLogic._emit, ens.StrategyLogic.on_item = orig_emit, orig_item
    return lat_us


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    out = tempfile.mkdtemp()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, one Bytewax worker"
    )

    n, secs = bench_market_operator(days=6, batched=True)
    print(
        f"1a. market operator alone: {n:,} trades → 5m/15m/1h bars + cohorts in {secs:.2f} s "
        f"= {n / secs:,.0f} trades/s (input batches of {BATCH:,}, `on_events`, as the flow)"
    )
    n, secs = bench_market_operator(days=6, columns=True)
    print(
        f"1a. the same as columns (TradeBlocks of {BATCH:,}, as the flow from a file): "
        f"{n:,} trades in {secs:.2f} s = {n / secs:,.0f} trades/s"
    )
    n, secs = bench_market_operator(days=6, size_proxy=True, batched=True)
    print(
        f"1a. the same with the trade-size cohort proxy on: {n:,} trades in {secs:.2f} s "
        f"= {n / secs:,.0f} trades/s"
    )
    n, secs = bench_market_operator(days=6)
    print(
        f"1a. the same one trade at a time (`on_event`): {n:,} trades in {secs:.2f} s "
        f"= {n / secs:,.0f} trades/s"
    )

    env = {"ENSEMBLE_DAYS": "6", "ENSEMBLE_OUT": out, "ENSEMBLE_SYMBOLS": "BTC-PERP,ETH-PERP"}
    secs, by = run_flow(env)
    trades = sum(1 for _ in generate(GeneratorConfig(days=6)))
    bars5 = sum(1 for b in by["bars"] if b["timeframe"] == "5m")
    print(
        f"1b. whole dataflow on the generator: {trades:,} input records "
        f"({bars5:,} 5m bars, 2 symbols) in {secs:.2f} s = {trades / secs:,.0f} records/s"
    )

    candles = SHARED / "binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json"
    if candles.is_file():
        env2 = {
            "ENSEMBLE_INPUT": f"candles:{candles}",
            "ENSEMBLE_OUT": out,
            "STRATEGY_ID": "ensemble_1_0",
        }
        secs, by = run_flow(env2)
        bars5 = sum(1 for b in by["bars"] if b["timeframe"] == "5m")
        print(
            f"2.  whole dataflow on real 5m perp candles: {bars5:,} 5m bars in {secs:.2f} s "
            f"= {bars5 / secs:,.0f} 5m bars/s"
        )
    else:
        print(f"2.  skipped: {candles} is absent")

    lat = bench_latency({**env, "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 100})})
    if lat:
        print(
            f"3.  bar close → order intent, in process: n={len(lat)}, "
            f"p50 {pct(lat, 0.5):,.0f} µs, p99 {pct(lat, 0.99):,.0f} µs, "
            f"mean {statistics.fmean(lat):,.0f} µs"
        )
    else:
        print("3.  no order intents were emitted; no latency to report")


if __name__ == "__main__":
    main()
