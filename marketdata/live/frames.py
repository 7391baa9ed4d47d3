"""What a venue frame parses into, shared by the live feeds and the recorded captures.

A capture line is `<recv_ns> <frame json>` (the layout of ../shared/data/ws/). Each venue
module has one stateful parser (`HyperliquidParser`, `BinanceParser`) that turns a frame
into records of the input streams; `marketdata.files` reads captures with the same parsers.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FrameError(ValueError):
    """A frame that cannot be used; the message is the dead-letter reason."""


# Every integer field ends up in an Avro long (ts_event_ms) or is compared with one.
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Item:
    """One input record parsed from a frame, with the key that makes it unique on the venue."""

    stream: str  # trades, candles or funding
    record: dict[str, Any]  # the Avro record without strategy_id and schema_version
    dedup_key: tuple[str, str, str]  # (stream, symbol, venue id or event time)


@dataclass(slots=True)
class Parsed:
    """A frame's records; `kind` names the venue stream for metrics (trades, kline, pong ...)."""

    kind: str
    items: list[Item] = field(default_factory=list)


def load_json(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise FrameError(f"not JSON: {e}") from None


def need(obj: Any, name: str, where: str) -> Any:
    if not isinstance(obj, dict) or obj.get(name) is None:
        raise FrameError(f"{where}: missing field '{name}'")
    return obj[name]


def positive(obj: Any, name: str, where: str) -> float:
    raw = need(obj, name, where)
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise FrameError(f"{where}: field '{name}' is not a number: {raw!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise FrameError(f"{where}: field '{name}' must be a finite number > 0, got {raw!r}")
    return v


def number(obj: Any, name: str, where: str) -> float:
    raw = need(obj, name, where)
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise FrameError(f"{where}: field '{name}' is not a number: {raw!r}") from None
    if not math.isfinite(v):
        raise FrameError(f"{where}: field '{name}' must be finite, got {raw!r}")
    return v


def integer(obj: Any, name: str, where: str) -> int:
    raw = need(obj, name, where)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise FrameError(f"{where}: field '{name}' must be an integer, got {raw!r}")
    if not LONG_MIN <= raw <= LONG_MAX:
        raise FrameError(f"{where}: field '{name}' is outside the signed 64-bit range: {raw}")
    return raw


def trade_item(
    symbol: str,
    ts_ms: int,
    trade_id: str,
    px: float,
    qty: float,
    side: str,
    buyer: str | None = None,
    seller: str | None = None,
    venue: str | None = None,
) -> Item:
    """A trade; (venue, trade_id) identifies it (the flow's duplicate check uses both)."""
    rec = {
        "symbol": symbol,
        "ts_event_ms": ts_ms,
        "trade_id": trade_id,
        "px": px,
        "qty": qty,
        "side": side,
        "buyer": buyer,
        "seller": seller,
        "venue": venue,
    }
    return Item("trades", rec, ("trades", symbol, trade_id))


def candle_item(
    symbol: str, open_ms: int, o: float, h: float, lo: float, c: float, v: float
) -> Item:
    rec = {
        "symbol": symbol,
        "ts_event_ms": open_ms,
        "interval_ms": 60_000,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
    }
    return Item("candles", rec, ("candles", symbol, str(open_ms)))


def funding_item(symbol: str, ts_ms: int, rate: float) -> Item:
    rec = {"symbol": symbol, "ts_event_ms": ts_ms, "rate": rate}
    return Item("funding", rec, ("funding", symbol, str(ts_ms)))


def settlement_ms(ts_ms: int) -> int:
    """A funding time to its minute: venues stamp the same settlement a few ms apart."""
    return (ts_ms + 30_000) // 60_000 * 60_000


def capture_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(recv_ns, frame text) of each line of a capture (`.gz` or plain)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            stamp, sep, frame = line.rstrip("\n").partition(" ")
            if not sep or not stamp.isdigit():
                raise FrameError(f"{path}:{n}: not '<recv_ns> <frame json>'")
            yield int(stamp), frame


def capture_line(recv_ns: int, frame: str | bytes) -> str:
    text = frame.decode("utf-8", "backslashreplace") if isinstance(frame, bytes) else frame
    return f"{recv_ns} " + text.replace("\n", "\\n") + "\n"  # one frame, one line
