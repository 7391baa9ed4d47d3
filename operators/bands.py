"""Price and size bands: a trade that passes the schema but lies about the market.

A price of 1e308 or a thousand times the market, or a size of 1e308, is a valid positive
float; folded into a bar it overflows volume sums, features and position sizing. Each
symbol keeps a reference: the median of its last `REFERENCE_TRADES` trade prices and
sizes (refreshed every `REFRESH` trades, so the cost per trade is a deque append). A trade
whose price is more than `max_price_deviation` from the reference, or whose size is more
than `max_size_multiple` times the reference size, is an outlier (dead-lettered and
counted by the market step, never folded in).

Every trade, outlier or not, enters the reference window: the median ignores a minority
of lies, and a real level shift (a crash) confirms itself once most recent trades agree.
Each input partition keeps its own reference (`Bands`), so trades read ahead on another
partition (hours later, at another price level) never judge the real ones. Before a
partition has `MIN_REFERENCE` trades, its trades are judged by another partition's
reference if that one saw trades within `NEARBY_MS` of event time; with none, only absurd
values (beyond `ABSURD`, where sums of a few records overflow or lose every digit of a
real price) are refused.

Candles (bars of symbols traded from a venue's 1m or 5m candles) are checked for absurd
values only: a band over the last candles spans hours, so it would refuse a real crash
(the 2025-10-10 BTC candles fall 16 % below their median) for hours.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from operators.config import BandConfig

REFERENCE_TRADES = 128
REFRESH = 16
MIN_REFERENCE = 16
NEARBY_MS = 300_000
ABSURD = 1e12  # a price, size or notional past this is never a market


def _absurd(name: str, v: float) -> str | None:
    if v >= ABSURD:
        return f"outlier: {name} {v!r} is absurd (>= {ABSURD:g})"
    return None


def candle_outlier(high: float, volume: float) -> str | None:
    """The reason a candle is absurd, or None (its other prices are at most its high)."""
    return _absurd("high", high) or _absurd("volume", volume)


@dataclass
class Reference:
    """The recent reference price and size of one input partition's trades."""

    px: deque[float] = field(default_factory=lambda: deque(maxlen=REFERENCE_TRADES))
    qty: deque[float] = field(default_factory=lambda: deque(maxlen=REFERENCE_TRADES))
    ref_px: float | None = None
    ref_qty: float | None = None
    since_refresh: int = 0
    last_ts_ms: int = 0  # event time of the latest trade it saw

    def remember(self, ts_ms: int, px: float, qty: float) -> None:
        self.px.append(px)
        self.qty.append(qty)
        if ts_ms > self.last_ts_ms:
            self.last_ts_ms = ts_ms
        self.since_refresh += 1
        if self.since_refresh >= REFRESH and len(self.px) >= MIN_REFERENCE:
            self.refresh()

    def refresh(self) -> None:
        """The reference becomes the median of the window (the market step's batched path
        appends to the window itself and calls this when `remember` would)."""
        self.since_refresh = 0
        self.ref_px = statistics.median(self.px)
        self.ref_qty = statistics.median(self.qty)

    def judge(self, px: float, qty: float, cfg: BandConfig) -> str | None:
        """Why `px`/`qty` lie outside this reference's bands, or None."""
        return self._price(px, cfg) or self._size(qty, cfg)

    def _price(self, px: float, cfg: BandConfig) -> str | None:
        ref = self.ref_px
        if ref is None or abs(px / ref - 1.0) <= cfg.max_price_deviation:
            return None
        return (
            f"outlier: price {px!r} is {abs(px / ref - 1.0):.1%} from the reference "
            f"{ref:g} (median of the last {len(self.px)} trades; max deviation "
            f"{cfg.max_price_deviation:.0%}, setting bands.max_price_deviation)"
        )

    def _size(self, qty: float, cfg: BandConfig) -> str | None:
        ref = self.ref_qty
        if ref is None or qty <= ref * cfg.max_size_multiple:
            return None
        return (
            f"outlier: size {qty!r} is {qty / ref:,.0f} times the reference {ref:g} "
            f"(median of the last {len(self.qty)} trades; max {cfg.max_size_multiple:g} "
            "times, setting bands.max_size_multiple)"
        )


@dataclass
class Bands:
    """One symbol's references, one per input partition (None: a file run's one stream)."""

    refs: dict[str | None, Reference] = field(default_factory=dict)

    def check_trade(
        self, part: str | None, ts_ms: int, px: float, qty: float, cfg: BandConfig
    ) -> str | None:
        """The reason the trade is an outlier, or None; it enters its partition's reference
        either way. (Once per trade: the usual case is two comparisons.)"""
        ref = self.refs.get(part)
        if ref is None:
            ref = self.refs[part] = Reference()
        reason = None
        if px >= ABSURD or qty >= ABSURD or px * qty >= ABSURD:
            reason = _absurd("price", px) or _absurd("size", qty) or _absurd("notional", px * qty)
        else:
            judge = ref if ref.ref_px is not None else self._nearby(ts_ms)
            if judge is not None and (
                abs(px / judge.ref_px - 1.0) > cfg.max_price_deviation  # type: ignore[operator]
                or qty > judge.ref_qty * cfg.max_size_multiple  # type: ignore[operator]
            ):
                reason = judge.judge(px, qty, cfg)
        ref.remember(ts_ms, px, qty)
        return reason

    def _nearby(self, ts_ms: int) -> Reference | None:
        """Another partition's reference from trades near `ts_ms` in event time."""
        for ref in self.refs.values():
            if ref.ref_px is not None and abs(ref.last_ts_ms - ts_ms) <= NEARBY_MS:
                return ref
        return None
