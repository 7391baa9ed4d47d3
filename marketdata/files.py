"""Market-data files as input: candles, trades and funding in the formats we meet.

Candles: freqtrade feather (`date` tz-aware, open..volume), freqtrade JSON
(`[[open_ms, o, h, l, c, v], ...]`), CSV with `timestamp` or `date` (naive = UTC).
1m or 5m. Volume is base units unless the spec says `volume=quote` (FTX: USD notional),
then it is converted with the candle's close.
Trades: parquet or CSV with timestamp, trade_id, price, quantity, buyer_maker (nautilus
layout), or a raw WebSocket capture (`.jsonl.gz`, `<recv_ns> <frame>`): Hyperliquid `trades`
frames, whose trades carry buyer and seller addresses, or Binance `trade` frames.
Funding: freqtrade JSON `[[ts_ms, rate, ...], ...]` or freqtrade feather (`date`, `open` =
the rate per interval).
A time column holds dates (a naive one is UTC) or epoch numbers in seconds, ms, us or ns,
one unit per column, which the numbers' magnitude says (`epoch_unit`).

A spec names one file: `KIND:PATH[?symbol=BTC-PERP&volume=quote&venue=binance]`, KIND one
of candles, trades, funding. Every file is sorted by event time on read (trade files too:
an hour-shuffled file would otherwise lose its trades as late), and records come out in
the order they became available (a candle at its close), merged across files. On a tie,
funding comes before market data: a rate stamped at a bar's close is known at that close,
so the bar it belongs to is the one that closes then, as in a Kafka run (issue 14 §5),
not the next.

Problems with a whole file (format, header, columns) raise `FileSpecError` naming the file
before the flow starts (`check_file`). A bad row (a value that is not a number or a time)
does not stop the run: it comes out as a `FileRow` with its `error`, naming the file and
the row (the 1-based data row, in file order; a line for WebSocket captures), and the
flow dead-letters it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import numpy as np

if TYPE_CHECKING:  # imported by the functions that read files: a run on Kafka or the
    import pandas as pd  # generator needs neither (0.25 s to import both)
    import pyarrow as pa

KINDS = ("candles", "trades", "funding")
CANDLE_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_COLUMNS = ("date", "timestamp", "time")
TRADE_COLUMNS = ("timestamp", "trade_id", "price", "quantity", "buyer_maker")
SUFFIXES = {
    "candles": (".feather", ".json", ".csv"),
    "trades": (".parquet", ".csv", ".jsonl.gz"),
    "funding": (".json", ".feather"),
}


class FileSpecError(ValueError):
    """A file spec or file cannot be used; the message names it."""


@dataclass(frozen=True)
class FileSpec:
    kind: str
    path: Path
    symbol: str = "BTC-PERP"
    volume: str = "base"
    venue: str | None = None  # trades: with the trade id, a trade's identity

    @classmethod
    def parse(cls, text: str) -> FileSpec:
        kind, sep, rest = text.partition(":")
        if not sep or kind not in KINDS:
            raise FileSpecError(
                f"input file spec {text!r}: expected KIND:PATH with KIND one of "
                f"{KINDS}, e.g. candles:data/btc_1m.feather?symbol=BTC-PERP"
            )
        path, _, query = rest.partition("?")
        # blanks kept: `symbol=` (an unset variable in a script) was dropped, and the file
        # read silently as BTC-PERP
        opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = set(opts) - {"symbol", "volume", "venue"}
        if unknown:
            raise FileSpecError(
                f"input file spec {text!r}: unknown option(s) {sorted(unknown)}; "
                "known: symbol, volume, venue"
            )
        volume = opts.get("volume", "base")
        if volume not in ("base", "quote"):
            raise FileSpecError(
                f"input file spec {text!r}: volume={volume!r} must be base or quote"
            )
        for name in ("symbol", "venue"):
            value = opts.get(name)
            if value is not None and not value.replace("-", "").replace("_", "").isalnum():
                raise FileSpecError(
                    f"input file spec {text!r}: {name}={value!r} must be letters, digits, "
                    "- and _ (e.g. symbol=BTC-PERP, venue=binance)"
                )
        p = Path(path)
        if not p.is_file():
            raise FileSpecError(f"input file spec {text!r}: no file at {p}")
        spec = cls(kind, p, opts.get("symbol", "BTC-PERP"), volume, opts.get("venue"))
        check_file(spec)
        return spec


@dataclass(slots=True)
class FileRow:
    """One record read from a file, or the reason its row could not be read."""

    avail_ms: int  # when it became available: merge order across files
    stream: str
    record: dict[str, Any]
    path: str
    row: int  # 1-based data row (line, for WebSocket captures)
    error: str | None = None  # why the row could not be read

    @property
    def origin(self) -> str:
        return f"{self.path} row {self.row}"


OPTIONAL_FIELDS = ("venue",)  # left out of a record when None, as the readers always did


@dataclass(slots=True)
class RowBlock:
    """Consecutive rows of one file, field by field: the flow decodes a whole block at
    once instead of a dict per row. `fields` maps a record field to its values, one per
    row (numbers: an int64 or float64 array; text: a list) or to one value for every row;
    rows with an `error` have no values (their numbers are 0)."""

    stream: str
    path: str
    symbol: str
    avail_ms: np.ndarray  # int64, nondecreasing: the merge order across files
    row: list[int]
    error: list[str | None]
    fields: dict[str, Any]

    def __len__(self) -> int:
        return len(self.row)

    def record(self, i: int) -> dict[str, Any]:
        """Row `i` as the record dict the per-row path reads (just the symbol for a bad row)."""
        if self.error[i] is not None:
            return {"symbol": self.symbol}
        rec = {}
        for k, v in self.fields.items():
            if isinstance(v, np.ndarray):
                x = v[i].item()  # the Python int or float the per-row readers gave
            elif isinstance(v, list):
                x = v[i]
            else:
                x = v
            if x is not None or k not in OPTIONAL_FIELDS:
                rec[k] = x
        return rec

    def rows(self) -> Iterator[FileRow]:
        for i, (avail, row, err) in enumerate(
            zip(self.avail_ms.tolist(), self.row, self.error, strict=True)
        ):
            yield FileRow(avail, self.stream, self.record(i), self.path, row, err)

    def slice(self, lo: int, hi: int) -> RowBlock:
        return RowBlock(
            self.stream,
            self.path,
            self.symbol,
            self.avail_ms[lo:hi],
            self.row[lo:hi],
            self.error[lo:hi],
            {
                k: v[lo:hi] if isinstance(v, (list, np.ndarray)) else v
                for k, v in self.fields.items()
            },
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def check_file(spec: FileSpec) -> None:
    """Format and columns, before the flow starts; raises FileSpecError naming the file."""
    suffix = _suffix(spec.path)
    if suffix not in SUFFIXES[spec.kind]:
        raise FileSpecError(
            f"{spec.path}: {spec.kind} files must be {', '.join(SUFFIXES[spec.kind])}"
        )
    try:
        columns = _columns(spec, suffix)
    except FileSpecError:
        raise
    except Exception as e:  # any reader's error: the file is not what its name says
        why = " ".join(str(e).split())  # one line, whatever the reader wrote
        raise FileSpecError(
            f"{spec.path}: cannot read it as {suffix}: {type(e).__name__}: {why}"
        ) from None
    if columns is not None:
        _check_columns(spec, columns)
    if spec.kind == "candles":
        _check_interval(spec)


def _check_columns(spec: FileSpec, columns: list[str]) -> None:
    if spec.kind == "candles":
        need = set(CANDLE_COLUMNS)
        if "ts_ms" not in columns and not set(TIME_COLUMNS) & set(columns):
            raise FileSpecError(
                f"{spec.path}, header: no time column (one of {list(TIME_COLUMNS)}); "
                f"columns are {list(columns)}"
            )
    elif spec.kind == "trades":
        need = set(TRADE_COLUMNS)
    else:
        need = {"date", "open"}
    missing = need - set(columns)
    if missing:
        raise FileSpecError(
            f"{spec.path}, header: missing columns {sorted(missing)}; columns are {list(columns)}"
        )


def _check_interval(spec: FileSpec) -> None:
    """A candle file's interval (the median step between its open times) is 1m or 5m.
    Before, a 15m or 1h file started, and every one of its rows was a dead letter."""
    from operators.events import CANDLE_INTERVALS_MS

    df = _candles_frame(spec)
    ts = df["ts_ms"].to_numpy()[df["error"].isna().to_numpy()].astype("int64")
    interval = candle_interval_ms(ts)
    if len(ts) >= 2 and interval not in CANDLE_INTERVALS_MS:
        raise FileSpecError(
            f"{spec.path}: candles {interval / 60_000:g} min apart (the median step between "
            "their open times); the flow takes 1m or 5m candles"
        )


def _columns(spec: FileSpec, suffix: str) -> list[str] | None:
    """The column names of a table file (None: a JSON or capture file, checked here)."""
    if suffix == ".feather":
        import pyarrow.feather as feather

        return list(feather.read_table(spec.path, memory_map=True).schema.names)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(spec.path).names)
    if suffix == ".csv":  # read whole: a ragged line is a file problem (pandas names it)
        import pandas as pd

        return [str(c) for c in pd.read_csv(spec.path).columns]
    if suffix == ".json":
        rows = json.loads(spec.path.read_text())
        width = 6 if spec.kind == "candles" else 2
        layout = (
            "[open_ms, open, high, low, close, volume]"
            if spec.kind == "candles"
            else "[ts_ms, rate, ...]"
        )
        if not isinstance(rows, list):
            raise FileSpecError(f"{spec.path}: expected a JSON list of {layout} rows")
        for i, r in enumerate(rows, 1):
            if not isinstance(r, list) or len(r) < width:
                raise FileSpecError(f"{spec.path}, row {i}: expected {layout}, got {r!r:.80}")
        return None
    with gzip.open(spec.path, "rt") as f:  # a capture: `<recv_ns> <frame json>` lines
        first = f.readline()
    recv, _, frame = first.partition(" ")
    if not recv.isdigit() or not frame.lstrip().startswith("{"):
        raise FileSpecError(
            f"{spec.path}, line 1: expected `<recv_ns> <frame json>`, got {first[:80]!r}"
        )
    return None


# Epoch numbers in a time column: seconds, milliseconds, microseconds or nanoseconds, as
# exports have them. Times in 2009..2100 lie 1000 times apart in each unit (s 1.2e9..4.1e9,
# ms 1.2e12..4.1e12, ...), so the magnitude of a file's numbers says their unit: the
# bounds below sit between the ranges (1e11 is the year 5138 in s and 1973 in ms).
EPOCH_UNITS = ((1e17, "ns"), (1e14, "us"), (1e11, "ms"), (0.0, "s"))


def epoch_unit(numbers: np.ndarray) -> str:
    """The unit of a column's epoch numbers, from the median magnitude of the finite ones
    (one unit for the whole column: a stray value in another unit is not a time)."""
    v = np.abs(numbers[np.isfinite(numbers)])
    if not len(v):
        return "ns"
    m = float(np.median(v))
    return next(unit for bound, unit in EPOCH_UNITS if m >= bound)


def _to_ms(values: pd.Series, numbers_in: str | None = None) -> np.ndarray:
    """Epoch ms as float (NaN where the value is not a time). Numbers (or text that is a
    number) are epoch times in `numbers_in` units, by default the unit their magnitude
    says (`epoch_unit`); other text is a date and time (naive = UTC). Before, numbers were
    taken as nanoseconds: a file with epoch seconds, ms or us put every row in 1970, and
    the run dead-lettered all of them."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric:
        numbers, text = values, None
    elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        numbers, text = values.iloc[:0], values  # times already, or no time at all
    elif pd.to_numeric(values.dropna().iloc[:100], errors="coerce").isna().all():
        numbers, text = values.iloc[:0], values  # dates as text (not a number in sight)
    else:
        is_number = pd.to_numeric(values, errors="coerce").notna()
        # the numbers parsed again on their own: whole ones stay int64 (a float has no
        # room for nanoseconds since 1970)
        numbers = pd.to_numeric(values[is_number]) if is_number.any() else values.iloc[:0]
        text = values[~is_number]
    s = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if len(numbers):
        floats = numbers.to_numpy(dtype="float64", na_value=np.nan)
        unit = numbers_in or epoch_unit(floats)
        finite = np.isfinite(floats)
        with np.errstate(invalid="ignore"):
            fits = finite & (np.abs(floats) < 9.2e18 / _NS_PER[unit])  # else not a time
        if fits.any():
            given = numbers[fits]
            if not pd.api.types.is_integer_dtype(given):
                # floats (1704067202.101 s; or ns, as a column with a blank row is read):
                # to whole microseconds first, or the float's .100999... s (or ns a few
                # hundred short) floors to the millisecond before
                us = np.round(given.to_numpy(dtype="float64") * (_NS_PER[unit] / 1_000))
                given, unit = pd.Series(us.astype("int64"), index=given.index), "us"
            s[given.index] = pd.to_datetime(given, unit=unit, utc=True, errors="coerce").astype(
                "datetime64[ns, UTC]"
            )
    if text is not None and len(text):
        t = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
        # A time nanoseconds cannot hold (text like "-5" parses as the year -5) is not a
        # time either: without this the conversion below raised and stopped the whole run.
        lo, hi = (x.tz_localize("UTC") for x in (pd.Timestamp.min, pd.Timestamp.max))
        s[text.index] = t.where((t >= lo) & (t <= hi)).astype("datetime64[ns, UTC]")
    # whole milliseconds in integers: float nanoseconds (256 ns apart near 2025) read
    # 08:00:00.001 as 08:00:00.000, a rate stamped after a close as known at it
    ms = (s.astype("int64").to_numpy() // 1_000_000).astype("float64")
    ms[s.isna().to_numpy()] = np.nan
    return ms


_NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _numbers(df: pd.DataFrame, columns: tuple[str, ...]) -> tuple[pd.DataFrame, pd.Series]:
    """The columns as floats, and per row the first problem (None where all are numbers)."""
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    error = pd.Series([None] * len(df), index=df.index, dtype=object)
    for c in columns:
        v = pd.to_numeric(df[c], errors="coerce")
        out[c] = v.astype("float64")
        _flag(error, v.isna().to_numpy(), df[c], f"column {c!r} is not a number")
    return out, error


def _flag(error: pd.Series, bad: np.ndarray, values: pd.Series, problem: str) -> None:
    """Give rows in `bad` that have no problem yet `problem` (with the value it is about)."""
    bad = np.asarray(bad) & error.isna().to_numpy()
    if bad.any():
        error[bad] = [f"{problem}: {x!r}" for x in values[bad]]


def _with_rows(df: pd.DataFrame, error: pd.Series) -> pd.DataFrame:
    df = df.copy()
    df["row"] = np.arange(1, len(df) + 1)
    df["error"] = error.to_numpy()
    return df


def _problem(err: Any) -> str | None:
    """The error cell of a row: a string, or None (pandas may hold NaN for None)."""
    return err if isinstance(err, str) else None


# Rows per block: what the flow decodes at once, and the parquet chunk. Each block is one
# input batch through every step, and a cluster pays per batch, not per row, to keep its
# processes in step: at 16,384 rows two processes took 8% longer (2 x 8M ticks, medians of
# three: 8.06 s, against 7.43 s at 65,536; 262,144 gained nothing more). One worker is
# unchanged; its peak memory is 31 MB higher (8M ticks: 187 -> 218 MB).
BLOCK_ROWS = 65_536


def _errors(df: pd.DataFrame) -> list[str | None]:
    if df["error"].isna().all():  # the usual block: every row read
        return [None] * len(df)
    return [_problem(e) for e in df["error"].tolist()]


def _avail(ts_ms: np.ndarray, good: np.ndarray, last: int) -> np.ndarray:
    """Availability per row: its own for good rows; a bad row comes with the previous
    good one (`last` before the first)."""
    import pandas as pd

    avail = pd.Series(np.where(good, ts_ms, np.nan)).ffill().fillna(last)
    return avail.to_numpy().astype("int64")


def _ints(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    return np.where(good, values, 0).astype("int64")


def _blocks(df: pd.DataFrame, make: Any) -> Iterator[RowBlock]:
    """`make(part, last)` -> (block, last) over BLOCK_ROWS-row parts of `df`, in order."""
    last = 0
    for lo in range(0, len(df), BLOCK_ROWS):
        block, last = make(df.iloc[lo : lo + BLOCK_ROWS], last)
        yield block


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """By event time; rows without one (errors) first, in file order."""
    return df.sort_values("ts_ms", kind="stable", na_position="first").reset_index(drop=True)


def _candles_frame(spec: FileSpec) -> pd.DataFrame:
    """ts_ms (open), open..volume (base units), row, error; sorted by time."""
    import pandas as pd

    suffix = _suffix(spec.path)
    if suffix == ".feather":
        df = pd.read_feather(spec.path)
    elif suffix == ".json":
        rows = json.loads(spec.path.read_text())
        df = pd.DataFrame([r[:6] for r in rows], columns=["ts_ms", *CANDLE_COLUMNS])
    elif suffix == ".csv":
        df = pd.read_csv(spec.path)
    else:
        raise FileSpecError(f"{spec.path}: candle files must be .feather, .json or .csv")
    col = "ts_ms" if "ts_ms" in df.columns else next(c for c in TIME_COLUMNS if c in df.columns)
    out, error = _numbers(df, CANDLE_COLUMNS)
    out.insert(0, "ts_ms", _to_ms(df[col], "ms" if col == "ts_ms" else None))  # named ms
    _flag(error, np.isnan(out["ts_ms"].to_numpy()), df[col], f"column {col!r} is not a time")
    if spec.volume == "quote":
        out["volume"] = out["volume"] / out["close"]
    return _sorted(_with_rows(out, error))


def load_candles(spec: FileSpec) -> pd.DataFrame:
    """A frame with ts_ms (open), open, high, low, close, volume (base units): good rows."""
    df = _candles_frame(spec)
    good = df[df["error"].isna()]
    out = good[["ts_ms", *CANDLE_COLUMNS]].copy()
    out["ts_ms"] = out["ts_ms"].astype("int64")
    return out.reset_index(drop=True)


def candle_interval_ms(ts_ms: np.ndarray) -> int:
    """The median step between distinct open times: a repeated row is no step of 0 (a
    file appended to itself made half the steps 0 and the interval 0)."""
    steps = np.diff(np.unique(ts_ms))
    return int(np.median(steps)) if len(steps) else 60_000


def candle_blocks(spec: FileSpec) -> Iterator[RowBlock]:
    df = _candles_frame(spec)
    ok = df["error"].isna().to_numpy()
    interval = candle_interval_ms(df["ts_ms"].to_numpy()[ok].astype("int64"))

    def make(part: pd.DataFrame, last: int) -> tuple[RowBlock, int]:
        error = _errors(part)
        good = np.array([e is None for e in error], dtype=bool)
        ts = part["ts_ms"].to_numpy()
        avail = _avail(ts + interval, good, last)
        fields = {
            "symbol": spec.symbol,
            "ts_event_ms": _ints(ts, good),
            "interval_ms": interval,
            **{c: part[c].to_numpy(dtype="float64") for c in CANDLE_COLUMNS},
        }
        block = RowBlock(
            "candles", str(spec.path), spec.symbol, avail, part["row"].tolist(), error, fields
        )
        return block, int(avail[-1])

    yield from _blocks(df, make)


def _trades_frame(spec: FileSpec) -> pd.DataFrame:
    """ts_ms, trade_id, px, qty, side, buyer, seller, venue, row, error; sorted by time."""
    import pandas as pd

    if _suffix(spec.path) == ".jsonl.gz":
        df = _ws_capture_trades(spec.path)
        if spec.venue is not None:
            df["venue"] = spec.venue
        return _sorted(df)
    parquet = _suffix(spec.path) == ".parquet"
    df = pd.read_parquet(spec.path) if parquet else pd.read_csv(spec.path)
    return _sorted(_trades_table(df, spec, first_row=1))


def _trades_table(
    df: pd.DataFrame, spec: FileSpec, first_row: int, ts_ms: np.ndarray | None = None
) -> pd.DataFrame:
    """Rows of a nautilus-layout table (data row `first_row` first) in file order:
    ts_ms, trade_id, px, qty, side, buyer, seller, venue, row, error. `ts_ms`: the rows'
    times read from the whole file's column (a chunk's numbers take the file's unit)."""
    import pandas as pd

    df = df.reset_index(drop=True)
    nums, error = _numbers(df, ("price", "quantity"))
    ts = _to_ms(df["timestamp"]) if ts_ms is None else ts_ms
    no_time = np.isnan(ts) & error.isna().to_numpy()
    error[no_time] = [
        f"column 'timestamp' is not a time: {x!r}" for x in df.loc[no_time, "timestamp"]
    ]
    # true/false in any case, or 1/0 (a database's or an integer column's booleans: they
    # were dead letters, every row of the file)
    maker = df["buyer_maker"].astype(str).str.lower().replace(MAKER_NUMBERS)
    bad_side = ~maker.isin(["true", "false"]) & error.isna()
    error[bad_side] = [
        f"column 'buyer_maker' is not true/false (or 1/0): {x!r}"
        for x in df.loc[bad_side, "buyer_maker"]
    ]
    out = pd.DataFrame(
        {
            "ts_ms": ts,
            "trade_id": df["trade_id"].astype(str).to_numpy(),
            "px": nums["price"].to_numpy(),
            "qty": nums["quantity"].to_numpy(),
            "side": np.where(maker == "true", "sell", "buy"),  # the buyer made: a seller crossed
            "buyer": None,
            "seller": None,
            "venue": spec.venue,
        }
    )
    out = _with_rows(out, error)
    out["row"] += first_row - 1
    return out


MAKER_NUMBERS = {"1": "true", "0": "false", "1.0": "true", "0.0": "false"}


def load_trades(spec: FileSpec) -> pd.DataFrame:
    """A frame with ts_ms, trade_id, px, qty, side (buy/sell aggressor), buyer, seller, venue:
    the good rows, sorted by event time."""
    df = _trades_frame(spec)
    good = df[df["error"].isna()].drop(columns=["row", "error"])
    good = good.astype({"ts_ms": "int64"})
    return good.reset_index(drop=True)


def _ws_capture_trades(path: Path) -> pd.DataFrame:
    """Trades from a raw WebSocket capture, through the live feed's own parsers (Hyperliquid
    `trades`, Binance `aggTrade` or `trade`); a frame the live feed would dead-letter is a
    bad row with its line number."""
    import pandas as pd

    from marketdata.live.capture import capture_frames  # aiohttp: 0.1 s to import
    from marketdata.live.frames import FrameError

    rows: list[dict[str, Any]] = []
    for n, _, items in capture_frames(path):
        if isinstance(items, FrameError):
            rows.append({"ts_ms": np.nan, "row": n, "error": f"unreadable frame: {items}"})
            continue
        rows.extend(
            {
                "ts_ms": it.record["ts_event_ms"],
                **{k: it.record[k] for k in ("trade_id", "px", "qty", "side", "buyer", "seller")},
                "venue": it.record["venue"],
                "row": n,
                "error": None,
            }
            for it in items
            if it.stream == "trades"
        )
    cols = ["ts_ms", "trade_id", "px", "qty", "side", "buyer", "seller", "venue", "row", "error"]
    return pd.DataFrame(rows, columns=cols)


def _trade_block(spec: FileSpec, part: pd.DataFrame, last: int) -> tuple[RowBlock, int]:
    error = _errors(part)
    good = np.array([e is None for e in error], dtype=bool)
    ts = part["ts_ms"].to_numpy()
    avail = _avail(ts, good, last)
    fields: dict[str, Any] = {
        "symbol": spec.symbol,
        "ts_event_ms": _ints(ts, good),
        "trade_id": part["trade_id"].tolist(),
        "px": part["px"].to_numpy(dtype="float64"),
        "qty": part["qty"].to_numpy(dtype="float64"),
        **{c: part[c].tolist() for c in ("side", "buyer", "seller")},
        "venue": part["venue"].tolist(),
    }
    block = RowBlock(
        "trades", str(spec.path), spec.symbol, avail, part["row"].tolist(), error, fields
    )
    return block, int(avail[-1])


def _arrow_times_ms(column: Any) -> np.ndarray | None:
    """`_to_ms` of an Arrow timestamp column without pandas (0.3 s to import): the same
    float ms from the same integer nanoseconds. None for any other column, a null, or a
    time nanoseconds cannot hold: `_to_ms` decides those."""
    import pyarrow as pa

    if not pa.types.is_timestamp(column.type) or column.null_count:
        return None
    try:
        ns = column.cast(pa.timestamp("ns", column.type.tz)).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    parts = [_numpy(c) for c in ns.chunks] or [np.zeros(0, dtype=np.int64)]
    return (np.concatenate(parts) // 1_000_000).astype("float64")  # integer ms, as `_to_ms`


def _sorted_parquet_blocks(spec: FileSpec) -> Iterator[RowBlock] | None:
    """A parquet trade file already in time order (the usual case), read BLOCK_ROWS rows
    at a time. None: it needs sorting (or has rows without a time, which go first), so it
    must be read whole. With a timestamp-typed column (its unit in its type) memory stays
    flat whatever the file's size: the order is checked in a first pass over that column
    alone and each block's times are taken from its own rows. A column of epoch numbers is
    read whole first: its unit is the whole column's (`epoch_unit`), about 40 bytes a row
    at the peak (2 GB for 50M trades)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pre_buffer off: on, Arrow read every column chunk ahead on its IO threads into fresh
    # memory, whose pages the kernel zeroed: a quarter of the reading's CPU (0.4 s per 8M
    # trades), on the second core that the other flow of a two-process cluster needs
    pf = pq.ParquetFile(spec.path, pre_buffer=False)
    typed = pa.types.is_timestamp(pf.schema_arrow.field("timestamp").type)
    in_order = _typed_times_in_order(pf) if typed else None
    if in_order is False:
        return None
    if in_order:

        def times(first: int, batch: Any) -> np.ndarray:
            ms = _arrow_times_ms(pa.chunked_array([batch.column("timestamp")]))
            assert ms is not None  # every batch was checked in the first pass
            return ms

    else:  # epoch numbers, or a time nanoseconds cannot hold: `_to_ms` decides
        column = pf.read(columns=["timestamp"], use_threads=False).column(0)
        ts = _arrow_times_ms(column)
        if ts is None:
            ts = _to_ms(column.to_pandas())
        if np.isnan(ts).any() or (np.diff(ts) < 0).any():
            return None

        def times(first: int, batch: Any) -> np.ndarray:
            return ts[first - 1 : first - 1 + batch.num_rows]

    def blocks() -> Iterator[RowBlock]:
        first, last = 1, 0
        # one thread: the pool's hand-offs wait for a core, which a second flow holds
        for batch in pf.iter_batches(batch_size=BLOCK_ROWS, use_threads=False):
            block_ms = times(first, batch)
            block = _plain_trade_block(spec, batch, block_ms, first)
            if block is None:
                part = _trades_table(batch.to_pandas(), spec, first, block_ms)
                block, _ = _trade_block(spec, part, last)
            last = int(block.avail_ms[-1])
            first += len(block)
            yield block

    return blocks()


def _typed_times_in_order(pf: Any, rows: int = 1 << 20) -> bool | None:
    """Whether a timestamp-typed column is in time order, read `rows` rows at a time; None if
    a part has a null or a time nanoseconds cannot hold (`_to_ms` decides those)."""
    import pyarrow as pa

    prev = -np.inf
    for batch in pf.iter_batches(batch_size=rows, columns=["timestamp"], use_threads=False):
        ms = _arrow_times_ms(pa.chunked_array([batch.column(0)]))
        if ms is None:
            return None
        if len(ms) and (ms[0] < prev or (np.diff(ms) < 0).any()):
            return False
        prev = ms[-1] if len(ms) else prev
    return True


MAKER_PATTERN = "^(True|False|true|false)$"  # the buyer-maker texts a plain block may hold


def _numpy(a: pa.Array) -> np.ndarray:
    """A null-free Arrow array of numbers, times or booleans as numpy, read from its
    buffers: pyarrow's own `to_numpy` (and `pa.array`) import pandas, 0.3 s."""
    import pyarrow as pa

    data = a.buffers()[1]
    if pa.types.is_boolean(a.type):
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[a.offset : a.offset + len(a)].astype(bool)
    width = a.type.bit_width // 8
    kind = "f" if pa.types.is_floating(a.type) else "i"
    dtype = np.dtype(f"{kind}{width}")
    return np.frombuffer(data, dtype=dtype, count=len(a), offset=a.offset * width).copy()


def _is_text(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _plain_trade_block(
    spec: FileSpec, batch: pa.RecordBatch, ts_ms: np.ndarray, first: int
) -> RowBlock | None:
    """A chunk whose columns hold only ordinary values (float prices and sizes without
    NaN, integer or text ids, true/false makers, no nulls; every time valid), straight
    from Arrow without pandas. None: `_trades_table` reads it and names each bad row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tid, price, qty, maker = (
        batch.column(c) for c in ("trade_id", "price", "quantity", "buyer_maker")
    )
    if any(c.null_count for c in (tid, price, qty, maker)):
        return None
    if not (pa.types.is_floating(price.type) and pa.types.is_floating(qty.type)):
        return None
    if not (pa.types.is_integer(tid.type) or _is_text(tid.type)):
        return None
    px, size = _numpy(price).astype("float64"), _numpy(qty).astype("float64")
    if np.isnan(px).any() or np.isnan(size).any():
        return None
    if pa.types.is_boolean(maker.type):
        sells = _numpy(maker)
    elif _is_text(maker.type):  # a pattern, not a Python value: pa.scalar imports pandas
        if not pc.all(pc.match_substring_regex(maker, MAKER_PATTERN)).as_py():
            return None
        sells = _numpy(pc.match_substring_regex(maker, "^[Tt]rue$"))
    else:
        return None
    n = batch.num_rows
    fields: dict[str, Any] = {
        "symbol": spec.symbol,
        "ts_event_ms": ts_ms.astype("int64"),
        "trade_id": pc.cast(tid, pa.string()).to_pylist(),
        "px": px,
        "qty": size,
        "side": np.where(sells, "sell", "buy"),  # the buyer made: a seller crossed
        "buyer": None,
        "seller": None,
        "venue": spec.venue,
    }
    rows = list(range(first, first + n))
    return RowBlock(
        "trades", str(spec.path), spec.symbol, ts_ms.astype("int64"), rows, [None] * n, fields
    )


def trade_blocks(spec: FileSpec) -> Iterator[RowBlock]:
    if _suffix(spec.path) == ".parquet":
        chunked = _sorted_parquet_blocks(spec)
        if chunked is not None:
            yield from chunked
            return
    yield from _blocks(_trades_frame(spec), partial(_trade_block, spec))


def _funding_frame(spec: FileSpec) -> pd.DataFrame:
    """ts_ms, rate, row, error; sorted by time. freqtrade JSON or feather (`open` = rate)."""
    import pandas as pd

    if _suffix(spec.path) == ".feather":
        df = pd.read_feather(spec.path)
        time_col, rate_col = "date", "open"
    else:
        rows = json.loads(spec.path.read_text())
        df = pd.DataFrame([r[:2] for r in rows], columns=["ts_ms", "rate"])
        time_col, rate_col = "ts_ms", "rate"
    nums, error = _numbers(df, (rate_col,))
    times = _to_ms(df[time_col], "ms" if time_col == "ts_ms" else None)  # named ms: ms
    out = pd.DataFrame({"ts_ms": times, "rate": nums[rate_col].to_numpy()})
    no_time = np.isnan(out["ts_ms"].to_numpy()) & error.isna().to_numpy()
    error[no_time] = [
        f"column {time_col!r} is not a time: {x!r}" for x in df.loc[no_time, time_col]
    ]
    return _sorted(_with_rows(out, error))


def load_funding(spec: FileSpec) -> pd.DataFrame:
    """A frame with ts_ms and rate (per funding interval, a fraction): the good rows."""
    df = _funding_frame(spec)
    good = df[df["error"].isna()][["ts_ms", "rate"]].astype({"ts_ms": "int64"})
    return good.reset_index(drop=True)


def funding_blocks(spec: FileSpec) -> Iterator[RowBlock]:
    def make(part: pd.DataFrame, last: int) -> tuple[RowBlock, int]:
        error = _errors(part)
        good = np.array([e is None for e in error], dtype=bool)
        ts = part["ts_ms"].to_numpy()
        avail = _avail(ts, good, last)
        fields = {
            "symbol": spec.symbol,
            "ts_event_ms": _ints(ts, good),
            "rate": part["rate"].to_numpy(dtype="float64"),
        }
        block = RowBlock(
            "funding", str(spec.path), spec.symbol, avail, part["row"].tolist(), error, fields
        )
        return block, int(avail[-1])

    yield from _blocks(_funding_frame(spec), make)


_READERS = {"candles": candle_blocks, "trades": trade_blocks, "funding": funding_blocks}
# At equal availability times: funding (known at its time) before the market data whose
# arrival may close a bar at that time.
TIE_ORDER = {"funding": 0, "candles": 1, "trades": 1}


def file_blocks(specs: list[FileSpec]) -> Iterator[RowBlock]:
    """Every row of every file in blocks, merged by availability time (bad rows with their
    error): the rows in the order `heapq.merge` would give them (on a tie, funding first,
    then the earlier file), a block cut wherever another file's next row comes in between."""
    readers = [_READERS[s.kind](s) for s in specs]
    heads = [next(r, None) for r in readers]
    tie = [(TIE_ORDER[s.kind], i) for i, s in enumerate(specs)]  # on equal times: smaller first
    while True:
        live = [i for i, h in enumerate(heads) if h is not None]
        if len(live) <= 1:
            for i in live:
                yield heads[i]  # type: ignore[misc]
                yield from readers[i]
            return
        i = min(live, key=lambda j: (heads[j].avail_ms[0], tie[j]))  # type: ignore[union-attr]
        head = heads[i]
        assert head is not None
        cut = len(head)
        for j in live:
            if j != i:  # rows of file i that come before file j's next one
                nxt = heads[j].avail_ms[0]  # type: ignore[union-attr]
                side = "right" if tie[i] < tie[j] else "left"
                cut = min(cut, int(np.searchsorted(head.avail_ms, nxt, side)))
        yield head.slice(0, cut)
        heads[i] = head.slice(cut, len(head)) if cut < len(head) else next(readers[i], None)


def file_rows(specs: list[FileSpec]) -> Iterator[FileRow]:
    """Every row of every file, merged by availability time (bad rows with their error)."""
    for block in file_blocks(specs):
        yield from block.rows()


def file_records(specs: list[FileSpec]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stream, record) of every file, merged by availability time, for the tools that
    have no dead letters (training, the Kafka replay): a bad row raises, naming it."""
    for r in file_rows(specs):
        if r.error is not None:
            raise FileSpecError(f"{r.origin}: {r.error}")
        yield r.stream, r.record
