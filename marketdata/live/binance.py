"""Binance USDⓈ-M futures: the combined stream `aggTrade` (or `trade`), `kline_1m` and
`markPrice`; backfill over /fapi/v1/aggTrades (from the last id), /fapi/v1/klines and
/fapi/v1/fundingRate.

Binance pings every few minutes and closes a connection that does not answer (the
WebSocket library answers); it also closes every connection after 24 h, so we replace
ours after 23 h 50 min. The aggressor side comes from the maker flag `m` (the buyer was
the maker: a seller crossed). Only closed klines (`k.x`) are published. Funding: the
rate `r` last seen before the next funding time `T` moves on is published at that time.
"""

from __future__ import annotations

from marketdata.live.frames import (
    FrameError,
    Item,
    Parsed,
    candle_item,
    funding_item,
    integer,
    load_json,
    need,
    number,
    positive,
    settlement_ms,
    trade_item,
)
from marketdata.live.rest import RestClient
from marketdata.live.symbols import UnknownSymbol, ensemble_symbol, venue_symbol
from marketdata.live.venue import Backfill, FeedPosition, Gap

VENUE = "binance"
MINUTE_MS = 60_000
FUNDING_INTERVAL_MS = 8 * 3_600_000
IGNORED_EVENTS = frozenset({"depthUpdate", "bookTicker", "24hrTicker", "24hrMiniTicker"})
AGG_TRADES_LIMIT = 1000
MAX_AGG_TRADE_PAGES = 20  # 20,000 trades; beyond that the window is reported as a gap
KLINES_LIMIT = 1000  # 16 h 40 min of 1m klines; beyond that the window is reported as a gap
# Request weights from the Binance USDⓈ-M documentation.
WEIGHT_AGG_TRADES = 20
WEIGHT_KLINES_1000 = 5
WEIGHT_FUNDING_RATE = 1


def _symbol(s: object, where: str) -> str:
    if not isinstance(s, str):
        raise FrameError(f"{where}: field 's' must be a string, got {s!r}")
    try:
        return ensemble_symbol(VENUE, s)
    except UnknownSymbol as e:
        raise FrameError(f"{where}: {e}") from None


def _maker_flag(d: object, where: str) -> bool:
    m = need(d, "m", where)
    if not isinstance(m, bool):
        raise FrameError(f"{where}: field 'm' must be true or false, got {m!r}")
    return m


def parse_agg_trade(d: object, symbol: str | None = None, where: str = "binance aggTrade") -> Item:
    """An aggTrade event, or a REST /fapi/v1/aggTrades row (which has no symbol)."""
    symbol = symbol or _symbol(need(d, "s", where), where)
    return trade_item(
        symbol,
        integer(d, "T", where),
        str(integer(d, "a", where)),
        positive(d, "p", where),
        positive(d, "q", where),
        "sell" if _maker_flag(d, where) else "buy",  # the buyer made: a seller crossed
        venue=VENUE,
    )


def parse_trade(d: object) -> Item | None:
    """A `trade` event; None for non-market trades (insurance fund, ADL)."""
    where = "binance trade"
    if d.get("X", "MARKET") != "MARKET":
        return None
    return trade_item(
        _symbol(need(d, "s", where), where),
        integer(d, "T", where),
        str(integer(d, "t", where)),
        positive(d, "p", where),
        positive(d, "q", where),
        "sell" if _maker_flag(d, where) else "buy",
        venue=VENUE,
    )


def parse_kline_row(row: object, symbol: str) -> tuple[int, Item]:
    """A REST kline `[open_ms, o, h, l, c, v, close_ms, ...]` -> (close_ms, candle)."""
    where = "binance kline row"
    if not isinstance(row, list) or len(row) < 7:
        raise FrameError(f"{where}: expected [open, o, h, l, c, v, close, ...], got {row!r}")
    k = dict(zip("tohlcvT", row[:7], strict=True))
    return integer(k, "T", where), _kline_candle(k, symbol, where)


def _kline_candle(k: dict, symbol: str, where: str) -> Item:
    """The 1m candle of a kline's `t o h l c v` fields (WebSocket and REST name them alike)."""
    return candle_item(
        symbol,
        integer(k, "t", where),
        positive(k, "o", where),
        positive(k, "h", where),
        positive(k, "l", where),
        positive(k, "c", where),
        number(k, "v", where),
    )


class BinanceParser:
    """One frame at a time; keeps the last funding rate and next funding time per symbol."""

    def __init__(self) -> None:
        self._funding: dict[str, tuple[int, float]] = {}  # symbol -> (next funding ms, rate)

    def parse(self, frame: str | bytes, recv_ms: int) -> Parsed:
        msg = load_json(frame)
        if not isinstance(msg, dict):
            raise FrameError(f"frame is a JSON {type(msg).__name__}, not an object")
        if "result" in msg and "id" in msg:
            return Parsed("subscriptionResponse")
        d = msg.get("data", msg)  # combined stream {"stream", "data"} or a raw event
        if not isinstance(d, dict):
            raise FrameError("binance: 'data' must be an object")
        event = d.get("e")
        if event == "aggTrade":
            return Parsed("aggTrade", [parse_agg_trade(d)])
        if event == "trade":
            item = parse_trade(d)
            return Parsed("trade", [item] if item else [])
        if event == "kline":
            return Parsed("kline", self._kline(d))
        if event == "markPriceUpdate":
            return Parsed("markPriceUpdate", self._mark_price(d))
        if event in IGNORED_EVENTS:
            return Parsed(event)
        if event is None and "lastUpdateId" in d:  # an order-book snapshot in a capture
            return Parsed("depthSnapshot")
        if "code" in msg and "msg" in msg:
            raise FrameError(f"binance error frame: {str(msg)[:200]}")
        raise FrameError(f"unknown binance event {event!r}")

    def _kline(self, d: dict) -> list[Item]:
        where = "binance kline"
        symbol = _symbol(need(d, "s", where), where)
        k = need(d, "k", where)
        if need(k, "i", where) != "1m":
            raise FrameError(f"{where}: interval {k['i']!r}, subscribed to 1m only")
        closed = need(k, "x", where)
        if not isinstance(closed, bool):
            raise FrameError(f"{where}: field 'x' must be true or false, got {closed!r}")
        if not closed:
            return []
        return [_kline_candle(k, symbol, where)]

    def _mark_price(self, d: dict) -> list[Item]:
        where = "binance markPriceUpdate"
        symbol = _symbol(need(d, "s", where), where)
        rate = number(d, "r", where)
        next_ms = integer(d, "T", where)
        prev = self._funding.get(symbol)
        self._funding[symbol] = (next_ms, rate)
        if prev is not None and next_ms > prev[0]:
            return [funding_item(symbol, settlement_ms(prev[0]), prev[1])]  # settled at prev T
        return []


class Binance:
    name = VENUE
    default_ws_url = "wss://fstream.binance.com"
    default_rest_url = "https://fapi.binance.com"
    rest_weight_per_minute = 2400
    keepalive_interval_s = 0.0  # Binance pings; the WebSocket library answers
    max_connection_age_s = 23 * 3600 + 50 * 60

    def ws_url(self, base: str, symbols: list[str]) -> str:
        streams = []
        for symbol in symbols:
            s = venue_symbol(symbol, VENUE).lower()
            streams += [f"{s}@aggTrade", f"{s}@kline_1m", f"{s}@markPrice@1s"]
        return f"{base.rstrip('/')}/stream?streams={'/'.join(streams)}"

    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        return []  # the combined-stream URL subscribes

    def keepalive_message(self) -> str | None:
        return None

    def parser(self) -> BinanceParser:
        return BinanceParser()

    async def backfill(
        self, rest: RestClient, symbols: list[str], pos: FeedPosition, now_ms: int
    ) -> Backfill:
        out = Backfill()
        since_ms = pos.last_event_ms
        for symbol in symbols:
            name = venue_symbol(symbol, VENUE)
            venue_now = await self._agg_trades(rest, symbol, name, pos, now_ms, out)
            rows = await rest.get(
                "/fapi/v1/klines",
                {
                    "symbol": name,
                    "interval": "1m",
                    "startTime": since_ms - MINUTE_MS,
                    "limit": KLINES_LIMIT,
                },
                WEIGHT_KLINES_1000,
            )
            rows = rows or []
            kept_to_ms = since_ms  # the klines before this are published or kept here
            for n, row in enumerate(rows):
                close_ms, item = parse_kline_row(row, symbol)
                # One followed by another has closed. The last has if a trade came after
                # its close; else it is the open kline, which the live stream (subscribed
                # before this backfill) closes.
                if n < len(rows) - 1 or close_ms < venue_now:
                    out.items.append(item)
                    kept_to_ms = max(kept_to_ms, close_ms + 1)
            if len(rows) == KLINES_LIMIT and kept_to_ms < now_ms:  # the rest was not asked for
                reason = f"more than {KLINES_LIMIT} klines: the later ones were not fetched"
                out.gaps.append(Gap("candles", symbol, kept_to_ms, now_ms, reason))
            rates = await rest.get(
                "/fapi/v1/fundingRate",
                {"symbol": name, "startTime": since_ms - FUNDING_INTERVAL_MS, "limit": 1000},
                WEIGHT_FUNDING_RATE,
            )
            for f in rates or []:
                where = "binance fundingRate"
                ts_ms = settlement_ms(integer(f, "fundingTime", where))
                out.items.append(funding_item(symbol, ts_ms, number(f, "fundingRate", where)))
        return out

    async def _agg_trades(
        self,
        rest: RestClient,
        symbol: str,
        name: str,
        pos: FeedPosition,
        now_ms: int,
        out: Backfill,
    ) -> int:
        """Every aggregate trade after the last one seen, up to MAX_AGG_TRADE_PAGES pages;
        returns the newest event time fetched. Beyond the pages, the trades from the last
        one fetched to `now_ms` (the backfill's start on our clock) are a gap."""
        venue_now = pos.last_event_ms
        last_id = pos.last_trade_id.get(symbol)
        params: dict[str, object] = {"symbol": name, "limit": AGG_TRADES_LIMIT}
        if last_id is not None and last_id.isdigit():
            params["fromId"] = int(last_id) + 1
        else:
            params["startTime"] = pos.last_event_ms
        for _ in range(MAX_AGG_TRADE_PAGES):
            rows = await rest.get("/fapi/v1/aggTrades", params, WEIGHT_AGG_TRADES)
            items = [parse_agg_trade(r, symbol, "binance aggTrades row") for r in rows or []]
            out.items += items
            if items:
                venue_now = max(venue_now, max(i.record["ts_event_ms"] for i in items))
            if len(items) < AGG_TRADES_LIMIT:
                return venue_now
            params = {"symbol": name, "limit": AGG_TRADES_LIMIT}
            params["fromId"] = int(items[-1].record["trade_id"]) + 1
        reason = f"more than {MAX_AGG_TRADE_PAGES} pages of aggTrades: the later ones not fetched"
        out.gaps.append(Gap("trades", symbol, venue_now, max(venue_now, now_ms), reason))
        return venue_now
