"""Market-data files as input: candles, trades and funding in the formats we meet.

Candles: freqtrade feather (`date` tz-aware, open..volume), freqtrade JSON
(`[[open_ms, o, h, l, c, v], ...]`), CSV with `timestamp` or `date` (naive = UTC).
1m or 5m. Volume is base units unless the spec says `volume=quote` (FTX: USD notional),
then it is converted with the candle's close.
Trades: parquet or CSV with timestamp, trade_id, price, quantity, buyer_maker (nautilus
layout), or a raw WebSocket capture (`.jsonl.gz`, `<recv_ns> <frame>`): Hyperliquid `trades`
frames, whose trades carry buyer and seller addresses, or Binance `trade` frames.
Funding: freqtrade JSON `[[ts_ms, rate, ...], ...]`.

A spec names one file: `KIND:PATH[?symbol=BTC-PERP&volume=quote]`, KIND one of
candles, trades, funding. Records come out in the order they became available
(a candle at its close), merged across files.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pandas as pd

from marketdata.live.capture import capture_items

Timed = tuple[int, str, dict[str, Any]]
KINDS = ("candles", "trades", "funding")


class FileSpecError(ValueError):
    """A file spec or file cannot be used; the message names it."""


@dataclass(frozen=True)
class FileSpec:
    kind: str
    path: Path
    symbol: str = "BTC-PERP"
    volume: str = "base"

    @classmethod
    def parse(cls, text: str) -> FileSpec:
        kind, sep, rest = text.partition(":")
        if not sep or kind not in KINDS:
            raise FileSpecError(
                f"input file spec {text!r}: expected KIND:PATH with KIND one of "
                f"{KINDS}, e.g. candles:data/btc_1m.feather?symbol=BTC-PERP"
            )
        path, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(opts) - {"symbol", "volume"}
        if unknown:
            raise FileSpecError(
                f"input file spec {text!r}: unknown option(s) {sorted(unknown)}; "
                "known: symbol, volume"
            )
        volume = opts.get("volume", "base")
        if volume not in ("base", "quote"):
            raise FileSpecError(
                f"input file spec {text!r}: volume={volume!r} must be base or quote"
            )
        p = Path(path)
        if not p.is_file():
            raise FileSpecError(f"input file spec {text!r}: no file at {p}")
        return cls(kind, p, opts.get("symbol", "BTC-PERP"), volume)


def _to_ms(values: pd.Series) -> np.ndarray:
    s = pd.to_datetime(values, utc=True)
    return (s.astype("datetime64[ns, UTC]").astype("int64") // 1_000_000).to_numpy()


def load_candles(spec: FileSpec) -> pd.DataFrame:
    """A frame with ts_ms (open), open, high, low, close, volume (base units)."""
    suffix = spec.path.suffix.lower()
    if suffix == ".feather":
        df = pd.read_feather(spec.path)
    elif suffix == ".json":
        rows = json.loads(spec.path.read_text())
        df = pd.DataFrame(rows, columns=["ts_ms", "open", "high", "low", "close", "volume"])
    elif suffix == ".csv":
        df = pd.read_csv(spec.path)
    else:
        raise FileSpecError(f"{spec.path}: candle files must be .feather, .json or .csv")
    if "ts_ms" not in df.columns:
        col = next((c for c in ("date", "timestamp", "time") if c in df.columns), None)
        if col is None:
            raise FileSpecError(f"{spec.path}: no date, timestamp or time column")
        df["ts_ms"] = _to_ms(df[col])
    missing = {"open", "high", "low", "close", "volume"} - set(df.columns)
    if missing:
        raise FileSpecError(f"{spec.path}: missing columns {sorted(missing)}")
    out = df[["ts_ms", "open", "high", "low", "close", "volume"]].copy()
    out["ts_ms"] = out["ts_ms"].astype("int64")
    if spec.volume == "quote":
        out["volume"] = out["volume"] / out["close"]
    return out.sort_values("ts_ms", kind="stable").reset_index(drop=True)


def candle_interval_ms(ts_ms: np.ndarray) -> int:
    if len(ts_ms) < 2:
        return 60_000
    return int(np.median(np.diff(ts_ms)))


def candle_records(spec: FileSpec) -> Iterator[Timed]:
    df = load_candles(spec)
    interval = candle_interval_ms(df["ts_ms"].to_numpy())
    for ts, o, h, lo, c, v in df.itertuples(index=False, name=None):
        yield (
            int(ts) + interval,
            "candles",
            {
                "symbol": spec.symbol,
                "ts_event_ms": int(ts),
                "interval_ms": interval,
                "open": float(o),
                "high": float(h),
                "low": float(lo),
                "close": float(c),
                "volume": float(v),
            },
        )


def load_trades(spec: FileSpec) -> pd.DataFrame:
    """A frame with ts_ms, trade_id, px, qty, side (buy/sell aggressor), buyer, seller."""
    name = spec.path.name.lower()
    if name.endswith(".jsonl.gz"):
        return _ws_capture_trades(spec.path)
    if name.endswith(".parquet"):
        df = pd.read_parquet(spec.path)
    elif name.endswith(".csv"):
        df = pd.read_csv(spec.path)
    else:
        raise FileSpecError(
            f"{spec.path}: trade files must be .parquet, .csv or a WebSocket .jsonl.gz capture"
        )
    missing = {"timestamp", "trade_id", "price", "quantity", "buyer_maker"} - set(df.columns)
    if missing:
        raise FileSpecError(f"{spec.path}: missing columns {sorted(missing)}")
    maker_is_buyer = df["buyer_maker"].astype(str).str.lower() == "true"
    return pd.DataFrame(
        {
            "ts_ms": _to_ms(df["timestamp"]),
            "trade_id": df["trade_id"].astype(str),
            "px": df["price"].astype(float),
            "qty": df["quantity"].astype(float),
            "side": np.where(maker_is_buyer, "sell", "buy"),  # the buyer made: a seller crossed
            "buyer": None,
            "seller": None,
        }
    )


def _ws_capture_trades(path: Path) -> pd.DataFrame:
    """Trades from a raw WebSocket capture, through the live feed's own parsers."""
    records = [item.record for _, item in capture_items(path) if item.stream == "trades"]
    cols = ["ts_event_ms", "trade_id", "px", "qty", "side", "buyer", "seller"]
    df = pd.DataFrame(records, columns=cols).rename(columns={"ts_event_ms": "ts_ms"})
    return df.sort_values("ts_ms", kind="stable").reset_index(drop=True)


def trade_records(spec: FileSpec) -> Iterator[Timed]:
    df = load_trades(spec)
    for ts, tid, px, qty, side, buyer, seller in df.itertuples(index=False, name=None):
        yield (
            int(ts),
            "trades",
            {
                "symbol": spec.symbol,
                "ts_event_ms": int(ts),
                "trade_id": tid,
                "px": float(px),
                "qty": float(qty),
                "side": side,
                "buyer": buyer,
                "seller": seller,
            },
        )


def funding_records(spec: FileSpec) -> Iterator[Timed]:
    rows = json.loads(spec.path.read_text())
    for row in rows:
        ts, rate = int(row[0]), float(row[1])
        yield ts, "funding", {"symbol": spec.symbol, "ts_event_ms": ts, "rate": rate}


_READERS = {"candles": candle_records, "trades": trade_records, "funding": funding_records}


def file_records(specs: list[FileSpec]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stream, record) from every file, merged by availability time."""
    for _, stream, rec in heapq.merge(*(_READERS[s.kind](s) for s in specs), key=lambda x: x[0]):
        yield stream, rec
