"""The feed loop shared by every venue: connect, subscribe, keep alive, read with a
silence timeout, reconnect with exponential backoff and jitter, backfill the missed window
over REST, drop what was already published, record raw frames, publish, count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from marketdata.live.dedup import SeenWindow
from marketdata.live.frames import FrameError, Item, capture_line
from marketdata.live.metrics import FeedMetrics
from marketdata.live.producer import Publisher, RecordError
from marketdata.live.ratelimit import WeightBudget
from marketdata.live.rest import RestClient, RestError
from marketdata.live.symbols import SYMBOLS, VENUES
from marketdata.live.venue import FeedPosition, Gap, Venue

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting of the ingestor that cannot be used; the message names it."""


@dataclass(frozen=True)
class IngestorConfig:
    venue: str
    symbols: tuple[str, ...]
    bootstrap: str
    prefix: str = "ensemble"
    strategy_id: str = "ensemble_1_1"
    ws_url: str | None = None  # None: the venue's public endpoint
    rest_url: str | None = None
    record_path: Path | None = None
    silence_timeout_s: float = 30.0  # no frame for this long: the connection is replaced
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    dedup_window: int = 200_000  # records remembered across reconnects (bounded memory)
    clock_skew_bound_ms: int = 2_000
    keepalive_interval_s: float | None = None  # None: the venue's rule
    max_connection_age_s: float | None = None  # None: the venue's rule
    # As the flow's ENSEMBLE_CANDLE_SYMBOLS: these get candles and no trades, the others
    # trades and no candles (the flow dead-letters the rest). None: publish both.
    candle_symbols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.venue not in VENUES:
            raise ConfigError(f"venue={self.venue!r}: must be one of {sorted(VENUES)}")
        if not self.symbols:
            raise ConfigError("symbols: give at least one, e.g. BTC-PERP")
        unknown = [s for s in self.symbols if s not in SYMBOLS]
        if unknown:
            raise ConfigError(f"symbols={unknown}: unknown; known: {sorted(SYMBOLS)}")
        extra = sorted(set(self.candle_symbols or ()) - set(self.symbols))
        if extra:
            raise ConfigError(f"candle_symbols={extra}: not among symbols={list(self.symbols)}")
        for name in ("silence_timeout_s", "backoff_initial_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"backoff_max_s={self.backoff_max_s} must be >= backoff_initial_s="
                f"{self.backoff_initial_s}"
            )
        if self.dedup_window <= 0:
            raise ConfigError(f"dedup_window={self.dedup_window} must be > 0")
        if self.clock_skew_bound_ms < 0:
            raise ConfigError(f"clock_skew_bound_ms={self.clock_skew_bound_ms} must be >= 0")


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^attempt)]."""
    return rng.uniform(0.0, min(max_s, initial_s * 2.0**attempt))


class ConnectionEnd(StrEnum):
    """Why a connection ended: the `reason` label of the reconnect counter."""

    DROPPED = "closed"  # the TCP connection went without a close frame
    CLOSED_BY_VENUE = "closed_by_venue"  # a close frame (its code is logged)
    SILENT = "silent"  # no frame within the silence timeout
    MAX_AGE = "max_age"  # replaced before the venue's own connection age limit
    CONNECT_FAILED = "connect_failed"
    STOPPED = "stopped"


class Recorder:
    """Every raw frame as `<recv_ns> <frame>`, the capture layout the parsers read back."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = (
            gzip.open(path, "at")  # noqa: SIM115 (open for the ingestor's life)
            if path.name.endswith(".gz")
            else open(path, "a", buffering=1)  # noqa: SIM115
        )

    def write(self, recv_ns: int, frame: str | bytes) -> None:
        self._f.write(capture_line(recv_ns, frame))

    def close(self) -> None:
        self._f.close()


class Ingestor:
    def __init__(
        self,
        cfg: IngestorConfig,
        venue: Venue,
        publisher: Publisher,
        metrics: FeedMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.venue = venue
        self.publisher = publisher
        self.metrics = metrics or FeedMetrics()
        self.metrics.for_venue(venue.name)
        self.rng = rng or random.Random()
        self.symbols = list(cfg.symbols)
        self.parser = venue.parser()
        self.seen = SeenWindow(cfg.dedup_window)
        self.recorder = Recorder(cfg.record_path) if cfg.record_path else None
        self.position: FeedPosition | None = None  # None until the first record
        # symbol -> the latest funding settlement published: the backfill asks from before
        # the last one, and the dedup window forgets a key within hours of busy trades
        self.last_funding_ms: dict[str, int] = {}
        self.connections = 0
        self.subscribed_ms: int | None = None  # the first subscription, while no record came
        self.keepalive_s = (
            venue.keepalive_interval_s
            if cfg.keepalive_interval_s is None
            else cfg.keepalive_interval_s
        )
        self.max_age_s = (
            venue.max_connection_age_s
            if cfg.max_connection_age_s is None
            else cfg.max_connection_age_s
        )
        self.gaps: list[Gap] = []
        self.frames_received = 0
        self.frames_this_connection = 0
        # market records (trades, candles, funding) the connection brought, duplicates too;
        # acks, pongs and error frames do not show that the venue is streaming to us
        self.records_this_connection = 0

    # -- records ---------------------------------------------------------------------------------
    def handle_frame(self, frame: str | bytes, recv_ns: int) -> None:
        """Record, parse, deduplicate and publish one frame; a bad frame is a dead letter."""
        self.frames_received += 1
        self.frames_this_connection += 1
        if self.recorder:
            self.recorder.write(recv_ns, frame)
        recv_ms = recv_ns // 1_000_000
        try:
            parsed = self.parser.parse(frame, recv_ms)
        except FrameError as e:
            self._dead_letter(frame, str(e), recv_ms)
            return
        except Exception as e:  # a frame shape the parser never met: still only one frame
            log.exception("%s: parser failed on a frame", self.venue.name)
            self._dead_letter(frame, f"parser error {type(e).__name__}: {e}", recv_ms)
            return
        self.metrics.frames.labels(self.venue.name, parsed.kind).inc()
        self.records_this_connection += len(parsed.items)
        for item in parsed.items:
            try:
                self._publish(item, recv_ms, backfilled=False)
            except RecordError as e:  # the frame's other records still go out
                self._dead_letter(frame, str(e), recv_ms)
        self._report_lost()

    def _report_lost(self) -> None:
        """Records the broker never took (an outage longer than the producer's message
        timeout) are gone from the topics: their window is a GAP, never hidden."""
        for stream, symbol, n, first_ms, last_ms, error in self.publisher.take_lost():
            reason = f"Kafka did not take {n} record(s) received in this window: {error}"
            self._report_gap(Gap(stream, symbol, first_ms, last_ms, reason))

    def _dead_letter(self, raw: str | bytes, reason: str, recv_ms: int, source: str = "ws") -> None:
        self.metrics.frames.labels(self.venue.name, "malformed").inc()
        self.metrics.dead_letters.labels(self.venue.name).inc()
        self.publisher.dead_letter(f"{self.venue.name}.{source}", raw, reason, recv_ms)
        log.warning("%s: dead letter: %s", self.venue.name, reason)

    def wanted(self, item: Item) -> bool:
        """Whether the flow reads this record (see `IngestorConfig.candle_symbols`)."""
        return self._wants(item.stream, item.record["symbol"])

    def _wants(self, stream: str, symbol: str) -> bool:
        candles = self.cfg.candle_symbols
        if candles is None or stream not in ("trades", "candles"):
            return True
        return (stream == "candles") == (symbol in candles)

    def _publish(self, item: Item, recv_ms: int, backfilled: bool) -> bool:
        stream = item.stream
        if not self.wanted(item):
            return False
        rec = item.record
        ts = rec["ts_event_ms"]
        settled_ms = self.last_funding_ms.get(rec["symbol"]) if stream == "funding" else None
        already_settled = backfilled and settled_ms is not None and ts <= settled_ms
        if already_settled or not self.seen.add(item.dedup_key):
            self.metrics.duplicates.labels(self.venue.name, stream).inc()
            return False
        if not backfilled:
            lag_ms = recv_ms - ts
            if stream != "candles":  # a candle's event time is its open, a minute back
                self.metrics.lag.labels(self.venue.name, stream).observe(max(lag_ms, 0) / 1000)
            if -lag_ms > self.cfg.clock_skew_bound_ms:
                self.metrics.clock_skew.labels(self.venue.name).inc()
                log.warning(
                    "%s: event time %d is %d ms ahead of our clock (bound %d ms): clock skew",
                    self.venue.name,
                    ts,
                    -lag_ms,
                    self.cfg.clock_skew_bound_ms,
                )
        self.publisher.publish(stream, rec, recv_ms)
        self.metrics.messages.labels(self.venue.name, stream).inc()
        if backfilled:
            self.metrics.backfilled.labels(self.venue.name, stream).inc()
        self._advance(item)
        return True

    def _advance(self, item: Item) -> None:
        rec = item.record
        ts = rec["ts_event_ms"]
        if item.stream == "candles":
            ts += rec["interval_ms"]  # a closed candle tells us its close has passed
        if self.position is None:
            self.position = FeedPosition(last_event_ms=ts)
        pos = self.position
        pos.last_event_ms = max(pos.last_event_ms, ts)
        if item.stream == "funding":
            symbol = rec["symbol"]
            self.last_funding_ms[symbol] = max(ts, self.last_funding_ms.get(symbol, ts))
        if item.stream == "trades":
            symbol = rec["symbol"]
            if ts >= pos.last_trade_ms.get(symbol, ts):
                pos.last_trade_ms[symbol] = ts
                prev = pos.last_trade_id.get(symbol)
                tid = rec["trade_id"]
                if prev is None or not (tid.isdigit() and prev.isdigit()) or int(tid) > int(prev):
                    pos.last_trade_id[symbol] = tid

    # -- backfill --------------------------------------------------------------------------------
    async def backfill(self, rest: RestClient) -> None:
        """After a reconnect: everything since the last record, published once."""
        recv_ms = time.time_ns() // 1_000_000
        if self.position is None:  # no record yet: no place the backfill could start from
            if self.subscribed_ms is not None:  # but records since the subscription are lost
                reason = "the connection ended before its first record: not backfilled"
                self._report_gap(Gap("all", "*", self.subscribed_ms, recv_ms, reason))
                self.subscribed_ms = recv_ms  # a next such gap starts here
            return
        try:
            result = await self.venue.backfill(rest, self.symbols, self.position, recv_ms)
        except (RestError, FrameError) as e:
            gap = Gap("all", "*", self.position.last_event_ms, recv_ms, f"backfill failed: {e}")
            self._report_gap(gap)
            return
        items = sorted(result.items, key=lambda i: (i.record["ts_event_ms"], i.stream))
        n = 0
        for item in items:
            try:
                n += self._publish(item, recv_ms, backfilled=True)
            except RecordError as e:  # no raw REST row is kept: the record stands for it
                self._dead_letter(json.dumps(item.record, sort_keys=True), str(e), recv_ms, "rest")
        self._report_lost()
        for gap in result.gaps:
            # a stream the ingestor does not publish for the symbol (`--candle-symbols`)
            # has no last record to reach back to: its "gap" is nothing the flow misses
            if gap.symbol == "*" or self._wants(gap.stream, gap.symbol):
                self._report_gap(gap)
        log.info("%s: backfilled %d records (%d already had)", self.venue.name, n, len(items) - n)

    def _report_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.metrics.gaps.labels(self.venue.name, gap.stream).inc()
        log.error(
            "%s: GAP in %s %s from %d to %d: %s",
            self.venue.name,
            gap.symbol,
            gap.stream,
            gap.from_ms,
            gap.to_ms,
            gap.reason,
        )

    # -- connection ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: connect, read, and reconnect on any failure."""
        rest_url = self.cfg.rest_url or self.venue.default_rest_url
        ws_base = self.cfg.ws_url or self.venue.default_ws_url
        url = self.venue.ws_url(ws_base, self.symbols)
        budget = WeightBudget(self.venue.rest_weight_per_minute)
        attempt = 0
        try:
            async with RestClient(rest_url, budget) as rest:
                while not stop.is_set():
                    reason = await self._connection(url, rest, stop)
                    if stop.is_set():
                        break
                    self.metrics.reconnects.labels(self.venue.name, reason).inc()
                    if self.records_this_connection > 0:  # it worked: back off from scratch
                        attempt = 0
                    self.frames_this_connection = self.records_this_connection = 0
                    delay = backoff_s(
                        attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng
                    )
                    attempt += 1
                    log.warning("%s: %s; reconnecting in %.2f s", self.venue.name, reason, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            if self.recorder:
                self.recorder.close()

    async def _connection(self, url: str, rest: RestClient, stop: asyncio.Event) -> ConnectionEnd:
        """One connection's life; returns why it ended."""
        try:
            async with websockets.connect(
                url,
                open_timeout=10,
                close_timeout=2,
                ping_interval=20,
                ping_timeout=20,
                max_size=2**23,
            ) as ws:
                for msg in self.venue.subscribe_messages(self.symbols):
                    await ws.send(msg)
                self.connections += 1
                if self.subscribed_ms is None:
                    self.subscribed_ms = time.time_ns() // 1_000_000
                self.parser = self.venue.parser()  # no half-built candle across connections
                self.frames_this_connection = self.records_this_connection = 0
                if self.connections > 1 and not await self._unless_stopped(
                    self.backfill(rest), stop
                ):
                    await ws.close()
                    return ConnectionEnd.STOPPED
                return await self._read(ws, stop)
        except ConnectionClosed as e:
            if e.rcvd is None:
                return ConnectionEnd.DROPPED
            log.warning(
                "%s: closed by the venue: %s %s", self.venue.name, e.rcvd.code, e.rcvd.reason
            )
            return ConnectionEnd.CLOSED_BY_VENUE
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
            log.warning("%s: connect failed: %s", self.venue.name, e)
            return ConnectionEnd.CONNECT_FAILED

    async def _unless_stopped(self, backfill: Any, stop: asyncio.Event) -> bool:
        """Run the backfill unless a stop comes first (it may wait minutes on the venue's
        Retry-After, and SIGTERM must still stop the ingestor): True when it finished. A
        backfill stopped has published nothing (it publishes once all is fetched): its
        window is a GAP."""
        task = asyncio.ensure_future(backfill)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task in done:
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        since = self.position.last_event_ms if self.position is not None else self.subscribed_ms
        now = time.time_ns() // 1_000_000
        self._report_gap(Gap("all", "*", since or now, now, "stopped during the backfill"))
        return False

    async def _read(self, ws, stop: asyncio.Event) -> ConnectionEnd:
        opened = time.monotonic()
        keepalive = self.venue.keepalive_message()
        last_ping = last_frame = opened
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                now = time.monotonic()
                if self.max_age_s and now - opened > self.max_age_s:
                    await ws.close()
                    return ConnectionEnd.MAX_AGE
                if keepalive and self.keepalive_s and now - last_ping >= self.keepalive_s:
                    # a connection that has just closed may still hold frames received
                    # before it did: recv() below gives them first, then raises the close
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(keepalive)
                    last_ping = now
                wait_s = self.cfg.silence_timeout_s
                if keepalive and self.keepalive_s:
                    wait_s = min(wait_s, max(0.01, last_ping + self.keepalive_s - now))
                recv = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {recv, stopper}, timeout=wait_s, return_when="FIRST_COMPLETED"
                )
                if recv in done:
                    self.handle_frame(recv.result(), time.time_ns())
                    last_frame = time.monotonic()
                    continue
                recv.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await recv
                if stopper in done:
                    await ws.close()
                    return ConnectionEnd.STOPPED
                if time.monotonic() - last_frame >= self.cfg.silence_timeout_s:
                    await ws.close()
                    return ConnectionEnd.SILENT
        finally:
            stopper.cancel()
