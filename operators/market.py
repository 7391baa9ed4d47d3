"""The per-symbol market step: trades and candles in, closed bars and cohort values out.

Trades (or 1m candles, for symbols whose bars come from candles) fold into 5m bars by
event time; each closed 5m bar advances the cohort tracker and composes the 15m and 1h
bars. Other inputs (funding, overlays, cohort snapshots, control commands) pass through
in arrival order for the context join, but for a funding settlement passed on before, or
older than one the closed bars have reached (a copy: it is paid once; `_funding_seen`). A
trade or candle for a bar already emitted, and such a settlement, are returned as `Late`,
to be dead-lettered, never used silently.

Bars close when the symbol's event-time progress, less the allowed lateness, passes their
end. Progress is kept per input partition and the minimum taken (operators/watermark.py):
one trade stamped ahead, or a minority of records on other partitions, cannot close bars
early and make real trades late; and funding, overlay, cohort and control records reach
the context join before the bar they belong to closes, however fast each topic is read.

A trade or candle stamped more than `max_jump_ms` past its partition's progress (or past
the bars already closed, when the wall clock closed a quiet symbol's bars beyond it) would
be folded into a bar hours ahead; it is held back instead. If `JUMP_CONFIRMATIONS` records
in a row from the same partition agree that time jumped (the market came back after an
outage), they are all processed in order; if a record in line with the partition arrives
first, the held ones are dead letters (a lone bad timestamp). Nothing is lost either way.
One stamped more than `max_jump_ms` before its partition's progress is a dead letter too
(`far out of order`), unless it is late (its bar closed: a `late` dead letter). Before
the symbol's first bar closed nothing is late, and one trade stamped years back opened the
first bar there: a Kafka run then emitted a gap bar, a decision and its telemetry for each
of the 946,655 empty 5m windows up to the real trades (six minutes of output, every
topic flooded, every feature and indicator over the gap).

A trade seen before (same venue and trade id) while its bar is still open is dropped and
counted (`duplicate_count`): a replayed or doubled feed must not double the volume. A
trade whose price or size is outside the bands around the recent reference
(operators/bands.py), or a candle with absurd values, is an outlier: dead-lettered and
counted (`outlier_count`), never folded into a bar, so no feature or size sees it.

The flow hands the step one list per input batch (`on_events`): each record gives exactly
what `on_event` gives it, but the ordinary trade (in line, not seen before, not late,
inside the bands) is judged and folded inline, against its partition's clock and
reference read once per run of that partition's trades; anything else takes `on_event`.
A file's block of trades (or a Kafka partition's run of them) arrives as one TradeBlock
of columns, whose ordinary trades operators/market_columns.py judges and folds a run at
a time, with the same outcome.

Configuration is not state: the lateness, the jump limit, whether bars come from candles
and the cohort settings are bound by `configure` at every build or resume and are left out
of every snapshot (`__getstate__`), so a restart always runs with the current settings.

With `size_proxy.enabled`, every trade also feeds the trade-size cohort proxy
(operators/size_proxy.py) and each `Close` carries its values.

Live (wall clock), `on_tick` gives processing-time progress: with no new record, the
stream's event time is taken to advance with the wall clock since its last record, so a
quiet symbol's bars (gap bars for empty windows) still close after the allowed lateness;
`tick_due_ms` says when the next one will, so the flow can wake then. While records keep
arriving (catching up a backlog) this adds nothing.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from operators.bands import ABSURD, MIN_REFERENCE, REFRESH, Bands, candle_outlier
from operators.bars import Bar, BarAggregator, BarBuilder
from operators.cohorts import CohortTracker, CohortValues
from operators.config import BandConfig, CohortConfig, SizeProxyConfig
from operators.dedup import RecentTrades
from operators.events import Candle, ControlCommand, Funding, Trade, TradeBlock, expand_blocks
from operators.market_columns import fold_block
from operators.size_proxy import ProxyValues, SizeProxy, bind
from operators.watermark import DEFAULT_SOURCE_IDLE_MS, QUORUM, InputPartitions, Progress

JUMP_CONFIRMATIONS = 50
DEFAULT_ALLOWED_LATENESS_MS = 5_000
DEFAULT_MAX_JUMP_MS = 3_600_000
MAX_PENDING_FUNDING = 1_000  # funding settlements remembered ahead of the closed bars
_UNSET = object()  # on_events: no partition's locals read yet


@dataclass(slots=True)
class Close:
    """A closed 5m bar with the cohort values at its close."""

    bar: Bar
    cohort: CohortValues | None
    size_proxy: ProxyValues | None = None  # only when the size proxy is on


@dataclass(slots=True)
class Late:
    """A trade or candle set aside (late, far ahead, an outlier), or a funding settlement
    already applied: a dead letter."""

    event: Trade | Candle | Funding
    reason: str


_CONFIG = (
    "bars_from_candles",
    "allowed_lateness_ms",
    "cohort_cfg",
    "max_jump_ms",
    "size_proxy_cfg",
    "bands_cfg",
    "source_idle_ms",
    "inputs",
)


@dataclass
class MarketState:
    symbol: str
    bars_from_candles: bool
    allowed_lateness_ms: int
    cohort_cfg: CohortConfig
    max_jump_ms: int = DEFAULT_MAX_JUMP_MS
    size_proxy_cfg: SizeProxyConfig = field(default_factory=SizeProxyConfig)
    bands_cfg: BandConfig = field(default_factory=BandConfig)
    source_idle_ms: int = DEFAULT_SOURCE_IDLE_MS
    inputs: InputPartitions | None = None  # the step's view of the Kafka input's partitions
    ahead: dict[str | None, list[Trade | Candle]] = field(default_factory=dict)  # by partition
    builder: BarBuilder = field(init=False)
    higher: list[BarAggregator] = field(init=False)
    cohorts: CohortTracker = field(init=False)
    size_proxy: SizeProxy | None = field(init=False)
    recent: RecentTrades = field(default_factory=RecentTrades)
    progress: Progress = field(default_factory=Progress)
    bands: Bands = field(default_factory=Bands)
    late_count: int = 0
    duplicate_count: int = 0
    outlier_count: int = 0
    # funding settlements passed on: the latest one the closed bars have reached (or an
    # older snapshot's latest), and those still ahead of them, in time order
    funding_ms: int | None = None
    funding_pending: list[int] = field(default_factory=list)

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
        bands_cfg: BandConfig | None = None,
        source_idle_ms: int = DEFAULT_SOURCE_IDLE_MS,
        inputs: InputPartitions | None = None,
    ) -> MarketState:
        """Bind the running settings (after a resume: the state holds none)."""
        self.bars_from_candles = bars_from_candles
        self.allowed_lateness_ms = self.builder.allowed_lateness_ms = allowed_lateness_ms
        self.cohort_cfg = self.cohorts.cfg = cohort_cfg
        self.max_jump_ms = max_jump_ms
        self.size_proxy_cfg = size_proxy_cfg or SizeProxyConfig()
        self.size_proxy = bind(self.size_proxy, self.size_proxy_cfg, cohort_cfg)
        self.bands_cfg = bands_cfg or BandConfig()
        self.source_idle_ms = source_idle_ms
        self.inputs = inputs
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Data only: the settings are bound again by `configure` on resume."""
        return {k: v for k, v in self.__dict__.items() if k not in _CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # snapshots from before deduplication, bands and per-partition progress
        state.setdefault("recent", RecentTrades())
        state.setdefault("duplicate_count", 0)
        state.setdefault("size_proxy", None)  # snapshots from before the size proxy
        state.setdefault("outlier_count", 0)
        state.setdefault("bands", Bands())
        state.setdefault("funding_ms", None)  # snapshots from before funding was deduplicated
        state.setdefault("funding_pending", [])
        if isinstance(state.get("ahead"), list):
            state["ahead"] = {None: state["ahead"]} if state["ahead"] else {}
        if "progress" not in state:
            progress = state["progress"] = Progress()
            hwm = state["builder"].max_event_ms
            if hwm is not None:
                progress.observe(None, hwm, 0, 1)
                progress.value = hwm
        self.__dict__.update(state)

    def on_tick(self, now_ms: int, idle_ms: int, out: list[Any]) -> None:
        """Processing-time progress: `idle_ms` of wall time passed since the last record.
        With Kafka input it adds nothing while a partition is still being read up to its
        end (`InputPartitions.catching_up`: the records close the bars meanwhile), and, as
        `recheck`, it never closes bars past a command on its way (`cap_ms`)."""
        hwm = self.builder.max_event_ms
        if hwm is None or idle_ms <= 0 or self._backlog(now_ms):
            return
        tick, cap = min(hwm + idle_ms, now_ms), self._command_cap()
        self._closed(self.builder.advance_to(tick if cap is None else min(tick, cap)), out)

    def tick_due_ms(self, now_ms: int, last_arrival_ms: int) -> int | None:
        """Live: the wall time at which `on_tick` closes the earliest open bar if no record
        arrives before it (None: no bar yet, or none a tick can close now). That is when
        the event time reached by the latest record plus the wall time since it arrived,
        and the wall clock itself, pass the bar's end plus the allowed lateness."""
        b = self.builder
        if b.max_event_ms is None or self._backlog(now_ms):
            return None
        start = b.next_start_ms if b.next_start_ms is not None else min(b.buckets, default=None)
        if start is None:
            return None
        due = start + b.width_ms + b.allowed_lateness_ms
        cap = self._command_cap()
        if cap is not None and cap < due:
            return None  # not before the command has reached this step
        return max(due, last_arrival_ms + due - b.max_event_ms)

    def _backlog(self, now_ms: int) -> bool:
        """Kafka input still being read up to its end (`InputPartitions.catching_up`)."""
        return self.inputs is not None and self.inputs.catching_up(
            now_ms, self.source_idle_ms, self.progress.started_ms
        )

    def _command_cap(self) -> int | None:
        """Not past a command held by the commands step or on its way (Kafka input)."""
        return None if self.inputs is None else self.inputs.cap_ms(self.symbol)

    def on_event(self, e: Any, out: list[Any], now_ms: int = 0) -> None:
        """Append what `e` produces to `out` (in order); `now_ms` is the wall clock (it
        tells which input partitions are idle)."""
        part = e.part
        self.progress.arrivals[part] = now_ms  # whatever becomes of it: the partition is live
        if self.inputs is not None and type(e) is ControlCommand:
            self.inputs.arrived(self.symbol, e.ts_event_ms)
        drives_bars = isinstance(e, Candle) if self.bars_from_candles else isinstance(e, Trade)
        if drives_bars:
            seen = self.progress.source_progress(part)
            if part is None and self.builder.next_start_ms is None and not self.builder.buckets:
                # A file run's first market record: the funding read before it (a span's
                # rates start hours before its candles) is no reference for a jump.
                seen = None
            closed = self.builder.next_start_ms
            if seen is not None and closed is not None and closed > seen:
                # live, the wall clock closed a quiet symbol's bars up to here: a record
                # near them is no jump, however long ago its partition's last one was
                seen = closed
            if seen is not None and e.ts_event_ms > seen + self.max_jump_ms:
                held = self.ahead.setdefault(part, [])
                held.append(e)
                if len(held) >= JUMP_CONFIRMATIONS:  # its own partition confirms the jump
                    del self.ahead[part]
                    for h in held:
                        self._market(h, out, now_ms)
                return
            if (
                seen is not None
                and e.ts_event_ms < seen - self.max_jump_ms
                and not self.builder.is_late(e.ts_event_ms)
            ):
                self.late_count += 1
                out.append(
                    Late(
                        e,
                        f"far out of order: event time {e.ts_event_ms} is "
                        f"{(seen - e.ts_event_ms) / 3.6e6:.1f} h before its input "
                        f"(max jump {self.max_jump_ms / 3.6e6:.1f} h)",
                    )
                )
                return
            if self.ahead.get(part):
                self._reject_ahead(part, out)
        self._market(e, out, now_ms)

    def on_events(
        self,
        events: Sequence[Any],
        out: list[Any],
        now_ms: int = 0,
        failed: Callable[[Any, Exception], None] | None = None,
    ) -> None:
        """One input batch of this symbol's records, in order: exactly what `on_event` for
        each gives (bars, dead letters with their reasons, counts, state), only faster.

        The ordinary trade (its partition known and past its first trades, in line with
        its progress, not seen before, not late, inside the bands) is judged and folded
        here with the checks read once per partition and per bar; anything else (a
        candle, funding, a duplicate, a late trade, an outlier, a jump, a partition with
        trades held) takes `on_event` itself. `failed(e, exc)` hears of a record that
        raised (without it, the exception propagates)."""
        if self.bars_from_candles:
            for e in expand_blocks(events):
                try:
                    self.on_event(e, out, now_ms)
                except Exception as exc:
                    if failed is None:
                        raise
                    failed(e, exc)
            return
        progress, builder, bands, ahead = self.progress, self.builder, self.bands, self.ahead
        arrivals, sources, buckets = progress.arrivals, progress.sources, builder.buckets
        by_bar, cohorts_add, proxy = self.recent.by_bar, self.cohorts.add_trade, self.size_proxy
        width, lateness, max_jump = builder.width_ms, builder.allowed_lateness_ms, self.max_jump_ms
        idle_ms = self.source_idle_ms
        same_width = self.recent.width_ms == width  # one bar start serves dedup and fold
        max_dev, max_multiple = self.bands_cfg.max_price_deviation, self.bands_cfg.max_size_multiple
        trade_type, refresh_every, min_reference = Trade, REFRESH, MIN_REFERENCE
        heapreplace = heapq.heapreplace
        part: Any = _UNSET  # the partition the locals below were read for (_UNSET: none)
        for e in events:
            try:
                if type(e) is not trade_type:
                    if type(e) is TradeBlock:
                        fold_block(self, e, out, now_ms, failed)
                    else:
                        self.on_event(e, out, now_ms)
                    part = _UNSET
                    continue
                if e.part is not part:  # read the partition's clock and reference once
                    part = e.part
                    arrivals[part] = now_ms  # as on_event: the partition is live
                    clock, ref = sources.get(part), bands.refs.get(part)
                    if (
                        clock is None  # its first record: no progress to judge a jump by
                        or ref is None
                        or ref.ref_px is None  # its first trades: judged by another's
                        or ahead.get(part)  # trades held back: this one confirms or rejects
                        or (part is None and builder.next_start_ms is None and not buckets)
                        or any(b.parts is not None for b in buckets.values())  # candles'
                    ):
                        self.on_event(e, out, now_ms)
                        part = _UNSET
                        continue
                    latest, quorum = clock.latest, clock.quorum
                    clock_full = len(latest) >= quorum
                    ref_px, ref_qty_max = ref.ref_px, ref.ref_qty * max_multiple
                    window_px, window_qty = ref.px, ref.qty
                    # recheck: the symbol's progress is the slowest source's, and only this
                    # partition's clock moves during its run (Progress.advance, `without`)
                    if len(sources) == 1 and part is None:  # one merged, ordered stream
                        counts, others = True, None
                    else:
                        counts, others = progress.without(part, now_ms, idle_ms, self.inputs)
                    cap = self._command_cap()
                    value, next_start = progress.value, builder.next_start_ms
                    max_event = builder.max_event_ms
                ts, px, qty = e.ts_event_ms, e.px, e.qty
                try:  # the checks change nothing: anything unusual goes to on_event as it came
                    start = ts - ts % width
                    unusual = (
                        ts > latest[0] + max_jump  # far ahead: held
                        or ts < latest[0] - max_jump  # far behind: a dead letter
                        or (next_start is not None and start < next_start)  # late
                        or px >= ABSURD
                        or qty >= ABSURD
                        or px * qty >= ABSURD
                        or abs(px / ref_px - 1.0) > max_dev  # outside the bands
                        or qty > ref_qty_max
                    )
                    if not unusual:
                        dedup_start = start if same_width else ts - ts % self.recent.width_ms
                        venues = by_bar.get(dedup_start)
                        ids = None if venues is None else venues.get(e.venue)
                        unusual = ids is not None and e.trade_id in ids  # a duplicate
                except Exception:  # a value they cannot judge: on_event says what is wrong
                    unusual = True
                if unusual:
                    self.on_event(e, out, now_ms)
                    part = _UNSET
                    continue
                # the ordinary trade: what _market does with it, in the same order
                if ids is None:
                    if venues is None:
                        venues = by_bar[dedup_start] = {}
                    ids = venues[e.venue] = set()
                ids.add(e.trade_id)
                window_px.append(px)
                window_qty.append(qty)
                if ts > ref.last_ts_ms:
                    ref.last_ts_ms = ts
                ref.since_refresh += 1
                if ref.since_refresh >= refresh_every and len(window_px) >= min_reference:
                    ref.refresh()
                    ref_px, ref_qty_max = ref.ref_px, ref.ref_qty * max_multiple
                bucket = buckets.get(start)  # not late: it folds into its bar
                if bucket is None:
                    builder.fold_trade(ts, px, qty)
                else:
                    bucket.add_trade(ts, px, qty)
                if e.buyer is not None or e.seller is not None:
                    cohorts_add(ts, px, qty, e.buyer, e.seller)
                if proxy is not None:
                    proxy.add_trade(ts, px, qty, e.side)
                # _observe: the partition's clock, then the symbol's progress
                if clock_full:  # SourceClock.add: the `quorum` latest times
                    if ts > latest[0]:
                        heapreplace(latest, ts)
                else:
                    heapq.heappush(latest, ts)
                    clock_full = len(latest) >= quorum
                if counts:
                    p = latest[0]
                    if others is not None and others < p:
                        p = others
                else:
                    p = others
                if p is not None and cap is not None and cap < p:
                    p = cap
                if p is not None and (value is None or p > value):  # progress moved
                    progress.value = value = p
                    if next_start is not None and value < next_start + width + lateness:
                        if max_event is None or value > max_event:
                            builder.max_event_ms = max_event = value  # nothing to close yet
                        continue
                    self._closed(builder.advance(value), out)
                else:
                    continue
                value, next_start = progress.value, builder.next_start_ms
                max_event = builder.max_event_ms
            except Exception as exc:
                if failed is None:
                    raise
                failed(e, exc)
                part = _UNSET

    def _reject_ahead(self, part: str | None, out: list[Any]) -> None:
        seen = self.progress.source_progress(part) or 0
        held = self.ahead.pop(part)
        for h in held:
            out.append(
                Late(
                    h,
                    f"far out of order: event time {h.ts_event_ms} is "
                    f"{(h.ts_event_ms - seen) / 3.6e6:.1f} h past its input "
                    f"(max jump {self.max_jump_ms / 3.6e6:.1f} h, not confirmed by "
                    f"{JUMP_CONFIRMATIONS} records in a row)",
                )
            )
        self.late_count += len(held)

    def _market(self, e: Any, out: list[Any], now_ms: int) -> None:
        if isinstance(e, Trade):
            if self.recent.seen(e.ts_event_ms, e.venue, e.trade_id):
                self.duplicate_count += 1  # a real trade's time: its partition progresses
                self._observe(e.part, e.ts_event_ms, now_ms, out, trade=True)
                return
            if not self.bars_from_candles and self.builder.is_late(e.ts_event_ms):
                self._late(e, out)  # late says more than a price from another time
                return
            reason = self.bands.check_trade(e.part, e.ts_event_ms, e.px, e.qty, self.bands_cfg)
            if reason is not None:
                self._outlier(e, reason, out)
                return
            if self.bars_from_candles:
                if not self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller):
                    self._late(e, out)
                    return
            elif self.builder.fold_trade(e.ts_event_ms, e.px, e.qty):
                self.cohorts.add_trade(e.ts_event_ms, e.px, e.qty, e.buyer, e.seller)
            else:
                self._late(e, out)
                return
            if self.size_proxy is not None:
                self.size_proxy.add_trade(e.ts_event_ms, e.px, e.qty, e.side)
            self._observe(e.part, e.ts_event_ms, now_ms, out, trade=True)
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
            reason = candle_outlier(e.high, e.volume)
            if reason is not None:
                self._outlier(e, reason, out)
                return
            if not self.builder.fold_candle(
                e.ts_event_ms, e.interval_ms, e.open, e.high, e.low, e.close, e.volume
            ):
                self._late(e, out)
                return
            self._observe(e.part, e.ts_event_ms + e.interval_ms, now_ms, out)
        else:
            if type(e) is Funding and (why := self._funding_seen(e.ts_event_ms)):
                out.append(Late(e, why))
                return
            out.append(e)
            # A file run's one stream is in availability order with funding first on a tie:
            # a rate at T says that everything available before T is in, not that the
            # candle closing at T is (it follows). Kafka partitions are each their own.
            ts = e.ts_event_ms - 1 if e.part is None else e.ts_event_ms
            self._observe(e.part, ts, now_ms, out)

    def _funding_seen(self, ts: int) -> str | None:
        """Why a funding settlement at `ts` is not passed on, or None (it is, and remembered).
        A settlement is paid once: the live ingestor's backfill republishes one it sent hours
        before (its dedup window long past), or after a restart; Kafka may deliver a record
        twice. So one passed on before (still ahead of the closed bars, or reached by them)
        is refused, and so is one older than a settlement the closed bars have reached. One
        stamped far ahead (a wrong clock, a hostile producer) waits alone for its bar: it
        used to shut out every real settlement before it (38 in a 4-day replay, every cash
        and equity figure after it wrong)."""
        closed, pending = self.builder.next_start_ms, self.funding_pending
        while pending and closed is not None and pending[0] <= closed:
            reached = pending.pop(0)
            self.funding_ms = max(reached, self.funding_ms or reached)
        if self.funding_ms is not None and ts <= self.funding_ms:
            return (
                f"funding at {ts} not applied: the settlement at {self.funding_ms} was "
                "(a duplicate, or older than it)"
            )
        i = bisect.bisect_left(pending, ts)
        if i < len(pending) and pending[i] == ts:
            return f"funding at {ts} not applied: it was passed on already (a duplicate)"
        if closed is not None and ts <= closed:  # its bar has closed: paid at the next one
            self.funding_ms = ts
        else:
            pending.insert(i, ts)
            del pending[MAX_PENDING_FUNDING:]  # a flood from far ahead: the farthest forgotten
        return None

    def _observe(
        self, part: str | None, ts_ms: int, now_ms: int, out: list[Any], trade: bool = False
    ) -> None:
        """One more record from `part`: close the bars the symbol's progress has passed.
        Trades that drive bars are many and single, so a quorum of them moves their
        partition's progress; candles and the other streams are aggregates or rare. A file
        run is one ordered stream: the quorum of its bar-driving kind."""
        quorum = 1 if self.bars_from_candles or not (trade or part is None) else QUORUM
        self.progress.observe(part, ts_ms, now_ms, quorum)
        self.recheck(now_ms, out)

    def recheck(self, now_ms: int, out: list[Any]) -> None:
        """No new record: close the bars the symbol's progress has passed meanwhile (other
        partitions moved on, or went idle)."""
        if not self.progress.sources:
            return
        before = self.progress.value
        cap = self._command_cap()
        p = self.progress.advance(now_ms, self.source_idle_ms, self.inputs, cap)
        # a candle may complete its bar without moving progress; a trade needs progress
        if p is not None and (p != before or self.bars_from_candles):
            self._closed(self.builder.advance(p), out)

    def flush(self, out: list[Any]) -> None:
        """End of a finite input: close every open bar."""
        for part in list(self.ahead):
            self._reject_ahead(part, out)
        self._closed(self.builder.flush(), out)
        for agg in self.higher:
            b = agg.flush()
            if b is not None:
                out.append(b)

    def _outlier(self, e: Trade | Candle, reason: str, out: list[Any]) -> None:
        self.outlier_count += 1
        out.append(Late(e, reason))

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
