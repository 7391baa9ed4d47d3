"""Event-time tumbling bars, aligned to the UTC epoch.

`BarBuilder` folds trades or 1m candles into 5m bars. Its clock is event time (live, the
market step may also advance it by processing time, `advance_to`): the watermark is the
latest event time seen minus the allowed lateness, and a bar is emitted once the
watermark passes its end. A candle is published at its close, so the candle that ends a
bucket closes it at once (no wait for the next candle). A record for a bar already
emitted is late; it is returned to the caller (which dead-letters and counts it), never
folded in silently and never dropped silently. A window with no data is emitted as a gap
bar (`complete=False`, flat at the previous close, no volume) so the series stays
regular and data completeness can be measured. A bar from candles is complete only with
every one of its candles (five 1m candles for a 5m bar); one with a missing minute is
emitted with `complete=False`. A candle for a minute already folded into an open bar
replaces the one before it: delivered twice, it counts once; revised, the bar is the
revision's.

`BarAggregator` composes 15m and 1h bars from closed 5m bars. OHLCV composes exactly, so
every timeframe equals a pandas resample of the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MINUTE_MS = 60_000
TIMEFRAME_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": 60 * MINUTE_MS}


@dataclass(slots=True)
class Bar:
    symbol: str
    timeframe: str
    start_ms: int
    end_ms: int  # exclusive; the bar is usable from end_ms on
    open: float
    high: float
    low: float
    close: float
    volume: float
    count: int  # trades or 1m candles folded in; 0 for a gap bar
    complete: bool  # False for a gap bar or a higher bar with missing 5m parts

    @property
    def ret(self) -> float:
        """Simple return of the bar, close over open."""
        return self.close / self.open - 1.0


class _Bucket:
    __slots__ = (
        "open", "high", "low", "close", "volume", "count", "first_ts", "last_ts", "parts",
        "part_ms", "candles",
    )  # fmt: skip

    def __init__(self, ts: int, o: float, h: float, low: float, c: float, v: float) -> None:
        self.open, self.high, self.low, self.close = o, h, low, c
        self.volume = v
        self.count = 1
        self.first_ts = ts
        self.last_ts = ts
        self.parts: set[int] | None = None  # candle opens folded in (None: built from trades)
        self.part_ms = 0  # the candle interval
        # candle open -> (o, h, l, c, v) folded in (None: trades, or an older snapshot's)
        self.candles: dict[int, tuple[float, float, float, float, float]] | None = None

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        self.parts, self.part_ms = None, 0  # snapshots from before candle completeness
        self.candles = None  # snapshots from before candles were kept
        for k, v in state[1].items():
            setattr(self, k, v)

    def has_every_part(self, width_ms: int) -> bool:
        """Trades: yes; candles: one per interval of the bar (a missing minute: no)."""
        return self.parts is None or len(self.parts) * self.part_ms >= width_ms

    def add(self, ts: int, o: float, h: float, low: float, c: float, v: float) -> None:
        # Open and close follow event time, not arrival order; ties keep arrival order,
        # as pandas' first/last do on time-sorted data.
        if ts < self.first_ts:
            self.first_ts, self.open = ts, o
        if ts >= self.last_ts:
            self.last_ts, self.close = ts, c
        if h > self.high:
            self.high = h
        if low < self.low:
            self.low = low
        self.volume += v
        self.count += 1

    def add_trade(self, ts: int, px: float, qty: float) -> None:
        """`add` for one trade (its open, high, low and close are its price)."""
        if ts < self.first_ts:
            self.first_ts, self.open = ts, px
        if ts >= self.last_ts:
            self.last_ts, self.close = ts, px
        if px > self.high:
            self.high = px
        elif px < self.low:
            self.low = px
        self.volume += qty
        self.count += 1

    def replace_candle(self, ts: int, o: float, h: float, low: float, c: float, v: float) -> None:
        """The candle opening at `ts` again (a redelivery or a revision): the bucket becomes
        its candles' with this one in place of the one before."""
        candles = self.candles
        assert candles is not None
        candles[ts] = (o, h, low, c, v)
        times = sorted(candles)
        first, last = candles[times[0]], candles[times[-1]]
        self.first_ts, self.open = times[0], first[0]
        self.last_ts, self.close = times[-1], last[3]
        self.high = max(x[1] for x in candles.values())
        self.low = min(x[2] for x in candles.values())
        volume = 0.0
        for t in times:
            volume += candles[t][4]
        self.volume = volume
        self.count = len(candles)


class BarBuilder:
    """Per-symbol 5m (by default) bars from trades or candles, by event time."""

    def __init__(self, symbol: str, allowed_lateness_ms: int, timeframe: str = "5m") -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.width_ms = TIMEFRAME_MS[timeframe]
        self.allowed_lateness_ms = allowed_lateness_ms
        self.buckets: dict[int, _Bucket] = {}
        self.max_event_ms: int | None = None  # latest event end seen
        self.next_start_ms: int | None = None  # start of the first bar not yet emitted
        self.last_close: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the allowed lateness is a setting, bound again on resume."""
        return {k: v for k, v in self.__dict__.items() if k != "allowed_lateness_ms"}

    @property
    def watermark_ms(self) -> int | None:
        if self.max_event_ms is None:
            return None
        return self.max_event_ms - self.allowed_lateness_ms

    def add_trade(self, ts_ms: int, px: float, qty: float) -> Sequence[Bar] | None:
        """Fold one trade in and advance to its time; the bars it closed, or None if late."""
        if not self.fold_trade(ts_ms, px, qty):
            return None
        return self.advance(ts_ms)

    def add_candle(
        self, ts_ms: int, interval_ms: int, o: float, h: float, low: float, c: float, v: float
    ) -> Sequence[Bar] | None:
        """Fold one candle in (ts_ms is its open) and advance to its close; closed bars, or
        None if late."""
        if not self.fold_candle(ts_ms, interval_ms, o, h, low, c, v):
            return None
        return self.advance(ts_ms + interval_ms)

    def is_late(self, ts_ms: int) -> bool:
        """True if the bar of `ts_ms` was already emitted."""
        return self.next_start_ms is not None and ts_ms - ts_ms % self.width_ms < self.next_start_ms

    def fold_trade(self, ts_ms: int, px: float, qty: float) -> bool:
        """Fold one trade into its bar without moving the clock; False if it is late."""
        start = ts_ms - ts_ms % self.width_ms
        if self.next_start_ms is not None and start < self.next_start_ms:
            return False
        bucket = self.buckets.get(start)
        if bucket is None:
            self.buckets[start] = _Bucket(ts_ms, px, px, px, px, qty)
        else:
            bucket.add_trade(ts_ms, px, qty)
        return True

    def fold_candle(
        self, ts_ms: int, interval_ms: int, o: float, h: float, low: float, c: float, v: float
    ) -> bool:
        """Fold one candle into its bar without moving the clock; False if it is late."""
        return self._fold(ts_ms, o, h, low, c, v, interval_ms)

    def _fold(
        self, ts: int, o: float, h: float, low: float, c: float, v: float, interval_ms: int | None
    ) -> bool:
        start = ts - ts % self.width_ms
        if self.next_start_ms is not None and start < self.next_start_ms:
            return False
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = _Bucket(ts, o, h, low, c, v)
            if interval_ms is not None:
                bucket.candles = {}
        elif interval_ms is not None and bucket.candles is not None and ts in bucket.candles:
            bucket.replace_candle(ts, o, h, low, c, v)  # seen before: it counts once
            return True
        else:
            bucket.add(ts, o, h, low, c, v)
        if interval_ms is not None:
            if bucket.parts is None:
                bucket.parts, bucket.part_ms = set(), interval_ms
            bucket.parts.add(ts)
            if bucket.candles is not None:
                bucket.candles[ts] = (o, h, low, c, v)
        return True

    def advance(self, progress_ms: int) -> Sequence[Bar]:
        """Event time has reached `progress_ms`: close the bars the watermark (progress minus
        the allowed lateness) has passed. A bar built from candles closes as soon as
        progress reaches the close of its last candle (a candle is published at its close)."""
        advanced = self.max_event_ms is None or progress_ms > self.max_event_ms
        if advanced:
            self.max_event_ms = progress_ms
        watermark = progress_ms - self.allowed_lateness_ms
        end = progress_ms - progress_ms % self.width_ms  # the last bar boundary reached
        bucket = self.buckets.get(end - self.width_ms)
        last_in = bucket is not None and bucket.parts is not None
        if last_in and bucket.last_ts + bucket.part_ms >= end:  # type: ignore[union-attr]
            watermark = max(watermark, end)  # its last candle is in: nothing more comes
        elif not advanced:
            return _NO_BARS
        return self._close_until(watermark)

    def advance_to(self, now_ms: int) -> Sequence[Bar]:
        """Processing-time progress: close every bar whose end is `allowed_lateness_ms` or
        more before `now_ms` (gap bars for empty windows); nothing before the first bar."""
        if self.next_start_ms is None and not self.buckets:
            return _NO_BARS
        return self._close_until(now_ms - self.allowed_lateness_ms, gaps_past_data=True)

    def flush(self) -> Sequence[Bar]:
        """Emit every open bar: the end of a finite input is a watermark at infinity."""
        if not self.buckets:
            return _NO_BARS
        return self._close_until(max(self.buckets) + self.width_ms)

    def _close_until(self, watermark: int, gaps_past_data: bool = False) -> Sequence[Bar]:
        if self.next_start_ms is None:
            if not self.buckets:
                return _NO_BARS
            start = min(self.buckets)
        else:
            start = self.next_start_ms
        if start + self.width_ms > watermark:
            return _NO_BARS
        out: list[Bar] = []
        while start + self.width_ms <= watermark and (self.buckets or gaps_past_data):
            b = self.buckets.pop(start, None)
            end = start + self.width_ms
            if b is not None:
                out.append(
                    Bar(
                        self.symbol,
                        self.timeframe,
                        start,
                        end,
                        b.open,
                        b.high,
                        b.low,
                        b.close,
                        b.volume,
                        b.count,
                        b.has_every_part(self.width_ms),
                    )
                )
                self.last_close = b.close
            else:
                px = self.last_close
                assert px is not None  # a gap can only follow an emitted bar
                out.append(
                    Bar(self.symbol, self.timeframe, start, end, px, px, px, px, 0.0, 0, False)
                )
            start = end
        self.next_start_ms = start
        return out


_NO_BARS: tuple[Bar, ...] = ()  # immutable: callers can never corrupt it


class BarAggregator:
    """Composes a higher timeframe (15m, 1h) from consecutive closed 5m bars."""

    def __init__(self, symbol: str, timeframe: str, base_ms: int = TIMEFRAME_MS["5m"]) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.width_ms = TIMEFRAME_MS[timeframe]
        self.parts_expected = self.width_ms // base_ms
        self.current: Bar | None = None
        self.parts = 0

    def add(self, bar: Bar) -> Bar | None:
        """Fold one closed base bar in; returns the higher bar when this bar closes it."""
        start = bar.start_ms - bar.start_ms % self.width_ms
        cur = self.current
        if cur is None or cur.start_ms != start:
            cur = self.current = Bar(
                self.symbol,
                self.timeframe,
                start,
                start + self.width_ms,
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                bar.count,
                bar.complete,
            )
            self.parts = 1
        elif bar.count:
            if cur.count == 0:  # everything so far was a gap: the real open starts here
                cur.open, cur.high, cur.low = bar.open, bar.high, bar.low
            else:
                cur.high = max(cur.high, bar.high)
                cur.low = min(cur.low, bar.low)
            cur.close = bar.close
            cur.volume += bar.volume
            cur.count += bar.count
            cur.complete = cur.complete and bar.complete
            self.parts += 1
        else:
            cur.complete = False
            self.parts += 1
        if bar.end_ms == cur.end_ms:
            cur.complete = cur.complete and self.parts == self.parts_expected
            self.current = None
            return cur
        return None

    def flush(self) -> Bar | None:
        """The partial bar at the end of a finite input, marked incomplete."""
        cur, self.current = self.current, None
        if cur is not None:
            cur.complete = False
        return cur
