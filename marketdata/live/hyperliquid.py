"""Hyperliquid: WebSocket `trades` (with buyer and seller addresses), `candle` 1m and
`activeAssetCtx` funding; backfill over POST /info (candleSnapshot, recentTrades,
fundingHistory).

Hyperliquid closes a connection that has been idle for 60 s, so we send its application
ping (`{"method":"ping"}`, answered by `{"channel":"pong"}`) every 20 s. Candle frames are
updates of the open candle; a candle is closed when the first update of the next one
arrives. Funding settles every hour: the rate last seen in `activeAssetCtx` before an
hour boundary is published at that boundary; `fundingHistory` fills what was missed.
"""

from __future__ import annotations

import json

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

VENUE = "hyperliquid"
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# Known channels we do not publish (order book); they are counted, not dead-lettered.
IGNORED_CHANNELS = frozenset({"l2Book", "bbo", "allMids", "notification", "post"})
# Info request weights from Hyperliquid's rate-limit documentation.
INFO_WEIGHT = 20


def _symbol(coin: object, where: str) -> str:
    if not isinstance(coin, str):
        raise FrameError(f"{where}: field 'coin' must be a string, got {coin!r}")
    try:
        return ensemble_symbol(VENUE, coin)
    except UnknownSymbol as e:
        raise FrameError(f"{where}: {e}") from None


def parse_trade(t: object) -> Item:
    where = "hyperliquid trade"
    symbol = _symbol(need(t, "coin", where), where)
    side = need(t, "side", where)
    if side not in ("B", "A"):
        raise FrameError(f"{where}: field 'side' must be B or A, got {side!r}")
    users = t.get("users") if isinstance(t, dict) else None
    buyer = seller = None
    if users is not None:
        if not (
            isinstance(users, list) and len(users) == 2 and all(isinstance(u, str) for u in users)
        ):
            raise FrameError(f"{where}: field 'users' must be [buyer, seller], got {users!r}")
        buyer, seller = users
    return trade_item(
        symbol,
        integer(t, "time", where),
        str(integer(t, "tid", where)),
        positive(t, "px", where),
        positive(t, "sz", where),
        "buy" if side == "B" else "sell",  # B: the aggressor bought
        buyer,
        seller,
        VENUE,
    )


def parse_candle(c: object, where: str = "hyperliquid candle") -> tuple[str, int, Item]:
    symbol = _symbol(need(c, "s", where), where)
    interval = need(c, "i", where)
    if interval != "1m":
        raise FrameError(f"{where}: interval {interval!r}, subscribed to 1m only")
    open_ms = integer(c, "t", where)
    item = candle_item(
        symbol,
        open_ms,
        positive(c, "o", where),
        positive(c, "h", where),
        positive(c, "l", where),
        positive(c, "c", where),
        number(c, "v", where),
    )
    return symbol, open_ms, item


class HyperliquidParser:
    """One frame at a time; keeps the open candle and the last funding rate per symbol."""

    def __init__(self) -> None:
        self._open_candle: dict[str, tuple[int, Item]] = {}
        self._funding: dict[str, tuple[int, float]] = {}  # symbol -> (hour start, last rate)

    def parse(self, frame: str | bytes, recv_ms: int) -> Parsed:
        msg = load_json(frame)
        if not isinstance(msg, dict):
            raise FrameError(f"frame is a JSON {type(msg).__name__}, not an object")
        channel = msg.get("channel")
        data = msg.get("data")
        if channel == "trades":
            if not isinstance(data, list):
                raise FrameError("hyperliquid trades: 'data' must be a list")
            return Parsed("trades", [parse_trade(t) for t in data])
        if channel == "candle":
            return Parsed("candle", self._candle(data))
        if channel == "activeAssetCtx":
            return Parsed("activeAssetCtx", self._funding_update(data, recv_ms))
        if channel in ("pong", "subscriptionResponse"):
            return Parsed(channel)
        if channel in IGNORED_CHANNELS:
            return Parsed(channel)
        if channel == "error":
            raise FrameError(f"hyperliquid error frame: {str(data)[:200]}")
        raise FrameError(f"unknown hyperliquid channel {channel!r}")

    def _candle(self, data: object) -> list[Item]:
        symbol, open_ms, item = parse_candle(data)
        prev = self._open_candle.get(symbol)
        if prev is not None and open_ms < prev[0]:
            return []  # a late update of a candle already closed
        self._open_candle[symbol] = (open_ms, item)
        return [prev[1]] if prev is not None and open_ms > prev[0] else []

    def _funding_update(self, data: object, recv_ms: int) -> list[Item]:
        where = "hyperliquid activeAssetCtx"
        symbol = _symbol(need(data, "coin", where), where)
        rate = number(need(data, "ctx", where), "funding", where)
        hour = recv_ms - recv_ms % HOUR_MS  # the frame has no timestamp: receive time
        prev = self._funding.get(symbol)
        self._funding[symbol] = (hour, rate)
        if prev is not None and hour > prev[0]:
            return [funding_item(symbol, hour, prev[1])]  # settled at the boundary
        return []


class Hyperliquid:
    name = VENUE
    default_ws_url = "wss://api.hyperliquid.xyz/ws"
    default_rest_url = "https://api.hyperliquid.xyz"
    rest_weight_per_minute = 1200
    keepalive_interval_s = 20.0
    max_connection_age_s = 0.0  # no documented limit

    def ws_url(self, base: str, symbols: list[str]) -> str:
        return base

    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        out = []
        for symbol in symbols:
            coin = venue_symbol(symbol, VENUE)
            for sub in (
                {"type": "trades", "coin": coin},
                {"type": "candle", "coin": coin, "interval": "1m"},
                {"type": "activeAssetCtx", "coin": coin},
            ):
                out.append(json.dumps({"method": "subscribe", "subscription": sub}))
        return out

    def keepalive_message(self) -> str | None:
        return json.dumps({"method": "ping"})

    def parser(self) -> HyperliquidParser:
        return HyperliquidParser()

    async def backfill(
        self, rest: RestClient, symbols: list[str], pos: FeedPosition, now_ms: int
    ) -> Backfill:
        out = Backfill()
        since_ms = pos.last_event_ms
        for symbol in symbols:
            coin = venue_symbol(symbol, VENUE)
            trades = await rest.post("/info", {"type": "recentTrades", "coin": coin}, INFO_WEIGHT)
            items = [parse_trade(t) for t in trades or []]
            out.items += items
            venue_now = max([since_ms] + [i.record["ts_event_ms"] for i in items])
            # recentTrades holds only the latest trades. It covers the window only if it
            # reaches back before the last trade seen (or before the feed's last event, for
            # a symbol with no trade yet): a row in that same millisecond does not show that
            # none of that millisecond's trades were cut off before it.
            seen_to_ms = pos.last_trade_ms.get(symbol, since_ms)
            oldest = min((i.record["ts_event_ms"] for i in items), default=None)
            if oldest is not None and oldest >= seen_to_ms:
                reason = "recentTrades does not reach back before the last trade seen"
                out.gaps.append(Gap("trades", symbol, seen_to_ms, oldest, reason))
            req = {
                "coin": coin,
                "interval": "1m",
                "startTime": since_ms - MINUTE_MS,
                "endTime": venue_now,
            }
            candles = await rest.post("/info", {"type": "candleSnapshot", "req": req}, INFO_WEIGHT)
            for c in candles or []:
                _, open_ms, item = parse_candle(c, "hyperliquid candleSnapshot")
                if open_ms + MINUTE_MS <= venue_now:  # closed: the feed has moved past it
                    out.items.append(item)
            hist = await rest.post(
                "/info",
                {"type": "fundingHistory", "coin": coin, "startTime": since_ms - HOUR_MS},
                INFO_WEIGHT,
            )
            for f in hist or []:
                where = "hyperliquid fundingHistory"
                ts_ms = settlement_ms(integer(f, "time", where))
                out.items.append(funding_item(symbol, ts_ms, number(f, "fundingRate", where)))
        return out
