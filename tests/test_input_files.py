"""Input files (issue 12, items 11, 13 and 14): trade files sorted on read, freqtrade
feather funding, every file checked before the start, bad rows as dead letters naming the
file and the row, and one line with exit code 2 from `python -m bytewax.run`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dataflows.settings import Settings
from marketdata.files import FileSpec, FileSpecError, file_records, file_rows, load_trades
from marketdata.generator import GeneratorConfig, generate
from operators.config import ConfigError
from tests.conftest import run_records, shared_file

ROOT = Path(__file__).resolve().parents[1]
HOUR_MS = 3_600_000


def _nautilus_trades(days: float = 0.5) -> pd.DataFrame:
    """Generated BTC trades in the nautilus CSV layout, in time order."""
    recs = [
        r
        for s, r in generate(GeneratorConfig(days=days, candle_symbols=()))
        if s == "trades" and r["symbol"] == "BTC-PERP"
    ]
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([r["ts_event_ms"] for r in recs], unit="ms", utc=True),
            "trade_id": [r["trade_id"] for r in recs],
            "price": [r["px"] for r in recs],
            "quantity": [r["qty"] for r in recs],
            "buyer_maker": [r["side"] == "sell" for r in recs],
        }
    )


def _hour_shuffled(df: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    ms = (df["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    hours = sorted(set(ms // HOUR_MS))
    assert len(hours) > 2
    random.Random(seed).shuffle(hours)
    return pd.concat([df[ms // HOUR_MS == h] for h in hours], ignore_index=True)


def _settings(tmp_path: Path, spec: str) -> Settings:
    return Settings.from_env(
        {"ENSEMBLE_INPUT": spec, "ENSEMBLE_OUT": str(tmp_path / "out"), "ENSEMBLE_DAYS": "1"}
    )


# -- item 11: trade files are sorted by event time --------------------------------------


def test_an_hour_shuffled_trade_file_is_read_in_event_time_order(tmp_path: Path):
    df = _nautilus_trades(0.3)
    path = tmp_path / "shuffled.csv"
    shuffled = _hour_shuffled(df)
    assert not shuffled["timestamp"].is_monotonic_increasing
    shuffled.to_csv(path, index=False)
    loaded = load_trades(FileSpec.parse(f"trades:{path}"))
    assert loaded["ts_ms"].is_monotonic_increasing
    assert len(loaded) == len(df)
    ts = [r["ts_event_ms"] for _, r in file_records([FileSpec.parse(f"trades:{path}")])]
    assert ts == sorted(ts)


@pytest.mark.slow
def test_an_hour_shuffled_trade_file_loses_no_trade_to_the_late_dead_letters(tmp_path: Path):
    df = _nautilus_trades(0.5)
    ordered, shuffled = tmp_path / "ordered.csv", tmp_path / "shuffled.csv"
    df.to_csv(ordered, index=False)
    _hour_shuffled(df).to_csv(shuffled, index=False)
    a = run_records(_settings(tmp_path, f"trades:{ordered}"))
    b = run_records(_settings(tmp_path, f"trades:{shuffled}"))
    assert b.get("dead_letters", []) == []
    assert b["bars"] == a["bars"]


# -- item 13: freqtrade feather funding ---------------------------------------------------


@pytest.mark.realdata
def test_freqtrade_feather_funding_is_read_with_open_as_the_rate():
    path = shared_file("binance_usdm_BTC_USDT_2025-08-01_2026-02-19_funding_8h.feather")
    raw = pd.read_feather(path)
    recs = [r for _, r in file_records([FileSpec.parse(f"funding:{path}")])]
    assert len(recs) == len(raw) == 608
    assert [r["rate"] for r in recs] == raw["open"].tolist()
    assert recs[0]["ts_event_ms"] == int(raw["date"].iloc[0].timestamp() * 1000)


@pytest.mark.realdata
@pytest.mark.parametrize("funding_first", [False, True])
def test_a_funding_rate_comes_before_the_candle_that_closes_its_bar(funding_first):
    """Issue 14 section 5: a rate stamped at a bar's close is known at that close, so the
    bar it belongs to is the one that closes then (as on Kafka), whatever the specs' order."""
    candles = FileSpec.parse(
        f"candles:{shared_file('binance_usdm_BTC_USDT_2025-08-01_2026-02-19_5m.feather')}"
    )
    funding = FileSpec.parse(
        f"funding:{shared_file('binance_usdm_BTC_USDT_2025-08-01_2026-02-19_funding_8h.feather')}"
    )
    specs = [funding, candles] if funding_first else [candles, funding]
    recs = list(file_records(specs))
    ties = 0
    for (stream, rec), (nxt_stream, nxt) in zip(recs, recs[1:], strict=False):
        if nxt_stream == "funding" and stream == "candles":
            # the candle before a rate must have closed before it
            assert rec["ts_event_ms"] + rec["interval_ms"] < nxt["ts_event_ms"], (rec, nxt)
        if stream == "funding" and nxt_stream == "candles":
            ties += nxt["ts_event_ms"] + nxt["interval_ms"] == rec["ts_event_ms"]
    assert ties > 500  # nearly every 8-hourly rate meets a candle closing at its time


def test_a_feather_funding_file_without_open_stops_the_start(tmp_path: Path):
    path = tmp_path / "funding.feather"
    pd.DataFrame({"date": pd.to_datetime([0], unit="ms", utc=True), "rate": [0.0001]}).to_feather(
        path
    )
    with pytest.raises(
        FileSpecError, match=r"funding\.feather, header: missing columns \['open'\]"
    ):
        FileSpec.parse(f"funding:{path}")


# -- item 14: every file is checked before the start; bad rows are dead letters --------


@pytest.mark.parametrize(
    "name, kind, content, problem",
    [
        ("c.csv", "candles", "when,o,h,l,c,v\n1,2,3,4,5,6\n", "header: no time column"),
        ("t.csv", "trades", "timestamp,price\n1,2\n", "header: missing columns"),
        ("c.json", "candles", "[[1, 2, 3]]", "row 1: expected [open_ms, open"),
        ("c.json", "candles", "{not json", "cannot read it as .json"),
        ("f.csv", "funding", "date,open\n", "funding files must be .json, .feather"),
        ("c.feather", "candles", "not a feather file", "cannot read it as .feather"),
        ("t.jsonl.gz", "trades", None, "line 1: expected `<recv_ns> <frame json>`"),
        (
            "c.csv",
            "candles",
            "date,open,high,low,close,volume\n1,2,3,4,5,6\n1,2,3,4,5,6,7,8\n",
            "Expected 6 fields in line 3, saw 8",
        ),
    ],
)
def test_a_bad_file_stops_the_start_naming_the_file_and_the_problem(
    tmp_path: Path, name: str, kind: str, content: str | None, problem: str
):
    path = tmp_path / name
    if content is None:
        import gzip

        with gzip.open(path, "wt") as f:
            f.write("garbage\n")
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, f"{kind}:{path}")
    msg = str(e.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


def test_bad_rows_are_dead_letters_naming_the_file_and_the_row(tmp_path: Path):
    df = _nautilus_trades(0.05).astype({"price": object, "timestamp": object})
    df.loc[2, "price"] = "abc"  # data row 3
    df.loc[5, "timestamp"] = "yesterday"  # data row 6
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    rows = [r for r in file_rows([FileSpec.parse(f"trades:{path}")]) if r.error]
    assert sorted((r.row, r.error) for r in rows) == [
        (3, "column 'price' is not a number: 'abc'"),
        (6, "column 'timestamp' is not a time: 'yesterday'"),
    ]
    out = run_records(_settings(tmp_path, f"trades:{path}"))
    dls = out["dead_letters"]
    assert sorted(d["source_offset"] for d in dls) == [3, 6]
    assert {d["source_topic"] for d in dls} == {str(path)}
    assert all(f"(at {path} row {d['source_offset']})" in d["reason"] for d in dls)
    assert sum(b["count"] for b in out["bars"] if b["timeframe"] == "5m") == len(df) - 2


def test_a_row_that_fails_validation_names_the_file_and_the_row(tmp_path: Path):
    df = _nautilus_trades(0.05)
    df.loc[3, "quantity"] = -1.0  # data row 4: a number, but not a size
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    (dl,) = run_records(_settings(tmp_path, f"trades:{path}"))["dead_letters"]
    assert dl["reason"] == f"field 'qty' must be > 0, got -1.0 (at {path} row 4)"


def _run_command(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, name, content",
    [
        ("candles", "bad_header.csv", "when,o,h,l,c,v\n1,2,3,4,5,6\n"),
        ("trades", "missing_columns.csv", "timestamp,trade_id,price\n1,2,3\n"),
    ],
)
def test_bytewax_run_on_a_bad_file_prints_one_line_and_exits_2(
    tmp_path: Path, kind: str, name: str, content: str
):
    path = tmp_path / name
    path.write_text(content)
    done = _run_command({"ENSEMBLE_INPUT": f"{kind}:{path}", "ENSEMBLE_OUT": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ensemble: cannot start: ENSEMBLE_INPUT: ")
    assert str(path) in lines[0] and "header" in lines[0]


def test_tools_without_dead_letters_stop_at_a_bad_row_naming_it(tmp_path: Path):
    df = _nautilus_trades(0.05).astype({"price": object})
    df.loc[2, "price"] = "abc"
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(FileSpecError, match=rf"{path} row 3: column 'price' is not a number"):
        list(file_records([FileSpec.parse(f"trades:{path}")]))


# -- event times to the millisecond ----------------------------------------------------


# Binance's settlement times carry milliseconds (..400001 is 2025-09-23 08:00:00.001, as in
# ../shared/data/binance_usdm_BTC_USDT_funding_8h.json); in float nanoseconds 1e18 has a
# spacing of 256 ns, so some of them read back one millisecond early.
EXACT_MS = [1758614400001, 1758672000003, 1758700800001, 1758729600002, 1609979400123]


def test_funding_times_are_read_to_the_exact_millisecond(tmp_path: Path):
    from marketdata.files import load_funding

    path = tmp_path / "funding.json"
    path.write_text(json.dumps([[ts, 0.0001, 0, 0, 0, 0] for ts in EXACT_MS]))
    got = load_funding(FileSpec.parse(f"funding:{path}"))
    assert got["ts_ms"].tolist() == sorted(EXACT_MS)  # 08:00:00.001 is after the 08:00 close


def test_a_funding_rate_stamped_just_after_a_close_is_used_from_the_next_bar(tmp_path: Path):
    """The rate of 08:00:00.001 is not known at the 08:00 close (`AsOf`: event time <= t):
    read as 08:00:00.000 it was used at that close, one bar early."""
    from marketdata.files import funding_blocks

    funding = tmp_path / "funding.json"
    funding.write_text(json.dumps([[EXACT_MS[0], 0.0001, 0, 0, 0, 0]]))
    (block,) = funding_blocks(FileSpec.parse(f"funding:{funding}"))
    assert block.fields["ts_event_ms"].tolist() == [EXACT_MS[0]]
    candles = tmp_path / "candles.json"
    opens = [EXACT_MS[0] - 1 - 300_000, EXACT_MS[0] - 1]  # the bars closing at 08:00, 08:05
    candles.write_text(json.dumps([[t, 1.0, 1.0, 1.0, 1.0, 1.0] for t in opens]))
    specs = [FileSpec.parse(f"candles:{candles}"), FileSpec.parse(f"funding:{funding}")]
    order = [(r.stream, r.record["ts_event_ms"]) for r in file_rows(specs)]
    assert order == [("candles", opens[0]), ("funding", EXACT_MS[0]), ("candles", opens[1])]


@pytest.mark.parametrize("layout", ["parquet", "csv"])
def test_trade_times_are_read_to_the_exact_millisecond(tmp_path: Path, layout: str):
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(EXACT_MS, unit="ms", utc=True),
            "trade_id": [str(i) for i in range(len(EXACT_MS))],
            "price": 100.0,
            "quantity": 1.0,
            "buyer_maker": False,
        }
    ).sort_values("timestamp")
    path = tmp_path / f"trades.{layout}"
    if layout == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    spec = FileSpec.parse(f"trades:{path}")
    assert load_trades(spec)["ts_ms"].tolist() == sorted(EXACT_MS)
    assert [r.record["ts_event_ms"] for r in file_rows([spec])] == sorted(EXACT_MS)


# -- a sorted parquet trade file is read a block at a time ---------------------------------
def test_a_typed_parquet_file_s_order_is_checked_across_the_first_pass_s_batches(tmp_path):
    """The first pass reads the time column alone, a batch at a time (memory flat, not 40
    bytes a row for the whole file): a step back exactly at a batch boundary is out of
    order, a null leaves it to the whole-column reading."""
    import pyarrow.parquet as pq

    from marketdata.files import _typed_times_in_order

    df = _nautilus_trades(days=0.05).iloc[:8].reset_index(drop=True)
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique
    ok, back, gap = tmp_path / "ok.parquet", tmp_path / "back.parquet", tmp_path / "gap.parquet"
    df.to_parquet(ok)
    df.iloc[[0, 1, 2, 4, 3, 5, 6, 7]].to_parquet(back)  # rows 4 and 5 swapped: 3 | 4 apart
    df.assign(timestamp=df["timestamp"].where(df.index != 5)).to_parquet(gap)
    assert _typed_times_in_order(pq.ParquetFile(ok), rows=4) is True
    assert _typed_times_in_order(pq.ParquetFile(back), rows=4) is False
    assert _typed_times_in_order(pq.ParquetFile(back), rows=3) is False
    assert _typed_times_in_order(pq.ParquetFile(gap), rows=4) is None


@pytest.mark.parametrize("unit", ["ns", "us", "ms"])
def test_a_typed_parquet_file_reads_the_same_rows_block_by_block_as_whole(
    tmp_path, unit, monkeypatch
):
    """Each block's times taken from its own rows equal the whole column's, in any unit, and
    a file out of order is still read sorted."""
    monkeypatch.setattr("marketdata.files.BLOCK_ROWS", 1_000)
    df = _nautilus_trades(days=0.2)
    df["timestamp"] = df["timestamp"].astype(f"datetime64[{unit}, UTC]")
    sorted_file, shuffled = tmp_path / "sorted.parquet", tmp_path / "shuffled.parquet"
    df.to_parquet(sorted_file)
    _hour_shuffled(df).to_parquet(shuffled)
    got = [r.record for r in file_rows([FileSpec("trades", sorted_file)])]
    want = [r.record for r in file_rows([FileSpec("trades", shuffled)])]
    assert len(got) == len(df) > 3 * 1_000  # more than one block
    assert got == want
    ms = (df["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    assert [r["ts_event_ms"] for r in got] == ms.tolist()
