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

A trade seen before (same venue and trade id) while its bar is still open is dropped and
counted (`duplicate_count`): a replayed or doubled feed must not double the volume.

Configuration is not state: the lateness, the jump limit, whether bars come from candles
and the cohort settings are bound by `configure` at every build or resume and are left out
of every snapshot (`__getstate__`), so a restart always runs with the current settings.

With `size_proxy.enabled`, every trade also feeds the trade-size cohort proxy
(operators/size_proxy.py) and each `Close` carries its values.

Live (wall clock), `on_tick` gives processing-time progress: with no new record, the
stream's event time is taken to advance with the wall clock since its last record, so a
quiet symbol's bars (gap bars for empty windows) still close after the allowed lateness.
While records keep arriving (catching up a backlog) this adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.bars import Bar, BarAggregator, BarBuilder
from operators.cohorts import CohortTracker, CohortValues
from operators.config import CohortConfig, SizeProxyConfig
from operators.dedup import RecentTrades
from operators.events import Candle, Trade
from operators.size_proxy import ProxyValues, SizeProxy, bind

JUMP_CONFIRMATIONS = 50
DEFAULT_ALLOWED_LATENESS_MS = 5_000
DEFAULT_MAX_JUMP_MS = 6 * 3_600_000


@dataclass(slots=True)
class Close:
    """A closed 5m bar with the cohort values at its close."""

    bar: Bar
    cohort: CohortValues | None
    size_proxy: ProxyValues | None = None  # only when the size proxy is on


@dataclass(slots=True)
class Late:
    event: Trade | Candle
    reason: str


_CONFIG = (
    "bars_from_candles",
    "allowed_lateness_ms",
    "cohort_cfg",
    "max_jump_ms",
    "size_proxy_cfg",
)


@dataclass
class MarketState:
    symbol: str
    bars_from_candles: bool
    allowed_lateness_ms: int
    cohort_cfg: CohortConfig
    max_jump_ms: int = DEFAULT_MAX_JUMP_MS
    size_proxy_cfg: SizeProxyConfig = field(default_factory=SizeProxyConfig)
    ahead: list[Trade | Candle] = field(default_factory=list)
    builder: BarBuilder = field(init=False)
    higher: list[BarAggregator] = field(init=False)
    cohorts: CohortTracker = field(init=False)
    size_proxy: SizeProxy | None = field(init=False)
    recent: RecentTrades = field(default_factory=RecentTrades)
    late_count: int = 0
    duplicate_count: int = 0

    def __post_init__(self) -> None:
        self.builder = BarBuilder(self.symbol, self.allowed_lateness_ms)
        self.higher = [BarAggregator(self.symbol, "15m"), BarAggregator(self.symbol, "1h")]
        self.cohorts = CohortTracker(self.cohort_cfg)
        self.size_proxy = bind(None, self.size_proxy_cfg, self.cohort_cfg)

    def configure(
        self,
        bars_from_candles: bool,
        allowed_lateness_ms: int,
        cohort_cfg: CohortConfig,
        max_jump_ms: int,
        size_proxy_cfg: SizeProxyConfig | None = None,
    ) -> MarketState:
        """Bind the running settings (after a resume: the state holds none)."""
        self.bars_from_candles = bars_from_candles
        self.allowed_lateness_ms = self.builder.allowed_lateness_ms = allowed_lateness_ms
        self.cohort_cfg = self.cohorts.cfg = cohort_cfg
        self.max_jump_ms = max_jump_ms
        self.size_proxy_cfg = size_proxy_cfg or SizeProxyConfig()
        self.size_proxy = bind(self.size_proxy, self.size_proxy_cfg, cohort_cfg)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the settings are bound again by `configure` on resume."""
        return {k: v for k, v in self.__dict__.items() if k not in _CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("recent", RecentTrades())  # snapshots from before deduplication
        state.setdefault("duplicate_count", 0)
        state.setdefault("size_proxy", None)  # snapshots from before the size proxy
        self.__dict__.update(state)

    def on_tick(self, now_ms: int, idle_ms: int, out: list[Any]) -> None:
        """Processing-time progress: `idle_ms` of wall time passed since the last record."""
        hwm = self.builder.max_event_ms
        if hwm is None or idle_ms <= 0:
            return
        self._closed(self.builder.advance_to(min(hwm + idle_ms, now_ms)), out)

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
            if self.recent.seen(e.ts_event_ms, (e.venue, e.trade_id)):
                self.duplicate_count += 1
                return
            if self.bars_from_candles:
                if not self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller):
                    self._late(e, out)
                elif self.size_proxy is not None:
                    self.size_proxy.add_trade(e.ts_event_ms, e.px, e.qty, e.side)
                return
            bars = self.builder.add_trade(e.ts_event_ms, e.px, e.qty)
            if bars is None:
                self._late(e, out)
                return
            self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller)
            if self.size_proxy is not None:
                self.size_proxy.add_trade(e.ts_event_ms, e.px, e.qty, e.side)
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
            self.recent.forget_before(b.end_ms)
            cohort = self.cohorts.close_bar(b)
            for agg in self.higher:  # higher bars first: usable from their close
                hb = agg.add(b)
                if hb is not None:
                    out.append(hb)
            proxy = None if self.size_proxy is None else self.size_proxy.close_bar(b)
            out.append(Close(b, cohort, proxy))
