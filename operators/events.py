"""Input events of the dataflow, and the validation that turns a decoded record into one.

A record that fails validation raises `InvalidRecord` with a reason a person can act on;
the dataflow turns that into a dead letter. Nothing here knows about Kafka or files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from schemas.codec import SchemaError
from schemas.codec import decode as avro_decode
from schemas.columns import Texts

# Event times outside this range are certainly wrong (before Bitcoin, after 2100).
MIN_TS_MS = 1_230_768_000_000  # 2009-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01

BUY = 1
SELL = -1

CONTROL_COMMANDS = ("halt", "resume", "reset_kill_switch", "shadow_on", "shadow_off")
OVERLAY_TIMEFRAMES = ("15m", "1h")
CANDLE_INTERVALS_MS = (60_000, 300_000)
MAX_ADDRESS_CHARS = 128  # an on-chain address is 42; a longer one is garbage or an attack


class InvalidRecord(ValueError):
    """A record that cannot be used; the message is the dead-letter reason."""


@dataclass(slots=True)
class Trade:
    symbol: str
    ts_event_ms: int
    px: float
    qty: float
    side: int  # +1 the aggressor bought, -1 the aggressor sold
    trade_id: str
    buyer: str | None = None
    seller: str | None = None
    venue: str | None = None  # with trade_id, the trade's identity
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from


class TradeBlock:
    """Consecutive ordinary trades of one symbol from one input, column by column (issue 16):
    a file's block, or a Kafka partition's run, whose every row passed the trade rules,
    of one venue. The market step folds it with array arithmetic (`MarketState.on_events`)
    and gives exactly what the same `Trade`s one by one give; `trades` builds those
    `Trade`s for whatever takes the per-record way. `buyer` and `seller` are None when no
    row has an address. `ts_event_ms` is the block's latest event time (what the steps
    before the market read of a batch)."""

    __slots__ = (
        "symbol", "ts", "px", "qty", "side", "trade_id", "venue", "part", "ts_event_ms",
        "buyer", "seller",
    )  # fmt: skip

    def __init__(
        self,
        symbol: str,
        ts: np.ndarray,
        px: np.ndarray,
        qty: np.ndarray,
        side: np.ndarray,
        trade_id: list[str],
        venue: str | None,
        part: str | None = None,
        buyer: list[str | None] | None = None,
        seller: list[str | None] | None = None,
    ) -> None:
        self.symbol, self.ts, self.px, self.qty, self.side = symbol, ts, px, qty, side
        self.trade_id, self.venue, self.part = trade_id, venue, part
        self.buyer, self.seller = buyer, seller
        self.ts_event_ms = int(ts.max())

    def __len__(self) -> int:
        return len(self.trade_id)

    def __repr__(self) -> str:  # an error record names the block, not a million numbers
        return (
            f"TradeBlock({self.symbol!r}, {len(self)} trades, event times "
            f"{int(self.ts[0])}..{self.ts_event_ms}, ids {self.trade_id[0]!r}.."
            f"{self.trade_id[-1]!r})"
        )

    def trades(self, start: int = 0, stop: int | None = None) -> list[Trade]:
        """Rows `start` to `stop` as the `Trade`s `trades_from_columns` builds of them."""
        sym, venue, part = self.symbol, self.venue, self.part
        n = len(self.trade_id[start:stop])
        out = [
            Trade(sym, t, p, q, s, i, b, se, venue)
            for t, p, q, s, i, b, se in zip(
                self.ts[start:stop].tolist(),
                self.px[start:stop].tolist(),
                self.qty[start:stop].tolist(),
                self.side[start:stop].tolist(),
                self.trade_id[start:stop],
                repeat(None, n) if self.buyer is None else self.buyer[start:stop],
                repeat(None, n) if self.seller is None else self.seller[start:stop],
                strict=True,
            )
        ]
        if part is not None:
            for t in out:
                t.part = part
        return out


def expand_blocks(events: list[Any]) -> list[Any]:
    """`events` with each TradeBlock replaced by its `Trade`s, for a per-record path."""
    if not any(type(e) is TradeBlock for e in events):
        return events
    out: list[Any] = []
    for e in events:
        if type(e) is TradeBlock:
            out += e.trades()
        else:
            out.append(e)
    return out


@dataclass(slots=True)
class Candle:
    symbol: str
    ts_event_ms: int  # bar open
    interval_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from


@dataclass(slots=True)
class Funding:
    symbol: str
    ts_event_ms: int
    rate: float  # per funding interval, as a fraction; longs pay when positive
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from


@dataclass(slots=True)
class OverlaySignal:
    symbol: str
    ts_event_ms: int
    timeframe: str
    signal: float  # [-1, 1]
    confidence: float  # [0, 1]
    source: str
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from


@dataclass(slots=True)
class CohortSnapshot:
    symbol: str
    ts_event_ms: int
    s_top: float
    s_bot: float
    s_mood: float
    source: str
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from


@dataclass(slots=True)
class ControlCommand:
    symbol: str  # a symbol, or "*" for every symbol
    ts_event_ms: int
    command: str
    operator: str
    reason: str
    command_id: str
    strategy_id: str = "ensemble_1_1"
    signature: str = ""  # base64 Ed25519 over operators.commands.canonical_bytes
    signer: str = ""  # set once verified: operator/key fingerprint, kept in the audit
    part: str | None = field(default=None, compare=False, repr=False)  # input partition read from

    def signed_fields(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "ts_event_ms": self.ts_event_ms,
            "strategy_id": self.strategy_id,
            "command": self.command,
            "operator": self.operator,
            "reason": self.reason,
            "command_id": self.command_id,
        }

    def with_signer(self, signer: str) -> ControlCommand:
        return dataclasses.replace(self, signer=signer)


Event = Trade | Candle | Funding | OverlaySignal | CohortSnapshot | ControlCommand


def _field(rec: dict[str, Any], name: str) -> Any:
    if name not in rec or rec[name] is None:
        raise InvalidRecord(f"missing field '{name}'")
    return rec[name]


def _int(rec: dict[str, Any], name: str) -> int:
    v = _field(rec, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRecord(f"field '{name}' must be an integer, got {type(v).__name__} {v!r}")
    return v


def _float(rec: dict[str, Any], name: str) -> float:
    v = _field(rec, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidRecord(f"field '{name}' must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise InvalidRecord(f"field '{name}' must be finite, got {v!r}")
    return v


def _positive(rec: dict[str, Any], name: str) -> float:
    v = _float(rec, name)
    if v <= 0.0:
        raise InvalidRecord(f"field '{name}' must be > 0, got {v!r}")
    return v


def _str(rec: dict[str, Any], name: str) -> str:
    v = _field(rec, name)
    if not isinstance(v, str) or not v:
        raise InvalidRecord(f"field '{name}' must be a non-empty string, got {v!r}")
    return v


def _opt_str(rec: dict[str, Any], name: str) -> str | None:
    v = rec.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidRecord(f"field '{name}' must be a string or null, got {v!r}")
    return v or None


def _address(rec: dict[str, Any], name: str) -> str | None:
    v = _opt_str(rec, name)
    if v is not None and len(v) > MAX_ADDRESS_CHARS:
        raise InvalidRecord(
            f"field '{name}' is {len(v)} characters long; an address has at most "
            f"{MAX_ADDRESS_CHARS} ({v[:20]!r}...)"
        )
    return v


def _bounded(rec: dict[str, Any], name: str, lo: float, hi: float) -> float:
    v = _float(rec, name)
    if not lo <= v <= hi:
        raise InvalidRecord(f"field '{name}' must be in [{lo}, {hi}], got {v!r}")
    return v


def _ts(rec: dict[str, Any]) -> int:
    ts = _int(rec, "ts_event_ms")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidRecord(f"ts_event_ms {ts} is not an epoch-millisecond time in 2009..2100")
    return ts


def check_not_future(ts_ms: int, now_ms: int, max_skew_ms: int) -> None:
    """Event time far beyond the wall clock would close every open bar: refuse it."""
    if ts_ms > now_ms + max_skew_ms:
        raise InvalidRecord(
            f"ts_event_ms {ts_ms} is {(ts_ms - now_ms) / 1000:.0f} s in the "
            f"future (allowed clock skew {max_skew_ms / 1000:.0f} s)"
        )


def _symbol(rec: dict[str, Any], symbols: frozenset[str], allow_all: bool = False) -> str:
    s = _str(rec, "symbol")
    if s in symbols or (allow_all and s == "*"):
        return s
    raise InvalidRecord(f"unknown symbol {s!r}; this run trades {sorted(symbols)}")


def _ordinary_trade(rec: dict[str, Any], symbols: frozenset[str]) -> Trade | None:
    """The trade, if every field has its ordinary type and value (float prices, int time,
    str ids); None sends the record through `parse_trade`'s field-by-field checks, which
    give the reason. The same rules: this path only accepts what those checks accept."""
    get = rec.get
    sym, ts, px, qty, side = get("symbol"), get("ts_event_ms"), get("px"), get("qty"), get("side")
    tid, buyer, seller, venue = get("trade_id"), get("buyer"), get("seller"), get("venue")
    if (
        type(sym) is str
        and sym in symbols
        and type(ts) is int
        and MIN_TS_MS <= ts < MAX_TS_MS
        and type(px) is float
        and 0.0 < px < math.inf
        and type(qty) is float
        and 0.0 < qty < math.inf
        and (side == "buy" or side == "sell")
        and type(tid) is str
        and tid
        and (buyer is None or (type(buyer) is str and len(buyer) <= MAX_ADDRESS_CHARS))
        and (seller is None or (type(seller) is str and len(seller) <= MAX_ADDRESS_CHARS))
        and (venue is None or type(venue) is str)
    ):
        side_sign = BUY if side == "buy" else SELL
        return Trade(sym, ts, px, qty, side_sign, tid, buyer or None, seller or None, venue or None)
    return None


def parse_trade(rec: dict[str, Any], symbols: frozenset[str]) -> Trade:
    trade = _ordinary_trade(rec, symbols)
    if trade is not None:
        return trade
    side = _str(rec, "side")
    if side not in ("buy", "sell"):
        raise InvalidRecord(f"field 'side' must be 'buy' or 'sell', got {side!r}")
    return Trade(
        symbol=_symbol(rec, symbols),
        ts_event_ms=_ts(rec),
        px=_positive(rec, "px"),
        qty=_positive(rec, "qty"),
        side=BUY if side == "buy" else SELL,
        trade_id=_str(rec, "trade_id"),
        buyer=_address(rec, "buyer"),
        seller=_address(rec, "seller"),
        venue=_opt_str(rec, "venue"),
    )


def parse_candle(rec: dict[str, Any], symbols: frozenset[str]) -> Candle:
    c = Candle(
        symbol=_symbol(rec, symbols),
        ts_event_ms=_ts(rec),
        interval_ms=_int(rec, "interval_ms"),
        open=_positive(rec, "open"),
        high=_positive(rec, "high"),
        low=_positive(rec, "low"),
        close=_positive(rec, "close"),
        volume=_float(rec, "volume"),
    )
    if c.interval_ms not in CANDLE_INTERVALS_MS:
        raise InvalidRecord(
            f"candles must be 1m or 5m (interval_ms 60000 or 300000), got {c.interval_ms}"
        )
    if c.ts_event_ms % c.interval_ms:
        raise InvalidRecord(f"candle open {c.ts_event_ms} is not on a {c.interval_ms} ms boundary")
    if c.volume < 0:
        raise InvalidRecord(f"field 'volume' must be >= 0, got {c.volume!r}")
    if not c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high:
        raise InvalidRecord(
            f"candle is inconsistent: low {c.low} open {c.open} close {c.close} high {c.high}"
        )
    return c


def parse_funding(rec: dict[str, Any], symbols: frozenset[str]) -> Funding:
    return Funding(
        symbol=_symbol(rec, symbols),
        ts_event_ms=_ts(rec),
        rate=_bounded(rec, "rate", -0.05, 0.05),
    )


def parse_overlay(rec: dict[str, Any], symbols: frozenset[str]) -> OverlaySignal:
    tf = _str(rec, "timeframe")
    if tf not in OVERLAY_TIMEFRAMES:
        raise InvalidRecord(f"field 'timeframe' must be one of {OVERLAY_TIMEFRAMES}, got {tf!r}")
    return OverlaySignal(
        symbol=_symbol(rec, symbols),
        ts_event_ms=_ts(rec),
        timeframe=tf,
        signal=_bounded(rec, "signal", -1.0, 1.0),
        confidence=_bounded(rec, "confidence", 0.0, 1.0),
        source=_opt_str(rec, "source") or "external",
    )


def parse_cohort(rec: dict[str, Any], symbols: frozenset[str]) -> CohortSnapshot:
    return CohortSnapshot(
        symbol=_symbol(rec, symbols),
        ts_event_ms=_ts(rec),
        s_top=_bounded(rec, "s_top", -1.0, 1.0),
        s_bot=_bounded(rec, "s_bot", -1.0, 1.0),
        s_mood=_bounded(rec, "s_mood", -1.0, 1.0),
        source=_opt_str(rec, "source") or "external",
    )


def parse_control(rec: dict[str, Any], symbols: frozenset[str]) -> ControlCommand:
    cmd = _str(rec, "command")
    if cmd not in CONTROL_COMMANDS:
        raise InvalidRecord(f"field 'command' must be one of {CONTROL_COMMANDS}, got {cmd!r}")
    return ControlCommand(
        symbol=_symbol(rec, symbols, allow_all=True),
        ts_event_ms=_ts(rec),
        command=cmd,
        operator=_str(rec, "operator"),
        reason=_str(rec, "reason"),
        command_id=_str(rec, "command_id"),
        strategy_id=_opt_str(rec, "strategy_id") or "ensemble_1_1",
        signature=_opt_str(rec, "signature") or "",
    )


# Input stream name -> (Avro schema name, parser).
PARSERS = {
    "trades": ("trade", parse_trade),
    "candles": ("candle", parse_candle),
    "funding": ("funding", parse_funding),
    "overlays": ("overlay_signal", parse_overlay),
    "cohorts": ("cohort_snapshot", parse_cohort),
    "control": ("control_command", parse_control),
}


def _framing_hint(payload: bytes) -> str:
    """What a payload that does not decode looks like, when it looks like Avro in the
    Confluent Schema Registry's framing (magic byte 0, a 4-byte schema id), which a
    producer with a registry serializer sends: the flow reads Avro without framing."""
    if len(payload) > 5 and payload[0] == 0:
        schema_id = int.from_bytes(payload[1:5], "big")
        return (
            f" (it starts like Schema Registry framing: magic byte 0, schema id {schema_id};"
            " the input topics carry Avro without framing)"
        )
    return ""


def decode(
    stream: str,
    payload: bytes | dict[str, Any],
    symbols: frozenset[str],
    now_ms: int,
    max_clock_skew_ms: int,
) -> Event:
    """Avro bytes or a record dict from input `stream` -> a validated event.

    Raises InvalidRecord with the dead-letter reason.
    """
    entry = PARSERS.get(stream)
    if entry is None:
        raise InvalidRecord(f"unknown input stream {stream!r}; known: {sorted(PARSERS)}")
    schema_name, parse = entry
    if isinstance(payload, (bytes, bytearray)):
        if not payload:
            raise InvalidRecord(
                "undecodable: empty payload (a tombstone, a null value, or an empty message)"
            )
        try:
            rec = avro_decode(schema_name, bytes(payload))
        except SchemaError as e:
            raise InvalidRecord(f"undecodable: {e}{_framing_hint(bytes(payload))}") from None
    elif isinstance(payload, dict):
        rec = payload
    else:
        raise InvalidRecord(
            f"undecodable: payload is {type(payload).__name__}, not Avro bytes or a record"
        )
    event = parse(rec, symbols)
    check_not_future(event.ts_event_ms, now_ms, max_clock_skew_ms)
    return event


# -- whole columns at once -----------------------------------------------------------------
# The same rules as parse_trade / parse_candle / check_not_future, over the columns of a
# block of records (numbers as numpy arrays). A row they pass is built directly; a row they
# do not pass is None, and the caller decodes that row alone with `decode`, which gives
# its dead-letter reason (or, should it disagree, the event: no row is lost either way).


def _texts_ok(values: list[Any] | str | None, optional: bool, max_chars: int | None) -> Any:
    """Per row (or for every row): a str (non-empty unless optional; at most `max_chars`),
    or None if optional."""
    if not isinstance(values, list):
        v = values
        ok = (v is None and optional) or (isinstance(v, str) and (optional or v != ""))
        return ok and (max_chars is None or v is None or len(v) <= max_chars)
    types = set(map(type, values))
    if types == {type(None)}:  # a column the source does not have (addresses in a file)
        return optional
    if types <= {str}:  # the usual case: count characters in one pass
        n = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        ok = np.ones(len(values), dtype=bool) if optional else n > 0
        return ok if max_chars is None else ok & (n <= max_chars)
    return np.fromiter(
        (
            (v is None and optional)
            or (
                isinstance(v, str)
                and (optional or v != "")
                and (max_chars is None or len(v) <= max_chars)
            )
            for v in values
        ),
        dtype=bool,
        count=len(values),
    )


def _times_ok(ts: np.ndarray, now_ms: int, max_clock_skew_ms: int) -> np.ndarray:
    return (ts >= MIN_TS_MS) & (ts < MAX_TS_MS) & (ts <= now_ms + max_clock_skew_ms)


def _positive_ok(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (x > 0.0)


def _rows(values: Any, n: int) -> Any:
    return values if isinstance(values, list) else repeat(values, n)


def _addresses(values: list[Any] | str | None, n: int) -> list[str | None] | None:
    """A valid address column as one entry per row (None: no row has an address)."""
    if isinstance(values, list):
        rows = [v or None for v in values]
        return rows if rows.count(None) < n else None
    return [values] * n if values else None


def trades_from_columns(
    c: dict[str, Any], n: int, symbols: frozenset[str], now_ms: int, max_clock_skew_ms: int
) -> list[Any]:
    """Trades from columns (`ts_event_ms` int64, `px` and `qty` float64 arrays; the text
    fields lists, or one value for all `n` rows); None for a row that breaks a rule. A
    block of rows that all pass, of one venue, is one TradeBlock."""
    symbol = c["symbol"]
    if not (isinstance(symbol, str) and symbol in symbols):
        return [None] * n
    ts, px, qty = c["ts_event_ms"], c["px"], c["qty"]
    side = np.array(c["side"], dtype=object) if isinstance(c["side"], list) else c["side"]
    buy = side == "buy"
    ok = (
        _times_ok(ts, now_ms, max_clock_skew_ms)
        & _positive_ok(px)
        & _positive_ok(qty)
        & (buy | (side == "sell"))
        & _texts_ok(c["trade_id"], False, None)
        & _texts_ok(c.get("buyer"), True, MAX_ADDRESS_CHARS)
        & _texts_ok(c.get("seller"), True, MAX_ADDRESS_CHARS)
        & _texts_ok(c.get("venue"), True, None)
    )
    ok = np.broadcast_to(ok, (n,))
    venue = c.get("venue")
    if isinstance(venue, list) and venue and venue.count(venue[0]) == n:
        venue = venue[0]  # one venue, row by row
    if (
        n > 0
        and isinstance(ts, np.ndarray)
        and isinstance(c["trade_id"], list)
        and not isinstance(venue, list)
        and ok.all()
    ):
        side_codes = np.broadcast_to(np.where(buy, BUY, SELL), (n,))
        buyer, seller = _addresses(c.get("buyer"), n), _addresses(c.get("seller"), n)
        return [
            TradeBlock(
                symbol, ts, px, qty, side_codes, c["trade_id"], venue or None, None, buyer, seller
            )
        ]
    sides = np.broadcast_to(np.where(buy, BUY, SELL), (n,)).tolist()
    return [
        Trade(symbol, t, p, q, s, i, b or None, se or None, v or None) if good else None
        for good, t, p, q, s, i, b, se, v in zip(
            ok.tolist(),
            ts.tolist(),
            px.tolist(),
            qty.tolist(),
            sides,
            _rows(c["trade_id"], n),
            _rows(c.get("buyer"), n),
            _rows(c.get("seller"), n),
            _rows(c.get("venue"), n),
            strict=False,  # `repeat` is endless
        )
    ]


def trade_columns(symbol: str, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded trade records (Avro, from Kafka) of one symbol as the columns
    `trades_from_columns` reads (it finds a venue shared by every row itself)."""
    texts = ("side", "trade_id", "buyer", "seller", "venue")
    return {
        "symbol": symbol,
        "ts_event_ms": np.array([r.get("ts_event_ms") for r in recs], dtype=np.int64),
        "px": np.array([r.get("px") for r in recs], dtype=np.float64),
        "qty": np.array([r.get("qty") for r in recs], dtype=np.float64),
        **{name: [r.get(name) for r in recs] for name in texts},
    }


def avro_trade_columns(cols: dict[str, Any]) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Trade messages decoded as Avro columns (schemas/columns.py), each symbol's as the
    columns `trades_from_columns` reads (what `trade_columns` makes of the same messages
    decoded one by one), with the rows they came from, in order."""
    symbol_col: Texts = cols["symbol"]
    n = len(symbol_col.size)
    first = symbol_col.first()
    if symbol_col.equal(first).all():  # a partition's run: usually one symbol
        groups = {first: np.arange(n)}
    else:
        rows: dict[Any, list[int]] = {}
        for i, s in enumerate(symbol_col.tolist()):
            rows.setdefault(s, []).append(i)
        groups = {s: np.array(r) for s, r in rows.items()}
    out = {}
    for symbol, idx in groups.items():
        whole = len(idx) == n
        text: dict[str, Texts] = {
            k: cols[k] if whole else cols[k].take(idx)
            for k in ("side", "trade_id", "buyer", "seller", "venue")
        }
        buy, sell = text["side"].equal("buy"), text["side"].equal("sell")
        side: Any = np.where(buy, "buy", "sell") if (buy | sell).all() else text["side"].tolist()
        out[symbol] = (
            {
                "symbol": symbol,
                **{k: cols[k] if whole else cols[k][idx] for k in ("ts_event_ms", "px", "qty")},
                "side": side,
                "trade_id": text["trade_id"].tolist(),
                **{
                    k: None if text[k].all_null() else text[k].tolist()
                    for k in ("buyer", "seller", "venue")
                },
            },
            idx,
        )
    return out


def candles_from_columns(
    c: dict[str, Any], n: int, symbols: frozenset[str], now_ms: int, max_clock_skew_ms: int
) -> list[Candle | None]:
    """Candles from columns (`ts_event_ms` int64, open..volume float64 arrays,
    `interval_ms` one int for all rows); None for a row that breaks a rule."""
    symbol, interval = c["symbol"], c["interval_ms"]
    if not (isinstance(symbol, str) and symbol in symbols) or interval not in CANDLE_INTERVALS_MS:
        return [None] * n
    ts, o, h, lo, cl, v = (c[k] for k in ("ts_event_ms", "open", "high", "low", "close", "volume"))
    ok = (
        _times_ok(ts, now_ms, max_clock_skew_ms)
        & (ts % interval == 0)
        & _positive_ok(o)
        & _positive_ok(h)
        & _positive_ok(lo)
        & _positive_ok(cl)
        & np.isfinite(v)
        & (v >= 0.0)
        & (lo <= np.minimum(o, cl))
        & (np.maximum(o, cl) <= h)
    )
    return [
        Candle(symbol, t, interval, op, hi, low, close, vol) if good else None
        for good, t, op, hi, low, close, vol in zip(
            ok.tolist(),
            ts.tolist(),
            o.tolist(),
            h.tolist(),
            lo.tolist(),
            cl.tolist(),
            v.tolist(),
            strict=True,
        )
    ]


FROM_COLUMNS = {"trades": trades_from_columns, "candles": candles_from_columns}
