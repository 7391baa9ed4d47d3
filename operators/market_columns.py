"""The market step over a TradeBlock: ordinary trades folded with array arithmetic.

`MarketState.on_events` folds an ordinary trade inline, one Python step per trade. A file's
block of trades (operators/events.py `TradeBlock`) arrives as columns, so its ordinary
trades are judged and folded a run at a time instead, giving exactly what `on_event`
gives for each (tests/test_market_batch_parity.py holds them equal on fuzzed blocks):

- the partition's clock (the `quorum` latest times, operators/watermark.py): the block's
  times are in order and start at or after the clock's latest, so after k trades the clock
  is the last `quorum` of (clock, times[:k]) and its progress their first;
- the bands' reference (operators/bands.py): every trade enters the window, so the
  reference each trade is judged by is the median of a known slice of (window, prices),
  refreshed every `REFRESH` trades; the medians come from numpy in one call (the same
  arithmetic as `statistics.median`: the mean of the two middle values);
- the checks that send a trade the per-record way (far ahead of its clock, absurd,
  outside the bands, late, seen before) become masks; the run stops before the first
  trade any of them flags, and that trade takes `on_event`;
- the symbol's progress moves with the clock; the run is cut after the trade whose
  progress closes a bar, the bar is closed as `on_event` closes it, and the run goes on;
- each bar's open, high, low, close, volume (summed in order) and count from slices.

Anything this does not take (a partition's first trades, held-back jumps, candles, times
out of order) goes the per-record way, `SCALAR_TRADES` trades at a time. Before the
symbol's first bar is emitted, runs take trades as after it (nothing is late yet, and
the first bar to close is the earliest open one, as `BarBuilder._close_until` closes it).
From Kafka the first close waits for every input partition's first mark, and a bench's
2 × 1M trades took their first 60,000-80,000 one by one (about 4% of its CPU time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from operators.bands import ABSURD, REFERENCE_TRADES, REFRESH

if TYPE_CHECKING:
    from operators.events import TradeBlock
    from operators.market import MarketState

MIN_BLOCK = 32  # a shorter block goes the per-record way (arrays cost more than they save)
MIN_RUN, MAX_RUN = 64, 4_096  # rows judged at once: MAX_RUN, or twice how far the last
# run got before an unusual row stopped it (doubling again while runs fold whole)
SHORT_RUN = 64  # a run stopped sooner by an unusual row: the next rows go one by one ...
SCALAR_TRADES = 256  # ... this many (also when a run cannot start)
_NO_TIME = np.iinfo(np.int64).min
Failed = Callable[[Any, Exception], None] | None


def in_order(b: TradeBlock) -> bool:
    """Whether the block's event times never decrease (the only blocks folded here)."""
    return len(b) >= MIN_BLOCK and bool((b.ts[1:] >= b.ts[:-1]).all())


def fold_block(st: MarketState, b: TradeBlock, out: list[Any], now_ms: int, failed: Failed) -> None:
    """The whole block: runs of ordinary trades folded here, the rest through
    `st.on_events` as `Trade`s. A run judges up to `size` rows at once and stops at the
    first unusual one, so rows that are often unusual (a doubled feed, a stretch of late
    or outlying trades) would cost a run each: after a short run the next SCALAR_TRADES
    rows go one by one, and the size follows how far runs get."""
    if not in_order(b):
        st.on_events(b.trades(), out, now_ms, failed)
        return
    i, n, size = 0, len(b), MAX_RUN
    while i < n:
        closed = st.builder.next_start_ms
        if closed is not None and b.ts[i] < closed:  # late rows: all of them one by one
            j = i + int(np.searchsorted(b.ts[i:], closed, "left"))
            st.on_events(b.trades(i, j), out, now_ms, failed)
            i = j
            continue
        j, k = fold_run(st, b, i, out, now_ms, failed, size)
        if k == 1 and j - i < SHORT_RUN:
            k = SCALAR_TRADES
        size = min(MAX_RUN, 2 * size) if k == 0 else max(MIN_RUN, min(MAX_RUN, 2 * (j - i)))
        if k:
            st.on_events(b.trades(j, j + k), out, now_ms, failed)
        i = min(n, j + k)


def fold_run(
    st: MarketState,
    b: TradeBlock,
    i: int,
    out: list[Any],
    now_ms: int,
    failed: Failed = None,
    size: int = MAX_RUN,
) -> tuple[int, int]:
    """Fold the ordinary trades among rows i..i+size-1 of `b` into `st`, closing bars on
    the way. Returns (j, k): rows i..j-1 are folded; the next `k` rows must take the
    per-record way (1: row j is unusual; SCALAR_TRADES: the state is not one a run can
    start from, or the arrays could not be computed). A bar close that raises is reported
    with the trade that closed it (`failed`, as one by one) and the run ends there."""
    part = b.part
    progress, builder, bands = st.progress, st.builder, st.bands
    progress.arrivals[part] = now_ms  # as on_event: the partition is live
    clock, ref = progress.sources.get(part), bands.refs.get(part)
    buckets = builder.buckets
    if (
        clock is None
        or not clock.latest
        or ref is None
        or ref.ref_px is None
        or ref.ref_qty is None
        or len(ref.px) < REFERENCE_TRADES
        or ref.since_refresh >= REFRESH
        or st.ahead.get(part)
        or (builder.next_start_ms is None and not buckets)
        or any(x.parts is not None for x in buckets.values())  # candles' bars
        or st.recent.width_ms != builder.width_ms
        or int(b.ts[i]) < max(clock.latest)
    ):
        return i, SCALAR_TRADES
    try:
        plan = _plan(st, b, i, min(len(b), i + size), now_ms, clock, ref)
    except Exception:  # numbers the arrays cannot take: one by one says what is wrong
        return i, SCALAR_TRADES
    m, n, times, held, quorum, refreshed, ref_px, ref_qty, unusual, starts, p, moves = plan
    width, lateness = builder.width_ms, builder.allowed_lateness_ms
    px_l, qty_l, ts_l = (c[i:m].tolist() for c in (b.px, b.qty, b.ts))
    ids, venue = b.trade_id, b.venue
    proxy = st.size_proxy
    buyers, sellers, cohorts_add = b.buyer, b.seller, st.cohorts.add_trade
    sides = b.side[i:m].tolist() if proxy is not None else None
    k = 0
    while k < n:
        next_start, value = builder.next_start_ms, progress.value
        if next_start is None:  # no bar emitted yet: none is late, and the first to close
            next_start = min(min(buckets), int(starts[k]))  # is the earliest (_close_until)
        bad = unusual[k:] | (starts[k:] < next_start)  # late: its bar was emitted
        u = k + int(bad.argmax()) if bad.any() else n
        close = None  # the row whose progress closes a bar
        moved = None
        if moves and u > k:
            run_p = p[k:u]
            floor = _NO_TIME if value is None else value
            moved = run_p > np.maximum.accumulate(np.concatenate(([floor], run_p[:-1])))
            closing = moved & (run_p >= next_start + width + lateness)
            if closing.any():
                close = k + int(closing.argmax())
        end = _remember(
            st.recent.by_bar, starts, ids, venue, i, k, u if close is None else close + 1
        )
        if close is not None and close >= end:
            close = None  # a trade seen before comes first
        if end > k:
            _fold(builder, starts, ts_l, px_l, qty_l, k, end)
            if proxy is not None:
                for j in range(k, end):
                    proxy.add_trade(ts_l[j], px_l[j], qty_l[j], sides[j])  # type: ignore[index]
            if buyers is not None or sellers is not None:  # the address cohorts' flows
                for j in range(k, end):
                    by = None if buyers is None else buyers[i + j]
                    se = None if sellers is None else sellers[i + j]
                    if by is not None or se is not None:
                        cohorts_add(ts_l[j], px_l[j], qty_l[j], by, se)
            ref.px.extend(px_l[k:end])
            ref.qty.extend(qty_l[k:end])
            ref.since_refresh = (ref.since_refresh + end - k) % REFRESH
            last = int(np.searchsorted(refreshed, end, "left"))
            ref.ref_px, ref.ref_qty = ref_px[last], ref_qty[last]
            if ts_l[end - 1] > ref.last_ts_ms:
                ref.last_ts_ms = ts_l[end - 1]
            clock.latest[:] = times[max(0, len(held) + end - quorum) : len(held) + end].tolist()
        if moved is not None:  # progress moved without closing a bar: as _observe
            quiet = np.flatnonzero(moved[: (end if close is None else close) - k])
            if len(quiet):
                progress.value = to = int(run_p[quiet[-1]])
                if builder.max_event_ms is None or to > builder.max_event_ms:
                    builder.max_event_ms = to
        if close is not None:
            progress.value = int(p[close])
            try:
                st._closed(builder.advance(progress.value), out)
            except Exception as exc:  # as one by one: the closing trade is reported
                if failed is None:
                    raise
                failed(b.trades(i + close, i + close + 1)[0], exc)
                return i + end, 0
        elif end < n:
            return i + end, 1  # row `end` is unusual, or seen before
        k = end
    return m, 0


def _plan(
    st: MarketState, b: TradeBlock, i: int, m: int, now_ms: int, clock: Any, ref: Any
) -> tuple[Any, ...]:
    """What rows i..m-1 meet if they are all folded: the partition's clock, the bands'
    references, which rows are unusual, each bar's start and the symbol's progress."""
    ts, px, qty = b.ts[i:m], b.px[i:m], b.qty[i:m]
    n = m - i
    progress, cfg = st.progress, st.bands_cfg

    # the clock before and after each trade: `quorum` latest of (clock, times so far)
    quorum = clock.quorum
    held = sorted(clock.latest)
    times = np.concatenate((np.array(held, dtype=np.int64), ts))
    seen = np.arange(n) + len(held)  # times the clock has seen before each trade
    clock_before = times[np.maximum(seen - quorum, 0)]
    clock_after = times[np.maximum(seen + 1 - quorum, 0)]

    # the reference each trade is judged by: refreshed after trades `refreshed`
    refreshed = np.arange(REFRESH - 1 - ref.since_refresh, n, REFRESH)
    ref_px, ref_qty = [ref.ref_px], [ref.ref_qty]
    if len(refreshed):
        for col, window, refs in ((px, ref.px, ref_px), (qty, ref.qty, ref_qty)):
            values = np.concatenate((np.fromiter(window, np.float64, REFERENCE_TRADES), col))
            slices = sliding_window_view(values, REFERENCE_TRADES)[refreshed + 1]
            refs += _medians(slices).tolist()
    judged_by = np.searchsorted(refreshed, np.arange(n), "left")
    by_px, by_qty = np.array(ref_px)[judged_by], np.array(ref_qty)[judged_by]

    with np.errstate(over="ignore"):  # 1e308 * 2 is inf: absurd, as it is one by one
        unusual = (
            # far ahead: held (a difference, so any max_jump_ms compares, as Python's ints)
            (ts - clock_before > st.max_jump_ms)
            | (px >= ABSURD)
            | (qty >= ABSURD)
            | (px * qty >= ABSURD)
            | (np.abs(px / by_px - 1.0) > cfg.max_price_deviation)
            | (qty > by_qty * cfg.max_size_multiple)
        )
    starts = ts - ts % st.builder.width_ms

    # the symbol's progress after each trade (only this partition's clock moves meanwhile)
    if len(progress.sources) == 1 and b.part is None:  # one merged, ordered stream
        counts, others = True, None
    else:
        counts, others = progress.without(b.part, now_ms, st.source_idle_ms, st.inputs)
    cap = None if st.inputs is None else st.inputs.cap_ms(st.symbol)
    moves = counts or others is not None
    p = clock_after if counts else np.full(n, others or 0, dtype=np.int64)
    for bound in (others, cap):
        if moves and bound is not None:
            p = np.minimum(p, bound)
    return m, n, times, held, quorum, refreshed, ref_px, ref_qty, unusual, starts, p, moves


def _medians(windows: np.ndarray) -> np.ndarray:
    """Each row's median, as `statistics.median` gives it: of an even count, the two middle
    values' sum halved. Sorting the rows (numpy's vectorised sort) takes 1.1 ms for 1,250
    windows of 128 where `np.median`'s partition, a row at a time, took 2.6 ms (8% of a
    Kafka run); the same numbers. A NaN (no trade brings one) goes to `np.median`."""
    rows = np.sort(windows, axis=1)
    width = rows.shape[1]
    if width % 2 or (width and np.isnan(rows[:, -1]).any()):
        return np.median(windows, axis=1)
    with np.errstate(over="ignore"):  # two values near 1e308 sum to inf, as in Python
        return (rows[:, width // 2 - 1] + rows[:, width // 2]) / 2


def _remember(
    by_bar: dict[int, dict[str | None, set[str]]],
    starts: np.ndarray,
    ids: list[str],
    venue: str | None,
    i: int,
    k: int,
    end: int,
) -> int:
    """Remember the ids of rows k..end-1 in their bars (operators/dedup.py), up to the
    first one seen before: returns that row (or `end`)."""
    a = k
    while a < end:
        start = int(starts[a])
        b = a + int(np.searchsorted(starts[a:end], start, "right"))
        new = ids[i + a : i + b]
        venues = by_bar.get(start)
        have = None if venues is None else venues.get(venue)
        fresh = set(new)
        if len(fresh) < len(new) or (have is not None and not have.isdisjoint(fresh)):
            known = set() if have is None else set(have)
            for j, x in enumerate(new):
                if x in known:
                    b = a + j
                    break
                known.add(x)
            if b > a:
                by_bar.setdefault(start, {}).setdefault(venue, set()).update(new[: b - a])
            return b
        if have is not None:
            have.update(new)  # in row order, as one by one: the same set, the same snapshot
        elif venues is None:
            by_bar[start] = {venue: fresh}
        else:
            venues[venue] = fresh
        a = b
    return end


def _fold(
    builder: Any,
    starts: np.ndarray,
    ts: list[int],
    px: list[float],
    qty: list[float],
    k: int,
    end: int,
) -> None:
    """Fold rows k..end-1 (none of them late) into their bars, as `fold_trade` one by one."""
    buckets = builder.buckets
    a = k
    while a < end:
        start = int(starts[a])
        b = a + int(np.searchsorted(starts[a:end], start, "right"))
        bucket = buckets.get(start)
        if bucket is None:
            builder.fold_trade(ts[a], px[a], qty[a])
            bucket = buckets[start]
            a += 1
        if a < b:
            if ts[a] < bucket.first_ts:  # times are in order: the first is the earliest
                bucket.first_ts, bucket.open = ts[a], px[a]
            if ts[b - 1] >= bucket.last_ts:
                bucket.last_ts, bucket.close = ts[b - 1], px[b - 1]
            hi, lo = max(px[a:b]), min(px[a:b])
            if hi > bucket.high:
                bucket.high = hi
            if lo < bucket.low:
                bucket.low = lo
            volume = bucket.volume
            for q in qty[a:b]:
                volume += q
            bucket.volume = volume
            bucket.count += b - a
        a = b
