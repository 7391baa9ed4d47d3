"""Local venue servers on 127.0.0.1 that speak Hyperliquid's and Binance USDⓈ-M's protocols.

WebSocket (the `websockets` server): subscribe and its acknowledgement, Hyperliquid's
application ping/pong, Binance's combined-stream URL and protocol pings, and the frames of
a real capture in ../shared/data/ws/ replayed byte for byte. The captures hold trades only,
so 1m candle frames (Hyperliquid `candle` updates, Binance `kline` with the closed flag) are
built here from the captured trades, the way the venues build theirs.

REST (aiohttp): Hyperliquid POST /info (recentTrades, candleSnapshot, fundingHistory) and
Binance /fapi/v1/aggTrades (each captured trade an aggregate of one, a = trade id),
/fapi/v1/klines and /fapi/v1/fundingRate, with the X-MBX-USED-WEIGHT-1M header. REST
answers only what has "happened": trades up to the server's position in the capture.

A `Script` makes the server misbehave: end the first connection after N frames by dropping
it (no close frame) or by going silent (no frames, no pongs), skip frames while the client
is away (the missed window the backfill must recover), and send malformed frames.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ws"
HL_CAPTURE = DATA / "hyperliquid_ws_BTC_2025-01-26.jsonl.gz"
BINANCE_CAPTURE = DATA / "binance_usdm_ws_btcusdt_2024-08-08.jsonl.gz"
MINUTE_MS = 60_000


def capture_or_skip(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"needs the real capture {path} (../shared/data beside the checkout)")
    return path


@dataclass(frozen=True)
class VenueTrade:
    ts_ms: int
    tid: int
    px: str
    sz: str
    aggressor_buys: bool
    users: list[str] | None


@dataclass
class Frame:
    ts_ms: int  # venue time of the frame
    text: str | bytes
    trades: list[VenueTrade] = field(default_factory=list)


@dataclass
class Script:
    cut_after: int | None = None  # frames sent on the first connection, then...
    cut_mode: str = "drop"  # ... "drop" the TCP connection, or go "silent"
    skip: int = 0  # frames the client misses while it is away
    malformed: dict[int, list[str | bytes]] = field(default_factory=dict)  # before frame i
    pace_s: float = 0.0  # pause between frames
    recent_trades: int = 100  # what Hyperliquid's recentTrades returns at most
    funding: list[tuple[int, str]] = field(default_factory=list)  # settled (ms, rate) for REST
    rest_retry_after_s: float | None = None  # Hyperliquid /info answers 429, this Retry-After


def _candle(trades: list[VenueTrade]) -> dict[str, Any]:
    pxs = [float(t.px) for t in trades]
    return {
        "t": trades[0].ts_ms - trades[0].ts_ms % MINUTE_MS,
        "o": trades[0].px,
        "h": repr(max(pxs)),
        "l": repr(min(pxs)),
        "c": trades[-1].px,
        "v": repr(round(sum(float(t.sz) for t in trades), 8)),
        "n": len(trades),
    }


def load_frames(venue: str, path: Path) -> list[Frame]:
    """The capture's trade frames in order, with the candle frames the venue would send."""
    frames: list[Frame] = []
    minute_trades: list[VenueTrade] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            _, _, text = line.rstrip("\n").partition(" ")
            msg = json.loads(text)
            if venue == "hyperliquid" and msg.get("channel") == "trades":
                trades = [
                    VenueTrade(t["time"], t["tid"], t["px"], t["sz"], t["side"] == "B", t["users"])
                    for t in msg["data"]
                ]
            elif venue == "binance" and (msg.get("data") or {}).get("e") == "trade":
                d = msg["data"]
                if d.get("X", "MARKET") != "MARKET":
                    continue
                trades = [VenueTrade(d["T"], d["t"], d["p"], d["q"], not d["m"], None)]
            else:
                continue
            ts = trades[-1].ts_ms
            frames.append(Frame(ts, text, trades))
            for t in trades:
                if minute_trades and t.ts_ms // MINUTE_MS > minute_trades[0].ts_ms // MINUTE_MS:
                    closed = _candle(minute_trades)  # the minute's final state
                    if venue == "binance":
                        frames.append(Frame(ts, _kline_frame(closed, closed=True)))
                    else:
                        frames.append(Frame(ts, _hl_candle_frame(closed)))
                    minute_trades = []
                minute_trades.append(t)
            if venue == "hyperliquid":  # an update of the open candle after every trade
                frames.append(Frame(ts, _hl_candle_frame(_candle(minute_trades))))
            elif len(minute_trades) == 1:  # one open-kline update per minute
                frames.append(Frame(ts, _kline_frame(_candle(minute_trades), closed=False)))
    return frames


def _hl_candle_frame(c: dict[str, Any]) -> str:
    data = {**c, "T": c["t"] + MINUTE_MS - 1, "s": "BTC", "i": "1m"}
    return json.dumps({"channel": "candle", "data": data}, separators=(",", ":"))


def _kline_frame(c: dict[str, Any], closed: bool) -> str:
    k = {
        "t": c["t"],
        "T": c["t"] + MINUTE_MS - 1,
        "s": "BTCUSDT",
        "i": "1m",
        "o": c["o"],
        "c": c["c"],
        "h": c["h"],
        "l": c["l"],
        "v": c["v"],
        "n": c["n"],
        "x": closed,
    }
    data = {"e": "kline", "E": c["t"] + MINUTE_MS, "s": "BTCUSDT", "k": k}
    return json.dumps({"stream": "btcusdt@kline_1m", "data": data}, separators=(",", ":"))


class VenueServer:
    """One venue on two ports of 127.0.0.1; run it with `with VenueServer(...) as server:`."""

    def __init__(self, venue: str, frames: list[Frame], script: Script | None = None) -> None:
        self.venue = venue
        self.frames = frames
        self.script = script or Script()
        self.cursor = 0  # frames that have "happened"
        self.connections = 0
        self.sent = 0  # frames sent over WebSockets, malformed ones included
        self.sent_per_connection: list[int] = []
        self.paths: list[str] = []
        self.subscriptions: list[dict[str, Any]] = []
        self.pings = 0
        self.rest_calls: list[tuple[str, dict[str, Any]]] = []
        self.weight_used = 0
        self.done = threading.Event()  # every frame sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.ws_url = self.rest_url = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> VenueServer:
        self._thread = threading.Thread(target=self._run, name=f"{self.venue}-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("venue server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        if self.venue == "hyperliquid":
            app.router.add_post("/info", self._hl_info)
        else:
            app.router.add_get("/fapi/v1/aggTrades", self._bn_agg_trades)
            app.router.add_get("/fapi/v1/klines", self._bn_klines)
            app.router.add_get("/fapi/v1/fundingRate", self._bn_funding)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.rest_url = f"http://127.0.0.1:{rest_port}"
        # Binance pings its clients; a client that does not answer is dropped
        ping_s = 1.0 if self.venue == "binance" else None
        async with serve(self._ws, "127.0.0.1", 0, ping_interval=ping_s, ping_timeout=5) as ws:
            port = next(iter(ws.sockets)).getsockname()[1]
            self.ws_url = f"ws://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
            ws.close()
        await runner.cleanup()

    # -- WebSocket -------------------------------------------------------------------------------
    async def _ws(self, conn: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        self.sent_per_connection.append(0)
        self.paths.append(conn.request.path if conn.request else "")
        if not first:  # the client was away: the market went on without it
            self.cursor = min(len(self.frames), self.cursor + self.script.skip)
        silent = asyncio.Event()
        reader = asyncio.create_task(self._read(conn, silent))
        try:
            if self.venue == "hyperliquid":
                await asyncio.sleep(0.2)  # let the subscriptions arrive first
            while self.cursor < len(self.frames):
                if first and self.cursor == self.script.cut_after:
                    if self.script.cut_mode == "drop":
                        conn.transport.abort()
                        return
                    silent.set()
                    await conn.wait_closed()  # hung: no frames, no pongs, until the client leaves
                    return
                for bad in self.script.malformed.pop(self.cursor, []):
                    await conn.send(bad)
                    self._count_sent()
                await conn.send(self.frames[self.cursor].text)
                self.cursor += 1
                self._count_sent()
                await asyncio.sleep(self.script.pace_s)
            self.done.set()
            await conn.wait_closed()
        except Exception:  # the client went away; that is its business
            pass
        finally:
            reader.cancel()

    def _count_sent(self) -> None:
        self.sent += 1
        self.sent_per_connection[-1] += 1

    @property
    def sent_last(self) -> int:
        """Frames sent on the latest connection."""
        return self.sent_per_connection[-1] if self.sent_per_connection else 0

    async def _read(self, conn: ServerConnection, silent: asyncio.Event) -> None:
        async for raw in conn:
            msg = json.loads(raw)
            if msg.get("method") == "subscribe":
                self.subscriptions.append(msg["subscription"])
                ack = {"channel": "subscriptionResponse", "data": msg}
                await conn.send(json.dumps(ack))
            elif msg.get("method") == "ping":
                self.pings += 1
                if not silent.is_set():
                    await conn.send(json.dumps({"channel": "pong"}))

    # -- REST ------------------------------------------------------------------------------------
    def _happened(self) -> list[VenueTrade]:
        return [t for f in self.frames[: self.cursor] for t in f.trades]

    def _candles(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        by_minute: dict[int, list[VenueTrade]] = {}
        for t in self._happened():
            by_minute.setdefault(t.ts_ms - t.ts_ms % MINUTE_MS, []).append(t)
        return [
            _candle(ts)
            for m, ts in sorted(by_minute.items())
            if start_ms <= m + MINUTE_MS - 1 and m <= end_ms
        ]

    async def _hl_info(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rest_calls.append(("/info", body))
        if self.script.rest_retry_after_s is not None:  # rate limited: come back later
            return web.Response(
                status=429, headers={"Retry-After": f"{self.script.rest_retry_after_s:g}"}
            )
        kind = body.get("type")
        if kind == "recentTrades":
            trades = self._happened()[-self.script.recent_trades :]
            out = [
                {
                    "coin": body["coin"],
                    "side": "B" if t.aggressor_buys else "A",
                    "px": t.px,
                    "sz": t.sz,
                    "time": t.ts_ms,
                    "hash": "0x" + "0" * 64,
                    "tid": t.tid,
                    "users": t.users,
                }
                for t in trades
            ]
            return web.json_response(out)
        if kind == "candleSnapshot":
            req = body["req"]
            out = [
                {**c, "T": c["t"] + MINUTE_MS - 1, "s": req["coin"], "i": req["interval"]}
                for c in self._candles(req["startTime"], req["endTime"])
            ]
            return web.json_response(out)
        if kind == "fundingHistory":
            rows = [
                {"coin": body["coin"], "fundingRate": rate, "premium": "0", "time": ts}
                for ts, rate in self._settled(body["startTime"])
            ]
            return web.json_response(rows)
        return web.json_response({"error": f"unknown info type {kind!r}"}, status=422)

    def _weighted(self, payload: Any, weight: int) -> web.Response:
        self.weight_used += weight
        return web.json_response(payload, headers={"X-MBX-USED-WEIGHT-1M": str(self.weight_used)})

    async def _bn_agg_trades(self, request: web.Request) -> web.Response:
        q = {k: v[-1] for k, v in parse_qs(urlparse(str(request.url)).query).items()}
        self.rest_calls.append(("/fapi/v1/aggTrades", q))
        limit = int(q.get("limit", 500))
        trades = self._happened()
        if "fromId" in q:
            trades = [t for t in trades if t.tid >= int(q["fromId"])]
        elif "startTime" in q:
            trades = [t for t in trades if t.ts_ms >= int(q["startTime"])]
        rows = [
            {
                "a": t.tid,
                "p": t.px,
                "q": t.sz,
                "f": t.tid,
                "l": t.tid,
                "T": t.ts_ms,
                "m": not t.aggressor_buys,
            }
            for t in trades[:limit]
        ]
        return self._weighted(rows, 20)

    async def _bn_klines(self, request: web.Request) -> web.Response:
        q = {k: v[-1] for k, v in parse_qs(urlparse(str(request.url)).query).items()}
        self.rest_calls.append(("/fapi/v1/klines", q))
        start = int(q.get("startTime", 0))
        end = int(q.get("endTime", 2**62))
        rows = [
            [c["t"], c["o"], c["h"], c["l"], c["c"], c["v"], c["t"] + MINUTE_MS - 1, "0", c["n"]]
            for c in self._candles(start, end)
        ][: int(q.get("limit", 500))]
        return self._weighted(rows, 5)

    async def _bn_funding(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.rest_calls.append(("/fapi/v1/fundingRate", q))
        rows = [
            {"symbol": q["symbol"], "fundingTime": ts, "fundingRate": rate, "markPrice": "1"}
            for ts, rate in self._settled(int(q.get("startTime", 0)))
        ]
        return self._weighted(rows, 1)

    def _settled(self, start_ms: int) -> list[tuple[int, str]]:
        """Funding settled by now: from the start time up to the server's position."""
        now_ms = self.frames[self.cursor - 1].ts_ms if self.cursor else 0
        return [(ts, r) for ts, r in self.script.funding if start_ms <= ts <= now_ms]
