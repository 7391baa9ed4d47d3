"""The batched path gives exactly what one record at a time gives (issue 16).

The flow decodes whole input batches (file blocks column by column, messages one by one)
and hands each later step one list per symbol and batch. The reference is the same flow
fed one message per batch through the per-record decode (`market_messages` and
`TestingSource(batch_size=1)`): bars, decisions, every output record and every dead
letter with its reason must be equal, in order per symbol.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bytewax.testing import TestingSource

from dataflows.io import market_messages
from dataflows.settings import Settings
from marketdata.generator import GeneratorConfig, generate
from operators.commands import CommandGate
from operators.events import (
    MAX_TS_MS,
    ControlCommand,
    InvalidRecord,
    Trade,
    TradeBlock,
    candles_from_columns,
    expand_blocks,
    parse_candle,
    parse_trade,
    trades_from_columns,
)
from tests.conftest import run_records, shared_file, small_settings

NOW_MS = 1_800_000_000_000
SKEW_MS = 300_000
SYMBOLS = frozenset({"BTC-PERP"})


def _one_at_a_time(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    source = TestingSource(list(market_messages(settings)), batch_size=1)
    return run_records(settings, source=source)


def _by_symbol(records: list[dict[str, Any]]) -> dict[Any, list[Any]]:
    """Records per symbol in order; those without one (summary counts) as a sorted list."""
    out: dict[Any, list[Any]] = {}
    for r in records:
        out.setdefault(r.get("symbol"), []).append(r)
    if None in out:
        out[None] = sorted(json.dumps(r, sort_keys=True) for r in out[None])
    return out


def _assert_same(batched: dict, reference: dict) -> None:
    """Every stream's records equal, in order per symbol. Only the interleaving of
    different symbols' records may differ: a batch is grouped by symbol, so one symbol's
    first bars can reach the account step before another's."""
    assert sorted(batched) == sorted(reference)
    for stream in reference:
        assert _by_symbol(_summed(batched[stream])) == _by_symbol(_summed(reference[stream])), (
            stream
        )


def _summed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary's duplicate counts come one per market batch: compare their totals."""
    dups: dict[str, int] = {}
    rest = []
    for r in records:
        if "duplicates" in r:
            dups[r["symbol"]] = dups.get(r["symbol"], 0) + r["duplicates"]
        else:
            rest.append(r)
    return rest + [{"symbol": s, "duplicates": n} for s, n in sorted(dups.items())]


def test_the_generator_batched_equals_one_message_at_a_time(tmp_path: Path):
    settings = small_settings(tmp_path / "out")
    batched = run_records(settings)
    assert batched["signals"] and batched["orders"]  # decisions were made, not just bars
    _assert_same(batched, _one_at_a_time(settings))


REAL_INPUTS = {
    "trades_parquet": ["trades:binance_spot_btcusdt_trades_2021-01-08.parquet"],
    "candles_json_funding": [
        "candles:binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json",
        "funding:binance_usdm_BTC_USDT_funding_8h.json",
    ],
    "ftx_1m_csv": ["candles:ftx_btc-perp_2021-12-31_2022-02-01_1m.csv?volume=quote"],
    "ws_captures": [
        "trades:ws/hyperliquid_ws_BTC_2025-01-26.jsonl.gz",
        "trades:ws/binance_usdm_ws_btcusdt_2024-08-08.jsonl.gz?symbol=ETH-PERP",
    ],
}


@pytest.mark.parametrize("name", sorted(REAL_INPUTS))
def test_real_files_batched_equal_one_record_at_a_time(tmp_path: Path, name: str):
    specs = []
    for spec in REAL_INPUTS[name]:
        kind, _, rest = spec.partition(":")
        file, _, query = rest.partition("?")
        specs.append(f"{kind}:{shared_file(file)}" + (f"?{query}" if query else ""))
    settings = small_settings(tmp_path / "out", ENSEMBLE_INPUT=",".join(specs))
    batched = run_records(settings)
    assert batched["bars"]
    _assert_same(batched, _one_at_a_time(settings))


# -- fuzzed input ----------------------------------------------------------------------------
def _fuzzed_trades(rng: random.Random, n_bad: int) -> pd.DataFrame:
    recs = [
        r
        for s, r in generate(GeneratorConfig(days=0.3, candle_symbols=()))
        if s == "trades" and r["symbol"] == "BTC-PERP"
    ]
    df = pd.DataFrame(
        {
            "timestamp": [str(pd.Timestamp(r["ts_event_ms"], unit="ms", tz="UTC")) for r in recs],
            "trade_id": [r["trade_id"] for r in recs],
            "price": [repr(r["px"]) for r in recs],
            "quantity": [repr(r["qty"]) for r in recs],
            "buyer_maker": [str(r["side"] == "sell") for r in recs],
        },
        dtype=object,
    )
    bad_values = {
        "price": ["abc", "nan", "inf", "-1.5", "0", "-0.0", "", "1e400"],
        "quantity": ["-2", "0", "nan", "x", "-inf"],
        "timestamp": [
            "yesterday",
            "-5",
            "2100-01-01 00:00:00+00:00",
            "1999-01-01",
            "",
            "2200-01-01",
        ],
        "buyer_maker": ["maybe", "", "1"],
        "trade_id": [""],
    }
    for _ in range(n_bad):
        i = rng.randrange(len(df))
        col = rng.choice(sorted(bad_values))
        df.loc[i, col] = rng.choice(bad_values[col])
    for _ in range(n_bad // 2):  # duplicates and late trades: the market step's dead letters
        i, j = rng.randrange(len(df)), rng.randrange(len(df))
        df.loc[j] = df.loc[i]
    return df


def test_a_fuzzed_trade_file_batched_equals_one_record_at_a_time(tmp_path: Path):
    rng = random.Random(16)
    path = tmp_path / "fuzzed.csv"
    _fuzzed_trades(rng, 300).to_csv(path, index=False)
    unknown = tmp_path / "eth.csv"
    _fuzzed_trades(rng, 20).head(500).to_csv(unknown, index=False)
    settings = small_settings(
        tmp_path / "out",
        ENSEMBLE_INPUT=f"trades:{path},trades:{unknown}?symbol=ETH-PERP&venue=x",
        ENSEMBLE_SYMBOLS="BTC-PERP",  # ETH-PERP rows are dead letters: unknown symbol
    )
    batched = run_records(settings)
    reasons = {d["reason"].split(":")[0].split(" (")[0] for d in batched["dead_letters"]}
    assert len(batched["dead_letters"]) > 300 and len(reasons) > 5, reasons
    _assert_same(batched, _one_at_a_time(settings))


def test_a_fuzzed_plain_parquet_file_batched_equals_one_record_at_a_time(tmp_path: Path):
    """Rows the plain parquet reader takes whole (valid, in time order), so the market step
    gets TradeBlocks (operators/market_columns.py): duplicates next to their originals,
    price and size outliers, quiet hours (a jump its trades confirm; gap bars), a last
    trade hours ahead."""
    rng = random.Random(17)
    recs = [
        r
        for s, r in generate(GeneratorConfig(days=0.5, candle_symbols=()))
        if s == "trades" and r["symbol"] == "BTC-PERP"
    ]
    rows: list[dict[str, Any]] = []
    shift = 0
    for k, r in enumerate(recs):
        if k == len(recs) // 2:
            shift = 3 * 3_600_000  # the market is quiet for three hours
        r = {**r, "ts_event_ms": r["ts_event_ms"] + shift, "trade_id": str(k)}
        rows.append(r)
        x = rng.random()
        if x < 0.01:
            rows.append(dict(r))  # a duplicate
        elif x < 0.015:
            rows.append({**r, "trade_id": f"{k}p", "px": r["px"] * rng.choice([1e3, 1.2, 0.85])})
        elif x < 0.02:
            rows.append({**r, "trade_id": f"{k}q", "qty": r["qty"] * rng.choice([1e6, 9e4])})
    rows.sort(key=lambda r: r["ts_event_ms"])  # the plain reader needs time order
    # the three quiet hours are a jump: held until 50 trades confirm it; a last trade
    # five hours on is never confirmed
    rows.append({**rows[-1], "ts_event_ms": rows[-1]["ts_event_ms"] + 5 * 3_600_000})
    rows[-1]["trade_id"] = "ahead"
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime([r["ts_event_ms"] for r in rows], unit="ms", utc=True),
            "trade_id": [r["trade_id"] for r in rows],
            "price": [float(r["px"]) for r in rows],
            "quantity": [float(r["qty"]) for r in rows],
            "buyer_maker": [r["side"] == "sell" for r in rows],
        }
    )
    path = tmp_path / "plain.parquet"
    df.to_parquet(path)
    settings = small_settings(tmp_path / "out", ENSEMBLE_INPUT=f"trades:{path}?venue=binance")
    batched = run_records(settings)
    reasons = {d["reason"].split(":")[0] for d in batched["dead_letters"]}
    assert {"outlier", "far out of order"} <= reasons, reasons
    assert any("duplicates" in r for r in batched["summary"])
    _assert_same(batched, _one_at_a_time(settings))


# -- the column rules are the per-record rules ---------------------------------------------------
def _fuzz_value(rng: random.Random, kind: str) -> Any:
    if kind == "float":
        return rng.choice(
            [1.5, 42_000.25, 1e-9, 0.0, -0.0, -3.0, math.nan, math.inf, -math.inf, 1e308]
        )
    if kind == "ts":
        return rng.choice(
            [
                1_700_000_000_000,
                NOW_MS + SKEW_MS,
                NOW_MS + SKEW_MS + 1,
                0,
                MAX_TS_MS,
                1_230_768_000_000,
            ]
        )
    return rng.choice(kind)


def test_trade_columns_accept_exactly_what_parse_trade_accepts():
    rng = random.Random(5)
    n = 4000
    rows = [
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": _fuzz_value(rng, "ts"),
            "px": _fuzz_value(rng, "float"),
            "qty": _fuzz_value(rng, "float"),
            "side": _fuzz_value(rng, ["buy", "sell", "BUY", "", None, "buy "]),
            "trade_id": _fuzz_value(rng, ["1", "abc", "", None]),
            "buyer": _fuzz_value(rng, [None, "", "0xab", "a" * 128, "a" * 129, "a" * 128 + "\0"]),
            "seller": _fuzz_value(rng, [None, "0xcd", "b" * 200]),
            "venue": _fuzz_value(rng, [None, "", "binance"]),
        }
        for _ in range(n)
    ]
    columns = {
        "symbol": "BTC-PERP",
        "ts_event_ms": np.array([r["ts_event_ms"] for r in rows], dtype=np.int64),
        "px": np.array([r["px"] for r in rows]),
        "qty": np.array([r["qty"] for r in rows]),
        **{k: [r[k] for r in rows] for k in ("side", "trade_id", "buyer", "seller", "venue")},
    }
    got = trades_from_columns(columns, n, SYMBOLS, NOW_MS, SKEW_MS)
    accepted = 0
    for rec, trade in zip(rows, got, strict=True):
        try:
            expected = parse_trade(rec, SYMBOLS)
            if expected.ts_event_ms > NOW_MS + SKEW_MS:
                raise InvalidRecord("future")
        except InvalidRecord:
            expected = None
        assert trade == expected, rec
        accepted += expected is not None
    assert 0 < accepted < n


def test_candle_columns_accept_exactly_what_parse_candle_accepts():
    rng = random.Random(6)
    n = 4000
    prices = [100.0, 101.0, 99.0, 0.0, -1.0, math.nan, math.inf]
    rows = []
    for _ in range(n):
        o, c = rng.choice(prices), rng.choice(prices)
        rows.append(
            {
                "symbol": "BTC-PERP",
                "ts_event_ms": rng.choice(
                    [1_700_000_040_000, 1_700_000_100_000, 1_700_000_000_001]
                ),
                "interval_ms": 60_000,
                "open": o,
                "high": rng.choice([max(o, c), 102.0, 98.0, math.nan]),
                "low": rng.choice([min(o, c), 98.0, 100.5, -0.0]),
                "close": c,
                "volume": rng.choice([0.0, -0.0, 3.5, -1.0, math.nan, math.inf]),
            }
        )
    columns: dict[str, Any] = {"symbol": "BTC-PERP", "interval_ms": 60_000}
    columns["ts_event_ms"] = np.array([r["ts_event_ms"] for r in rows], dtype=np.int64)
    for k in ("open", "high", "low", "close", "volume"):
        columns[k] = np.array([r[k] for r in rows])
    got = candles_from_columns(columns, n, SYMBOLS, NOW_MS, SKEW_MS)
    accepted = 0
    for rec, candle in zip(rows, got, strict=True):
        try:
            expected = parse_candle(rec, SYMBOLS)
        except InvalidRecord:
            expected = None
        assert candle == expected, json.dumps(rec)
        accepted += expected is not None
    assert 0 < accepted < n


def test_the_command_gate_over_lists_equals_event_by_event():
    rng = random.Random(8)
    ts = 1_700_000_000_000
    # commands before any event are held until the first one arrives
    stream: list[Any] = [
        ControlCommand("BTC-PERP", ts, "halt", "ops", "early", f"h{i}") for i in range(2)
    ]
    for i in range(3000):
        ts += rng.choice([0, 1_000, 60_000, -500])
        if rng.random() < 0.05:
            cmd_ts = ts + rng.choice([0, 10_000, -2_000_000, 2_000_000])
            cid = f"c{rng.randrange(40)}"  # some ids repeat: replays
            stream.append(ControlCommand("BTC-PERP", cmd_ts, "halt", "ops", "drill", cid))
        else:
            stream.append(Trade("BTC-PERP", ts, 100.0, 1.0, 1, str(i)))
    one, batched = CommandGate(), CommandGate()
    expected = [item for e in stream for item in one.on_event(e)]
    got: list[Any] = []
    i = 0
    while i < len(stream):
        n = rng.choice([1, 5, 50, 400])
        got += expand_blocks(batched.on_events(_with_blocks(stream[i : i + n])))
        i += n
    assert [repr(x) for x in got] == [repr(x) for x in expected]
    assert batched == one


def _with_blocks(events: list[Any]) -> list[Any]:
    """Runs of trades as TradeBlocks (decode's form of a file's plain rows)."""
    out: list[Any] = []
    for e in events:
        if type(e) is Trade and out and type(out[-1]) is list:
            out[-1].append(e)
        else:
            out.append([e] if type(e) is Trade else e)
    return [
        TradeBlock(
            x[0].symbol,
            np.array([t.ts_event_ms for t in x]),
            np.array([t.px for t in x]),
            np.array([t.qty for t in x]),
            np.array([t.side for t in x]),
            [t.trade_id for t in x],
            None,
        )
        if type(x) is list
        else x
        for x in out
    ]


def test_a_block_of_plain_rows_is_the_trades_parse_trade_makes_of_them():
    """Valid rows without addresses and of one venue become one TradeBlock; its trades
    are the per-record rule's, an empty venue is none; any other block stays rows."""
    n = 300
    columns: dict[str, Any] = {
        "symbol": "BTC-PERP",
        "ts_event_ms": 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 250,
        "px": np.linspace(40_000.0, 41_000.0, n),
        "qty": np.linspace(0.001, 2.0, n),
        "side": ["buy", "sell", "sell"] * (n // 3),
        "trade_id": [str(10**9 + i) for i in range(n)],
        "buyer": None,
        "seller": None,
        "venue": "",
    }
    rows = [
        {
            k: (v[i].item() if isinstance(v, np.ndarray) else v[i] if isinstance(v, list) else v)
            for k, v in columns.items()
        }
        for i in range(n)
    ]
    (block,) = trades_from_columns(columns, n, SYMBOLS, NOW_MS, SKEW_MS)
    assert isinstance(block, TradeBlock) and len(block) == n
    assert block.ts_event_ms == int(columns["ts_event_ms"][-1])
    assert block.trades() == [parse_trade(r, SYMBOLS) for r in rows]
    assert block.trades(5, 9) == block.trades()[5:9] and block.trades()[0].venue is None
    columns["px"] = columns["px"].copy()
    columns["px"][7] = -1.0  # one bad row: every row on its own, the bad one None
    got = trades_from_columns(columns, n, SYMBOLS, NOW_MS, SKEW_MS)
    assert len(got) == n and got[7] is None and got[8] == block.trades()[8]


@pytest.mark.parametrize("maker", ["text", "bool"])
def test_plain_parquet_chunks_read_as_the_general_reader_reads_them(tmp_path: Path, maker: str):
    import pyarrow.parquet as pq

    from marketdata.files import (
        FileSpec,
        _plain_trade_block,
        _to_ms,
        _trade_block,
        _trades_table,
    )

    rng = np.random.default_rng(3)
    n = 5000
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(1_704_067_200_000 + np.arange(n) * 7, unit="ms", utc=True),
            "trade_id": np.arange(n, dtype="int64") + 10**12,
            "price": rng.uniform(1, 9e4, n),
            "quantity": rng.lognormal(0, 2, n),
            "buyer_maker": rng.choice(["True", "False", "true"], n)
            if maker == "text"
            else rng.random(n) < 0.5,
        }
    )
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    spec = FileSpec.parse(f"trades:{path}?venue=binance")
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=n))
    ts = _to_ms(batch.column("timestamp").to_pandas())
    plain = _plain_trade_block(spec, batch, ts, 1)
    general, _ = _trade_block(spec, _trades_table(batch.to_pandas(), spec, 1), 0)
    assert plain is not None
    assert list(plain.rows()) == list(general.rows())


def test_two_workers_give_the_records_of_one_on_two_symbols(tmp_path: Path):
    from bytewax.testing import TestingSink, cluster_main

    from dataflows.ensemble import build_flow

    rng = random.Random(17)
    btc, eth = tmp_path / "btc.csv", tmp_path / "eth.csv"
    _fuzzed_trades(rng, 50).to_csv(btc, index=False)
    _fuzzed_trades(rng, 50).to_csv(eth, index=False)
    settings = small_settings(
        tmp_path / "out", ENSEMBLE_INPUT=f"trades:{btc},trades:{eth}?symbol=ETH-PERP"
    )
    one = run_records(settings)
    items: list[tuple[str, dict[str, Any]]] = []
    cluster_main(build_flow(settings, sink=TestingSink(items)), [], 0, worker_count_per_proc=2)
    two: dict[str, list[dict[str, Any]]] = {}
    for stream, rec in items:
        two.setdefault(stream, []).append(rec)
    assert {b["symbol"] for b in one["bars"]} == {"BTC-PERP", "ETH-PERP"}
    _assert_same(two, one)


def test_a_resumed_file_source_continues_at_the_next_record_inside_a_block(tmp_path: Path):
    from dataflows.io import MarketSource, block_message

    path = tmp_path / "t.csv"
    _fuzzed_trades(random.Random(4), 30).to_csv(path, index=False)
    settings = small_settings(tmp_path / "out", ENSEMBLE_INPUT=f"trades:{path}")

    def records(items: list[Any]) -> list[tuple]:
        out = []
        for it in items:
            msgs = [block_message(it, i) for i in range(len(it))] if hasattr(it, "row") else [it]
            out += [(m.offset, m.error, json.dumps(m.payload, sort_keys=True)) for m in msgs]
        return out

    def drain(part: Any) -> list[Any]:
        items: list[Any] = []
        while True:
            try:
                items += part.next_batch()
            except StopIteration:
                return items

    (name,) = MarketSource(settings).list_parts()
    everything = records(drain(MarketSource(settings).build_part("input", name, None)))
    for consumed in (1, 777, len(everything) - 1):
        resumed = MarketSource(settings).build_part("input", name, consumed)
        assert records(drain(resumed)) == everything[consumed:]
        assert resumed.snapshot() == len(everything)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Asia/Tokyo"])
def test_parquet_times_read_without_pandas_are_the_general_readers(unit: str, tz: str | None):
    """Arrow timestamps to epoch ms as `_to_ms` makes them through pandas: the same float
    arithmetic (so the same ms at a millisecond's last nanoseconds), before 1970 too; a
    null or a time nanoseconds cannot hold is left to `_to_ms`."""
    import pyarrow as pa

    from marketdata.files import _arrow_times_ms, _to_ms

    rng = np.random.default_rng(4)
    ns = np.concatenate(
        [
            rng.integers(-(10**18), 4 * 10**18, 5_000),
            1_700_000_000_123 * 10**6 + np.array([0, 1, 999_743, 999_999, 999_999_999]),
            [-1, 0, 1, -(10**6) - 1],
        ]
    )
    per = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    column = pa.chunked_array([pa.array(ns // per, pa.timestamp(unit, tz))])
    got = _arrow_times_ms(column)
    assert got is not None
    np.testing.assert_array_equal(got, _to_ms(column.to_pandas()))
    assert _arrow_times_ms(pa.chunked_array([pa.array([1, None], pa.timestamp(unit))])) is None
    assert _arrow_times_ms(pa.chunked_array([pa.array([10**18], pa.int64())])) is None
    if unit != "ns":  # the year 300,000: pandas calls it no time
        far = pa.chunked_array([pa.array([10**19 // per], pa.timestamp(unit))])
        assert _arrow_times_ms(far) is None and np.isnan(_to_ms(far.to_pandas())).all()


def test_arrow_columns_read_from_their_buffers_are_pyarrows_numpy():
    import pyarrow as pa

    from marketdata.files import _numpy

    rng = np.random.default_rng(5)
    for arr in (
        pa.array(rng.normal(size=100)),
        pa.array(rng.normal(size=100).astype(np.float32)),
        pa.array(rng.integers(-(10**12), 10**12, 100)),
        pa.array(rng.integers(0, 100, 100).astype(np.int32)),
        pa.array(rng.random(100) < 0.5),
        pa.array(rng.integers(0, 10**15, 100), pa.timestamp("ms", "UTC")).cast(pa.int64()),
    ):
        for a in (arr, arr.slice(3), arr.slice(13, 50)):
            want = a.to_numpy(zero_copy_only=False)
            got = _numpy(a)
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_kafka_trades_decoded_as_columns_are_the_messages_decoded_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A Kafka batch's runs of trades (per partition) are decoded as columns (TradeBlocks,
    or Trades where a row has addresses or venues differ); every event, its partition and
    every dead letter with its reason equal decoding message by message."""
    from dataflows import ensemble
    from dataflows.ensemble import decode_batch, decode_step

    # one clock for both ways: a reason says how far in the future a trade is, in seconds
    # of the wall clock, and the two ways decoded a second apart in one CI run
    monkeypatch.setattr(ensemble, "wall_clock_ms", lambda: NOW_MS)
    read_as_columns = []  # how each long run of trades was read: Avro columns, or fastavro
    columns = ensemble.decode_columns

    def decode_columns(name: str, payloads: list[bytes]) -> Any:
        cols = columns(name, payloads)
        read_as_columns.append(cols is not None)
        return cols

    monkeypatch.setattr(ensemble, "decode_columns", decode_columns)
    from dataflows.io import RawMessage
    from operators.events import TradeBlock
    from operators.telemetry import Stamp
    from schemas.codec import encode, with_defaults

    settings = small_settings(tmp_path / "out")
    stamp = Stamp(settings.strategy.strategy_id, lambda: NOW_MS)
    rng = random.Random(23)
    messages: list[RawMessage] = []
    partition = 0
    for k in range(3_000):
        rec: dict[str, Any] = {
            "symbol": rng.choice(["BTC-PERP", "BTC-PERP", "ETH-PERP"]),
            "ts_event_ms": 1_700_000_000_000 + k * 250,
            "trade_id": str(k),
            "px": 40_000.0 + k % 17,
            "qty": 0.01 * (1 + k % 5),
            "side": rng.choice(["buy", "sell"]),
            "venue": "binance",
        }
        r = rng.random()
        if r < 0.01:
            rec["px"] = -1.0  # refused: a dead letter
        elif r < 0.02:
            rec["symbol"] = "DOGE-PERP"  # not traded here
        elif r < 0.025:
            rec["buyer"] = "0xab"  # an address: Trades, not a block
        elif r < 0.03:
            rec["venue"] = None
        elif r < 0.035:
            rec["ts_event_ms"] = NOW_MS + 10**9  # from the future
        elif r < 0.037:
            rec["trade_id"] = f"é{k}"  # UTF-8: the run is read by fastavro
        payload = encode("trade", with_defaults("trade", rec))
        if rng.random() < 0.003:
            payload = payload[:5]  # bytes that do not decode
        stream = "trades" if rng.random() < 0.995 else "funding"  # another stream between
        if rng.random() < 0.01:
            partition = 1 - partition  # the next partition's batch
        messages.append(RawMessage(stream, payload, f"p.{stream}", partition, k, None))
    keys = {"BTC-PERP": "BTC-PERP", "ETH-PERP": "ETH-PERP"}
    reference: list[Any] = []
    for m in messages:
        reference += decode_step(settings, stamp, m)

    def flat(items: list[Any]) -> tuple[dict[str, list[str]], list[str]]:
        events: dict[str, list[str]] = {}
        dead = []
        for x in items:
            if isinstance(x, tuple):
                for e in expand_blocks(x[1]):
                    events.setdefault(e.symbol, []).append(f"{e!r} {e.part}")
            elif hasattr(x, "stream"):  # a dead letter or its count (when made: not compared)
                record = {k: v for k, v in x.record.items() if k != "ts_init_ms"}
                dead.append(json.dumps(record, sort_keys=True, default=str))
            else:
                events.setdefault(x.symbol, []).append(f"{x!r} {x.part}")
        return events, sorted(dead)

    blocks = 0
    got: list[Any] = []
    for i in range(0, len(messages), 500):
        batch = decode_batch(settings, stamp, None, keys, messages[i : i + 500])
        blocks += sum(type(e) is TradeBlock for x in batch if isinstance(x, tuple) for e in x[1])
        got += batch
    got_events, got_dead = flat(got)
    want_events, want_dead = flat(reference)
    assert got_events == want_events
    assert got_dead == want_dead
    assert blocks > 5 and len(flat(reference)[1]) > 50
    assert read_as_columns.count(True) > 5 and read_as_columns.count(False) > 5

    # as the Kafka source hands them over: each partition's consecutive messages one run
    from dataflows.io import KafkaRun

    runs: list[KafkaRun] = []
    for m in messages:
        if runs and (runs[-1].topic, runs[-1].partition) == (m.topic, m.partition):
            runs[-1].values.append(m.payload)
            runs[-1].offsets.append(m.offset)
        else:
            runs.append(KafkaRun(m.stream, m.topic, m.partition, [m.payload], [m.offset]))
    assert sum(map(len, runs)) == len(messages) and len(runs) > 30
    by_runs: list[Any] = []
    for i in range(0, len(runs), 7):
        by_runs += decode_batch(settings, stamp, None, keys, runs[i : i + 7])
    assert flat(by_runs) == (want_events, want_dead)
