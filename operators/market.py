"""The per-symbol market step: trades and candles in, closed bars and cohort values out.

Trades (or 1m candles, for symbols whose bars come from candles) fold into 5m bars by
event time; each closed 5m bar advances the cohort tracker and composes the 15m and 1h
bars. Other inputs (funding, overlays, cohort snapshots, control commands) pass through
in arrival order for the context join. A trade or candle for a bar already emitted is
returned as `Late`, to be dead-lettered and counted, never folded in silently.

A trade or candle stamped more than `max_jump_ms` past the stream's latest event time
would close every bar in between; it is held back instead. If `JUMP_CONFIRMATIONS`
records in a row agree that time jumped (the market came back after an outage), they are
all processed in order; if a record in line with the stream arrives first, the held ones
are dead letters (a lone bad timestamp). Nothing is lost either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.bars import Bar, BarAggregator, BarBuilder
from operators.cohorts import CohortTracker, CohortValues
from operators.config import CohortConfig
from operators.events import Candle, Trade

JUMP_CONFIRMATIONS = 50
DEFAULT_ALLOWED_LATENESS_MS = 5_000
DEFAULT_MAX_JUMP_MS = 6 * 3_600_000


@dataclass(slots=True)
class Close:
    """A closed 5m bar with the cohort values at its close."""

    bar: Bar
    cohort: CohortValues | None


@dataclass(slots=True)
class Late:
    event: Trade | Candle
    reason: str


@dataclass
class MarketState:
    symbol: str
    bars_from_candles: bool
    allowed_lateness_ms: int
    cohort_cfg: CohortConfig
    max_jump_ms: int = DEFAULT_MAX_JUMP_MS
    ahead: list[Trade | Candle] = field(default_factory=list)
    builder: BarBuilder = field(init=False)
    higher: list[BarAggregator] = field(init=False)
    cohorts: CohortTracker = field(init=False)
    late_count: int = 0

    def __post_init__(self) -> None:
        self.builder = BarBuilder(self.symbol, self.allowed_lateness_ms)
        self.higher = [BarAggregator(self.symbol, "15m"), BarAggregator(self.symbol, "1h")]
        self.cohorts = CohortTracker(self.cohort_cfg)

    def on_event(self, e: Any, out: list[Any]) -> None:
        """Append what `e` produces to `out` (in order)."""
        drives_bars = isinstance(e, Candle) if self.bars_from_candles else isinstance(e, Trade)
        if drives_bars:
            hwm = self.builder.max_event_ms
            if hwm is not None and e.ts_event_ms > hwm + self.max_jump_ms:
                self.ahead.append(e)
                if len(self.ahead) >= JUMP_CONFIRMATIONS:
                    held, self.ahead = self.ahead, []
                    for h in held:
                        self._market(h, out)
                return
            if self.ahead:
                self._reject_ahead(out)
        self._market(e, out)

    def _reject_ahead(self, out: list[Any]) -> None:
        hwm = self.builder.max_event_ms
        for h in self.ahead:
            out.append(
                Late(
                    h,
                    f"far out of order: event time {h.ts_event_ms} is "
                    f"{(h.ts_event_ms - (hwm or 0)) / 3.6e6:.1f} h past the stream "
                    f"(max jump {self.max_jump_ms / 3.6e6:.1f} h, not confirmed by "
                    f"{JUMP_CONFIRMATIONS} records in a row)",
                )
            )
        self.late_count += len(self.ahead)
        self.ahead = []

    def _market(self, e: Any, out: list[Any]) -> None:
        if isinstance(e, Trade):
            if self.bars_from_candles:
                if not self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller):
                    self._late(e, out)
                return
            bars = self.builder.add_trade(e.ts_event_ms, e.px, e.qty)
            if bars is None:
                self._late(e, out)
                return
            self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller)
            if bars:
                self._closed(bars, out)
        elif isinstance(e, Candle):
            if not self.bars_from_candles:
                out.append(
                    Late(
                        e,
                        f"candle ignored: bars for {self.symbol} are built from "
                        "trades (list it in ENSEMBLE_CANDLE_SYMBOLS to use candles)",
                    )
                )
                return
            bars = self.builder.add_candle(
                e.ts_event_ms, e.interval_ms, e.open, e.high, e.low, e.close, e.volume
            )
            if bars is None:
                self._late(e, out)
            elif bars:
                self._closed(bars, out)
        else:
            out.append(e)

    def flush(self, out: list[Any]) -> None:
        """End of a finite input: close every open bar."""
        if self.ahead:
            self._reject_ahead(out)
        self._closed(self.builder.flush(), out)
        for agg in self.higher:
            b = agg.flush()
            if b is not None:
                out.append(b)

    def _late(self, e: Trade | Candle, out: list[Any]) -> None:
        self.late_count += 1
        wm = self.builder.watermark_ms
        out.append(
            Late(
                e,
                f"late: event time {e.ts_event_ms} is in a bar already closed "
                f"(watermark {wm}, allowed lateness {self.allowed_lateness_ms} ms)",
            )
        )

    def _closed(self, bars: Sequence[Bar], out: list[Any]) -> None:
        for b in bars:
            cohort = self.cohorts.close_bar(b)
            for agg in self.higher:  # higher bars first: usable from their close
                hb = agg.add(b)
                if hb is not None:
                    out.append(hb)
            out.append(Close(b, cohort))
