"""A venue's backfill after a long outage, against a stand-in for its REST answers (the
REST client itself is tests/test_live_rest.py): what it fetches, and the windows it could
not fetch reported as gaps that reach the present."""

from __future__ import annotations

import asyncio

import pytest

from marketdata.live.binance import KLINES_LIMIT, MAX_AGG_TRADE_PAGES, Binance
from marketdata.live.hyperliquid import Hyperliquid
from marketdata.live.venue import FeedPosition

MINUTE_MS = 60_000
T0 = 1723161240000  # a minute's start: the last event before the outage


class BinanceRest:
    """/fapi/v1 as Binance answers it: aggregate trade `a` at T0 + a * trade_every_ms, and
    1m klines up to the open one at `venue_now_ms`, at most `limit` of each."""

    def __init__(self, venue_now_ms: int, trade_every_ms: int) -> None:
        self.venue_now_ms = venue_now_ms
        self.every_ms = trade_every_ms

    async def get(self, path: str, params: dict, weight: int) -> list:
        limit = params["limit"]
        if path.endswith("aggTrades"):
            ids = range(params["fromId"], params["fromId"] + limit)
            times = [(a, T0 + a * self.every_ms) for a in ids]
            return [
                {"a": a, "p": "1", "q": "1", "T": t, "m": True}
                for a, t in times
                if t <= self.venue_now_ms
            ]
        if path.endswith("klines"):
            opens = range(
                params["startTime"] // MINUTE_MS * MINUTE_MS, self.venue_now_ms + 1, MINUTE_MS
            )
            return [[t, "1", "1", "1", "1", "1", t + MINUTE_MS - 1] for t in opens][:limit]
        return []  # fundingRate: none settled


def backfill(rest: BinanceRest, now_ms: int):
    pos = FeedPosition(T0, {"BTC-PERP": T0}, {"BTC-PERP": "0"})
    return asyncio.run(Binance().backfill(rest, ["BTC-PERP"], pos, now_ms))


def test_past_the_agg_trade_pages_the_trade_gap_runs_to_the_present_and_klines_are_kept():
    """A 30-minute outage at 50 trades a second: 90,000 trades, 20,000 fetched. The gap was
    zero-width at the 20,000th trade's time, and klines closing after it were dropped."""
    venue_now = T0 + 30 * MINUTE_MS + 15_000  # 15 s into the open kline
    now_ms = venue_now + 400  # our clock when the backfill starts
    out = backfill(BinanceRest(venue_now, trade_every_ms=20), now_ms)
    trades = [i for i in out.items if i.stream == "trades"]
    assert len(trades) == MAX_AGG_TRADE_PAGES * 1000
    last_fetched = max(i.record["ts_event_ms"] for i in trades)
    (gap,) = out.gaps
    assert (gap.stream, gap.from_ms, gap.to_ms) == ("trades", last_fetched, now_ms)
    candles = sorted(i.record["ts_event_ms"] for i in out.items if i.stream == "candles")
    assert candles == list(range(T0 - MINUTE_MS, T0 + 30 * MINUTE_MS, MINUTE_MS)), (
        "every closed kline; the open one is left to the live stream"
    )


def test_klines_past_the_limit_are_reported_as_a_candle_gap_to_the_present():
    """A 20-hour outage: one request returns 1000 klines (16 h 40 min); the rest were lost
    without a word."""
    venue_now = T0 + 20 * 60 * MINUTE_MS + 15_000
    now_ms = venue_now + 400
    out = backfill(BinanceRest(venue_now, trade_every_ms=MINUTE_MS), now_ms)
    candles = sorted(i.record["ts_event_ms"] for i in out.items if i.stream == "candles")
    assert len(candles) == KLINES_LIMIT
    (gap,) = out.gaps
    assert (gap.stream, gap.symbol) == ("candles", "BTC-PERP")
    assert (gap.from_ms, gap.to_ms) == (candles[-1] + MINUTE_MS, now_ms)


class HyperliquidInfo:
    """POST /info as Hyperliquid answers it: `recentTrades` gives these trade times."""

    def __init__(self, trade_ms: list[int]) -> None:
        self.trade_ms = trade_ms

    async def post(self, path: str, body: dict, weight: int) -> list:
        if body["type"] != "recentTrades":
            return []
        trade = {"coin": "BTC", "side": "B", "px": "1", "sz": "1", "hash": "0x0", "users": None}
        return [{**trade, "time": t, "tid": 1000 + n} for n, t in enumerate(self.trade_ms)]


@pytest.mark.parametrize(
    ("last_trade_ms", "recent_ms", "gap"),
    [
        # no trade of the symbol before the drop: the feed's last event is where it stood
        (None, [T0 + 5_000, T0 + 6_000], (T0, T0 + 5_000)),
        # the oldest row shares the last trade's millisecond: others of it may be cut off
        (T0 - 2_000, [T0 - 2_000, T0 + 6_000], (T0 - 2_000, T0 - 2_000)),
        (T0 - 2_000, [T0 - 2_001, T0 + 6_000], None),  # reaches back before it: covered
    ],
)
def test_hyperliquid_recent_trades_that_may_not_reach_back_are_a_trade_gap(
    last_trade_ms, recent_ms, gap
):
    last = {} if last_trade_ms is None else {"BTC-PERP": last_trade_ms}
    pos = FeedPosition(T0, last, {})
    out = asyncio.run(Hyperliquid().backfill(HyperliquidInfo(recent_ms), ["BTC-PERP"], pos, T0))
    got = [(g.stream, g.from_ms, g.to_ms) for g in out.gaps]
    assert got == ([] if gap is None else [("trades", *gap)])
