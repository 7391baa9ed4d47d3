"""Input files as users' own exports have them: epoch times in s/ms/us/ns, duplicate
rows, other encodings. Each is read right, or refused with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dataflows.settings import Settings
from marketdata.files import (
    FileSpec,
    FileSpecError,
    file_rows,
    load_candles,
    load_funding,
    load_trades,
)
from operators.config import ConfigError
from tests.conftest import run_records
from tests.test_input_files import _nautilus_trades

UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _settings(tmp_path: Path, spec: str) -> Settings:
    return Settings.from_env({"ENSEMBLE_INPUT": spec, "ENSEMBLE_OUT": str(tmp_path / "out")})


def _epoch(times: pd.Series, unit: str) -> pd.Series:
    ns = times.astype("datetime64[ns, UTC]").astype("int64")
    return ns / 1e9 if unit == "s" else ns // UNITS[unit]  # seconds with their fraction


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_trade_times_as_epoch_numbers_are_read_in_their_unit(
    tmp_path: Path, unit: str, suffix: str
):
    df = _nautilus_trades(0.05)
    want = load_trades(FileSpec.parse(f"trades:{_write(df, tmp_path / 'iso', 'csv')}"))
    df["timestamp"] = _epoch(df["timestamp"], unit)
    path = _write(df, tmp_path / unit, suffix)
    got = load_trades(FileSpec.parse(f"trades:{path}"))
    assert got["ts_ms"].tolist() == want["ts_ms"].tolist()
    assert not [r for r in file_rows([FileSpec.parse(f"trades:{path}")]) if r.error]


def test_a_trade_file_with_epoch_ms_makes_bars_not_dead_letters(tmp_path: Path):
    df = _nautilus_trades(0.05)
    df["timestamp"] = _epoch(df["timestamp"], "ms")
    path = _write(df, tmp_path / "t", "csv")
    out = run_records(_settings(tmp_path, f"trades:{path}"))
    assert out["dead_letters"] == []
    assert sum(b["count"] for b in out["bars"] if b["timeframe"] == "5m") == len(df)


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_candle_and_funding_times_as_epoch_numbers_are_read_in_their_unit(
    tmp_path: Path, unit: str
):
    start = pd.Timestamp("2024-03-01", tz="UTC")
    times = pd.Series(pd.date_range(start, periods=50, freq="1min"))
    candles = pd.DataFrame(
        {"timestamp": _epoch(times, unit), "open": 100.0, "high": 101.0, "low": 99.0}
    ).assign(close=100.5, volume=2.0)
    path = _write(candles, tmp_path / "c", "csv")
    got = load_candles(FileSpec.parse(f"candles:{path}"))
    assert (
        got["ts_ms"].tolist()
        == (times.astype("datetime64[ns, UTC]").astype("int64") // 10**6).tolist()
    )

    funding = pd.DataFrame({"date": _epoch(times[::8], unit), "open": 0.0001})
    path = tmp_path / "f.feather"
    funding.reset_index(drop=True).to_feather(path)
    rates = load_funding(FileSpec.parse(f"funding:{path}"))
    assert rates["ts_ms"].iloc[0] == start.value // 10**6 and len(rates) == len(funding)


def test_epoch_text_in_a_column_with_one_bad_row_is_read_and_the_bad_row_named(tmp_path: Path):
    df = _nautilus_trades(0.05)
    df["timestamp"] = _epoch(df["timestamp"], "ms").astype(object)
    df.loc[4, "timestamp"] = "oops"  # the column is text now: every other row a number
    path = _write(df, tmp_path / "t", "csv")
    bad = [(r.row, r.error) for r in file_rows([FileSpec.parse(f"trades:{path}")]) if r.error]
    assert bad == [(5, "column 'timestamp' is not a time: 'oops'")]


def _write(df: pd.DataFrame, stem: Path, suffix: str) -> Path:
    path = stem.with_suffix(f".{suffix}")
    if suffix == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


def _half_hour_of_candles(start: pd.Timestamp) -> pd.DataFrame:
    """30 flat 1m candles from `start`: six 5m bars of volume 10."""
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=30, freq="1min"),
            "open": 100.0,
            "high": 101.0,
            "low": 99.0,
            "close": 100.5,
            "volume": 2.0,
        }
    )


def test_a_duplicate_candle_row_counts_once_not_twice_the_volume(tmp_path: Path):
    """A repeated row (a candle received again) replaces the first in its open bar
    (operators/bars.py): the bars equal the clean file's, and nothing is lost."""
    start = pd.Timestamp("2024-03-01", tz="UTC")
    candles = _half_hour_of_candles(start)
    clean, doubled = tmp_path / "clean.csv", tmp_path / "doubled.csv"
    candles.to_csv(clean, index=False)
    pd.concat([candles, candles.iloc[[6]]]).to_csv(doubled, index=False)  # 00:06 twice
    want = run_records(_settings(tmp_path, f"candles:{clean}"))
    got = run_records(_settings(tmp_path, f"candles:{doubled}"))

    def volumes(out: dict) -> list[float]:
        return [b["volume"] for b in out["bars"] if b["timeframe"] == "5m"]

    assert volumes(got) == volumes(want) == [10.0] * 6
    assert got["bars"] == want["bars"] and not got["dead_letters"]


def test_a_candle_file_appended_to_itself_starts_and_makes_the_clean_files_bars(tmp_path: Path):
    """Every row twice: the interval check took the median step, 0 here, and refused the
    file as "candles 0 min apart". Each row counts once (operators/bars.py); the copy of
    a bar's last minute comes after that minute closed the bar, so it is a late dead
    letter, one a bar."""
    start = pd.Timestamp("2024-03-01", tz="UTC")
    candles = _half_hour_of_candles(start)
    clean, twice = tmp_path / "clean.csv", tmp_path / "twice.csv"
    candles.to_csv(clean, index=False)
    pd.concat([candles, candles]).to_csv(twice, index=False)
    want = run_records(_settings(tmp_path, f"candles:{clean}"))
    got = run_records(_settings(tmp_path, f"candles:{twice}"))
    assert got["bars"] == want["bars"] and not want["dead_letters"]
    last_minutes = [start.value // 10**6 + (5 * i + 4) * 60_000 for i in range(6)]
    assert [d["ts_event_ms"] for d in got["dead_letters"]] == last_minutes
    assert all(d["reason"].startswith("late:") for d in got["dead_letters"])


@pytest.mark.parametrize("option", ["symbol=", "symbol=BTC PERP", "symbol=BTC/USDT", "venue="])
def test_a_blank_or_malformed_spec_option_stops_the_start_naming_it(tmp_path: Path, option: str):
    path = _write(_nautilus_trades(0.01), tmp_path / "t", "csv")
    with pytest.raises(FileSpecError) as e:
        FileSpec.parse(f"trades:{path}?{option}")
    assert option.split("=")[0] in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("freq", ["15min", "1h"])
def test_a_candle_file_of_another_interval_stops_the_start_naming_it(tmp_path: Path, freq: str):
    times = pd.date_range("2024-03-01", periods=40, freq=freq, tz="UTC")
    candles = pd.DataFrame({"date": times, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0})
    path = tmp_path / "c.feather"
    candles.assign(volume=1.0).to_feather(path)
    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, f"candles:{path}")
    msg = str(e.value)
    assert str(path) in msg and "1m or 5m" in msg and "\n" not in msg


def test_a_1m_candle_file_with_gaps_and_bad_rows_still_starts(tmp_path: Path):
    times = pd.date_range("2024-03-01", periods=40, freq="1min", tz="UTC").delete([5, 6, 7, 20])
    candles = pd.DataFrame({"date": times.astype(str), "open": 1.0, "high": 1.0, "low": 1.0})
    candles.loc[3, "date"] = "garbage"
    path = tmp_path / "c.csv"
    candles.assign(close=1.0, volume=1.0).to_csv(path, index=False)
    assert _settings(tmp_path, f"candles:{path}").files[0].path == path


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_buyer_maker_as_1_and_0_is_read_as_true_and_false(tmp_path: Path, suffix: str):
    df = _nautilus_trades(0.05)
    want = load_trades(FileSpec.parse(f"trades:{_write(df, tmp_path / 'bool', suffix)}"))
    df["buyer_maker"] = df["buyer_maker"].astype(int)
    path = _write(df, tmp_path / "int", suffix)
    assert not [r for r in file_rows([FileSpec.parse(f"trades:{path}")]) if r.error]
    got = load_trades(FileSpec.parse(f"trades:{path}"))
    assert got["side"].tolist() == want["side"].tolist()
    assert set(got["side"]) == {"buy", "sell"}


def test_nanosecond_times_in_a_float_column_keep_their_millisecond(tmp_path: Path):
    """A nautilus CSV with integer-ns times and one blank time: pandas reads the column as
    float64, whose ns near 2025 are 256 apart, and 08:00:00.001 came back as .000."""
    df = _nautilus_trades(0.05)
    want = load_trades(FileSpec.parse(f"trades:{_write(df, tmp_path / 'iso', 'csv')}"))
    df["timestamp"] = _epoch(df["timestamp"], "ns").astype("Int64")
    df.loc[len(df) // 2, "timestamp"] = pd.NA  # one blank: the whole column reads as floats
    path = _write(df, tmp_path / "ns", "csv")
    assert pd.read_csv(path)["timestamp"].dtype == "float64"
    got = load_trades(FileSpec.parse(f"trades:{path}"))
    kept = want.drop(index=want.index[want["trade_id"] == df.loc[len(df) // 2, "trade_id"]])
    assert got["ts_ms"].tolist() == kept["ts_ms"].tolist()
    assert any(t % 1000 for t in got["ts_ms"]), "the sample has sub-second times"


def test_a_ts_ms_column_is_milliseconds_whatever_its_numbers(tmp_path: Path):
    """freqtrade's JSON candles name their time ms; a fixture's times near 1970 (i * 60,000)
    were read as seconds by their size, and the file refused as 1,000 minutes apart."""
    path = tmp_path / "c.json"
    rows = [[i * 60_000, 1.0, 1.0, 1.0, 1.0, 1.0] for i in range(1, 31)]
    path.write_text(json.dumps(rows))
    spec = FileSpec.parse(f"candles:{path}")
    assert load_candles(spec)["ts_ms"].tolist() == [r[0] for r in rows]
    funding = tmp_path / "f.json"
    funding.write_text(json.dumps([[i * 28_800_000, 1e-4] for i in range(1, 4)]))
    assert load_funding(FileSpec.parse(f"funding:{funding}"))["ts_ms"].tolist() == [
        28_800_000,
        57_600_000,
        86_400_000,
    ]
