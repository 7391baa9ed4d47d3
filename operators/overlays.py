"""The context join: at each 5m close t, what was known at t, and how old it was.

Higher timeframes are usable from their close (a 1h bar opening 13:00 is usable from
14:00). External inputs (overlay signals, cohort snapshots, funding, control commands)
wait in as-of buffers ordered by event time; the join takes the latest value with event
time <= t, so a value that arrived early (event time > t) is never used for t: no
lookahead, whatever the arrival order. A value older than `stale_intervals` x its
interval is neutral and flagged stale; a missing one is neutral. The staleness limits are
settings, passed in at every close (`Staleness`), never kept in the join's state.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from operators.bars import TIMEFRAME_MS, Bar
from operators.cohorts import CohortValues
from operators.config import StrategyConfig
from operators.events import CohortSnapshot, ControlCommand, Funding, OverlaySignal
from operators.size_proxy import ProxyValues

T = TypeVar("T")


class AsOf(Generic[T]):
    """Values ordered by event time; `latest(t)` is the last one with time <= t."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[T] = []

    def add(self, ts_ms: int, value: T) -> None:
        i = bisect.bisect_right(self.times, ts_ms)  # equal times keep arrival order
        self.times.insert(i, ts_ms)
        self.values.insert(i, value)

    def latest(self, t_ms: int) -> tuple[int, T] | None:
        """The last value at or before t_ms; older ones are dropped (never needed again)."""
        i = bisect.bisect_right(self.times, t_ms)
        if i == 0:
            return None
        if i > 1:
            del self.times[: i - 1]
            del self.values[: i - 1]
        return self.times[0], self.values[0]

    def take_due(self, t_ms: int) -> list[T]:
        """Remove and return every value with time <= t_ms, in time order."""
        i = bisect.bisect_right(self.times, t_ms)
        due = self.values[:i]
        del self.times[:i]
        del self.values[:i]
        return due


@dataclass(slots=True)
class OverlayView:
    timeframe: str
    trend: float  # bar return, close over open; 0 when stale or missing
    close_ms: int | None
    age_ms: int | None
    stale: bool
    missing: bool
    ext_signal: float = 0.0  # external overlay signal, 0 when stale or missing
    ext_confidence: float = 0.0
    ext_age_ms: int | None = None
    ext_stale: bool = False

    @property
    def usable_trend(self) -> float | None:
        return None if self.stale or self.missing else self.trend


@dataclass(slots=True)
class CohortView:
    s_top: float
    s_bot: float
    s_mood: float
    source: str  # "trades", "external" or "none"
    age_ms: int | None
    stale: bool


@dataclass(slots=True)
class BarContext:
    """One 5m close with everything joined to it; features and prediction are added later."""

    bar: Bar
    cohort: CohortView
    overlays: dict[str, OverlayView]
    funding_rate: float
    funding_due: list[Funding]
    controls_due: list[ControlCommand]
    features: dict[str, float] | None = None
    p_up: float | None = None
    p_up_bma: float | None = None
    model_id: str = ""
    size_proxy: ProxyValues | None = None  # the trade-size cohort proxy, when it is on
    closed_ns: int = 0  # perf_counter_ns when the bar left the market step (latency metric)


@dataclass(frozen=True, slots=True)
class Staleness:
    """How old an input may be, in its own intervals, before it is stale and neutral."""

    overlay_intervals: float  # gates.overlay_stale_intervals
    cohort_intervals: float  # cohorts.stale_intervals (5m bars)

    @classmethod
    def of(cls, cfg: StrategyConfig) -> Staleness:
        return cls(cfg.gates.overlay_stale_intervals, cfg.cohorts.stale_intervals)


@dataclass
class ContextJoin:
    last_bars: dict[str, Bar] = field(default_factory=dict)
    external: dict[str, AsOf[OverlaySignal]] = field(
        default_factory=lambda: {"15m": AsOf(), "1h": AsOf()}
    )
    cohorts: AsOf[CohortSnapshot] = field(default_factory=AsOf)
    funding_rates: AsOf[float] = field(default_factory=AsOf)
    funding: AsOf[Funding] = field(default_factory=AsOf)
    controls: AsOf[ControlCommand] = field(default_factory=AsOf)

    def add(self, item: Any) -> None:
        if isinstance(item, Bar):
            self.last_bars[item.timeframe] = item
        elif isinstance(item, OverlaySignal):
            self.external[item.timeframe].add(item.ts_event_ms, item)
        elif isinstance(item, CohortSnapshot):
            self.cohorts.add(item.ts_event_ms, item)
        elif isinstance(item, Funding):
            self.funding_rates.add(item.ts_event_ms, item.rate)
            self.funding.add(item.ts_event_ms, item)
        elif isinstance(item, ControlCommand):
            self.controls.add(item.ts_event_ms, item)
        else:
            raise TypeError(f"context join cannot use {type(item).__name__}")

    def at_close(self, bar: Bar, internal: CohortValues | None, limits: Staleness) -> BarContext:
        t = bar.end_ms
        rate = self.funding_rates.latest(t)
        return BarContext(
            bar=bar,
            cohort=self._cohort(t, internal, limits.cohort_intervals),
            overlays={tf: self._overlay(tf, t, limits.overlay_intervals) for tf in ("15m", "1h")},
            funding_rate=0.0 if rate is None else rate[1],
            funding_due=self.funding.take_due(t),
            controls_due=self.controls.take_due(t),
        )

    def _overlay(self, tf: str, t: int, stale_intervals: float) -> OverlayView:
        limit = stale_intervals * TIMEFRAME_MS[tf]
        b = self.last_bars.get(tf)
        if b is None or b.end_ms > t:
            view = OverlayView(tf, 0.0, None, None, stale=False, missing=True)
        else:
            age = t - b.end_ms
            stale = age > limit or b.count == 0
            view = OverlayView(tf, 0.0 if stale else b.ret, b.end_ms, age, stale, False)
        ext = self.external[tf].latest(t)
        if ext is not None:
            age = t - ext[0]
            view.ext_age_ms = age
            view.ext_stale = age > limit
            if not view.ext_stale:
                view.ext_signal, view.ext_confidence = ext[1].signal, ext[1].confidence
        return view

    def _cohort(self, t: int, internal: CohortValues | None, stale_intervals: float) -> CohortView:
        if internal is not None and internal.ready:
            return CohortView(internal.s_top, internal.s_bot, internal.s_mood, "trades", 0, False)
        snap = self.cohorts.latest(t)
        if snap is None:
            return CohortView(0.0, 0.0, 0.0, "none", None, False)
        age = t - snap[0]
        if age > stale_intervals * TIMEFRAME_MS["5m"]:
            return CohortView(0.0, 0.0, 0.0, "external", age, True)
        s = snap[1]
        return CohortView(s.s_top, s.s_bot, s.s_mood, "external", age, False)
