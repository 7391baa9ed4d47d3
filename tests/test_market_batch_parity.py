"""The market step over a whole input batch (`MarketState.on_events`, the path the flow
takes) gives exactly what `on_event` one record at a time gives (issue 16).

The batched path folds the ordinary trade inline and hands everything else to `on_event`.
Both are fed the same fuzzed batches (trades out of order, duplicates on the same and
other partitions, lone jumps and confirmed ones, price and size outliers, absurd values,
a value no check can judge, candles and funding in between, several partitions with a
quorum, quiet partitions going idle): every emitted bar, record and dead letter with its
reason, every error, and the state after must be equal.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from operators.config import BandConfig, CohortConfig, SizeProxyConfig
from operators.events import Candle, Funding, Trade, TradeBlock
from operators.market import JUMP_CONFIRMATIONS, Close, MarketState
from operators.market_columns import MIN_BLOCK, SCALAR_TRADES
from operators.watermark import InputPartitions
from tests.conftest import read_batch

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
H = 3_600_000


def _trades(rng: random.Random, parts: list[str | None], n: int) -> list[Any]:
    """`n` records of one symbol in runs per partition, with every kind of unusual one."""
    events: list[Any] = []
    ts, px, i = T0, 100.0, 0
    part = parts[0]
    while len(events) < n:
        if rng.random() < 0.02:
            part = rng.choice(parts)  # a run of another partition
        quiet = rng.random() < 0.002  # minutes without a trade: gap bars
        ts += rng.choice([7, 20]) * 60_000 if quiet else int(rng.expovariate(1 / 400))
        px *= 1 + rng.gauss(0, 0.0005)
        i += 1
        t = Trade(
            "BTC-PERP",
            ts,
            round(px, 2),
            round(rng.lognormvariate(-4, 1.0), 5) + 1e-5,
            rng.choice([1, -1]),
            str(i),
            buyer=rng.choice([None, None, "0xa", "0xb"]),
            seller=rng.choice([None, "0xc"]),
            venue=rng.choice(["binance", "binance", None]),
        )
        t.part = part
        r = rng.random()
        if r < 0.02 and events:  # a copy of a recent trade, maybe on another partition
            copy = rng.choice([e for e in events[-200:] if isinstance(e, Trade)] or [t])
            t = Trade(**{f: getattr(copy, f) for f in Trade.__slots__})
            t.part = rng.choice(parts)
        elif r < 0.035:  # out of order: inside the allowed lateness, or late
            t.ts_event_ms -= rng.choice([1_000, 4_000, 60_000, 300_000, 900_000])
        elif r < 0.04:
            t.px *= rng.choice([1000.0, 1.2, 0.85, 1.09])  # outliers, and a move inside the bands
        elif r < 0.045:
            t.qty *= rng.choice([1e5, 1e3, 5e4])
        elif r < 0.047:
            setattr(t, rng.choice(["px", "qty"]), rng.choice([1e13, 1e308]))  # absurd
        elif r < 0.049:
            t.ts_event_ms += rng.choice([2, 5, 30]) * H  # a lone lie, far ahead
        elif r < 0.0495:
            t.px = None  # type: ignore[assignment]  # no check can judge it: an error
        elif r < 0.052:
            events.append(Funding("BTC-PERP", ts, 0.0001, part=part))
        elif r < 0.053:
            events.append(Candle("BTC-PERP", ts - ts % 60_000, 60_000, px, px, px, px, 1.0))
        elif r < 0.0535:  # the market comes back after an outage: each partition confirms it
            ts += 3 * H
            t.ts_event_ms += 3 * H
        events.append(t)
    return events


def _batches(rng: random.Random, events: list[Any]) -> list[tuple[list[Any], int]]:
    """The events cut into input batches of varied sizes, each with its wall clock (ms):
    sometimes long enough after the last that other partitions went idle."""
    out, i, now = [], 0, 50_000
    while i < len(events):
        k = rng.choice([1, 3, 40, 400, 2_000])
        out.append((events[i : i + k], now))
        i += k
        now += rng.choice([0, 20, 500, 12_000])
    return out


def _market(**kw: Any) -> MarketState:
    return MarketState("BTC-PERP", False, kw.pop("lateness", 5_000), CohortConfig(), **kw)


def _run_both(
    batches: list[tuple[list[Any], int]],
    make: Any,
    inputs: InputPartitions | None = None,
    read: Callable[[int, list[Any]], None] | None = None,
    blocked: Callable[[list[Any]], list[Any]] | None = None,
) -> tuple[MarketState, MarketState, list[str], int]:
    """One state fed record by record, one batch by batch; returns both, the first's
    outputs (dead-letter reasons and errors), and how many records the batch path handed
    to `on_event` (the fast path must have been taken). Both states share `inputs` (the
    market step only reads it); `read(now_ms, events)` changes it before each batch.
    `blocked(events)` is what the batch path gets instead of `events` (TradeBlocks)."""
    one, batched = make(), make()
    for st in (one, batched):
        st.inputs = inputs
    got_one: list[str] = []
    got_batched: list[str] = []
    slow = 0
    per_record = batched.on_event

    def counted(e: Any, out: list[Any], now_ms: int = 0) -> None:
        nonlocal slow
        slow += 1
        per_record(e, out, now_ms)

    batched.on_event = counted  # type: ignore[method-assign]
    for events, now in batches:
        if read is not None:
            read(now, events)
        out: list[Any] = []
        for e in events:
            try:
                one.on_event(e, out, now)
            except Exception as exc:
                out.append(f"error {exc!r} on {e!r}")
        got_one += [repr(x) for x in out]
        out_b: list[Any] = []
        batched.on_events(
            events if blocked is None else blocked(events),
            out_b,
            now,
            lambda e, x, o=out_b: o.append(f"error {x!r} on {e!r}"),
        )
        got_batched += [repr(x) for x in out_b]
        assert got_batched == got_one  # at every batch, not only at the end
    del batched.on_event
    for st, got in ((one, got_one), (batched, got_batched)):
        out = []
        st.flush(out)
        got += [repr(x) for x in out]
    assert got_batched == got_one
    return one, batched, got_one, slow


def _assert_same_state(one: MarketState, batched: MarketState) -> None:
    assert pickle.dumps(batched) == pickle.dumps(one)
    assert batched.progress.arrivals == one.progress.arrivals
    counts = ("late_count", "duplicate_count", "outlier_count")
    assert [getattr(batched, c) for c in counts] == [getattr(one, c) for c in counts]


KINDS = (
    "Close(",
    "late:",
    "outlier: price",
    "outlier: size",
    "is absurd",
    "far out of order",
    "candle ignored",
    "Funding(",
    "error ",
)


def _kinds(got: list[str]) -> set[str]:
    """Which kinds of output the run produced (so the fuzz is known to reach them)."""
    return {kind for line in got for kind in KINDS if kind in line}


PARTS = {
    "file run (one stream)": [None],
    "three Kafka partitions": ["trades#0", "trades#1", "trades#2"],
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("layout", sorted(PARTS))
def test_fuzzed_batches_give_what_one_record_at_a_time_gives(layout: str, seed: int):
    rng = random.Random(seed)
    events = _trades(rng, PARTS[layout], 12_000)
    proxy = SizeProxyConfig(enabled=seed == 2)
    bands = BandConfig(max_price_deviation=0.1 if seed == 3 else 0.2)
    one, batched, got, slow = _run_both(
        _batches(rng, events), lambda: _market(size_proxy_cfg=proxy, bands_cfg=bands)
    )
    _assert_same_state(one, batched)
    assert one.duplicate_count > 0
    assert _kinds(got) == set(KINDS)  # the fuzz reaches every kind of output
    trades = sum(isinstance(e, Trade) for e in events)
    assert slow < trades / 4, "most trades must take the batched path, or it is not tested"


def test_a_confirmed_jump_and_an_idle_partition_give_the_same_bars_batched():
    """Fifty trades in a row hours ahead on one partition are the market coming back;
    while another partition is quiet past the idle bound, it stops holding bars back."""
    rng = random.Random(9)
    real = [
        Trade("BTC-PERP", T0 + k * 500, 100.0 + rng.random(), 0.02, 1, f"r{k}")
        for k in range(3_000)
    ]
    for k, t in enumerate(real):
        t.part = "trades#0" if k < 1_500 or k % 7 else "trades#1"
    after = [
        Trade("BTC-PERP", T0 + 5 * H + k * 500, 100.5, 0.02, 1, f"j{k}")
        for k in range(JUMP_CONFIRMATIONS + 400)
    ]
    for t in after:
        t.part = "trades#0"
    batches = _batches(rng, real + after)
    one, batched, got, slow = _run_both(batches, lambda: _market(source_idle_ms=10_000))
    _assert_same_state(one, batched)
    assert not [g for g in got if "far out of order" in g]  # the jump was confirmed
    assert sum("Close(" in g for g in got) > 10 and slow < len(real) / 4


def test_with_the_kafka_sources_view_of_its_partitions_the_batched_path_is_the_same():
    """The Kafka source's view: partitions caught up or not, quiet past the idle bound or
    read just now, one (of another topic) with records not seen yet, a command held."""
    rng = random.Random(4)
    parts = ["trades#0", "trades#1", "trades#2"]
    events = _trades(rng, parts, 12_000)
    view = InputPartitions()

    def read(now_ms: int, batch: list[Any]) -> None:
        for p in parts:
            if rng.random() < 0.5:
                read_batch(
                    view, p, rng.choice([0, 0, 25]), caught_up=rng.random() < 0.6, now_ms=now_ms
                )
        if rng.random() < 0.05:  # funding's partition: records read, none of this symbol's
            read_batch(view, "funding#0", 3, caught_up=rng.random() < 0.5, now_ms=now_ms)
            view.latest_ms.pop("funding#0", None)
        elif rng.random() < 0.1:
            view.latest_ms["funding#0"] = T0 + rng.randrange(0, 24 * H)
        if rng.random() < 0.1:  # the commands step holds a command for the symbol
            view.held_ms["BTC-PERP"] = batch[0].ts_event_ms + rng.randrange(-60_000, 600_000)
        elif rng.random() < 0.1:
            view.held_ms.clear()

    one, batched, got, slow = _run_both(_batches(rng, events), _market, view, read)
    _assert_same_state(one, batched)
    assert sum("Close(" in g for g in got) > 10 and one.late_count > 0
    trades = sum(isinstance(e, Trade) for e in events)
    assert slow < trades / 4


def test_candle_symbols_take_the_per_record_path_batched_too():
    rng = random.Random(5)
    events: list[Any] = []
    for k in range(2_000):
        ts = T0 + k * 60_000 + rng.choice([0, 0, 0, -600_000])
        events.append(Candle("BTC-PERP", ts, 60_000, 100.0, 101.0, 99.0, 100.5, 3.0))
        if k % 97 == 0:
            events.append(Trade("BTC-PERP", ts, 100.0, 1.0, 1, f"t{k}"))
        if k % 480 == 0:
            events.append(Funding("BTC-PERP", ts, 0.0001))
    one, batched, got, _ = _run_both(
        _batches(rng, events), lambda: MarketState("BTC-PERP", True, 0, CohortConfig())
    )
    _assert_same_state(one, batched)
    assert any("Close(" in g for g in got) and any("late:" in g for g in got)


# -- TradeBlocks: a file's blocks of plain trades, folded as columns (operators/market_columns.py)
def _plain(rng: random.Random, events: list[Any], addresses: bool = False) -> list[Any]:
    """Most trades of one venue, as a trade file's rows are, and (unless `addresses`,
    as Hyperliquid's have them) without addresses."""
    for e in events:
        if isinstance(e, Trade) and rng.random() < 0.97:
            if not addresses:
                e.buyer = e.seller = None
            e.venue = "binance"
    return events


def _block(run: list[Trade]) -> TradeBlock:
    buyers, sellers = [t.buyer for t in run], [t.seller for t in run]
    return TradeBlock(
        run[0].symbol,
        np.array([t.ts_event_ms for t in run], dtype=np.int64),
        np.array([t.px for t in run], dtype=np.float64),
        np.array([t.qty for t in run], dtype=np.float64),
        np.array([t.side for t in run], dtype=np.int64),
        [t.trade_id for t in run],
        run[0].venue,
        run[0].part,
        None if buyers.count(None) == len(run) else buyers,
        None if sellers.count(None) == len(run) else sellers,
    )


def _blocker(rng: random.Random) -> Callable[[list[Any]], list[Any]]:
    """Cuts a batch into TradeBlocks of consecutive trades of one partition and venue, as
    decode makes them of a file's blocks or a Kafka partition's run; a run is mostly cut
    where its times go back (a block out of order takes the per-record way whole), and
    sometimes anywhere."""

    def blocked(events: list[Any]) -> list[Any]:
        out: list[Any] = []
        run: list[Trade] = []

        def flush() -> None:
            if len(run) >= MIN_BLOCK or (run and rng.random() < 0.2):
                out.append(_block(run))
            else:
                out.extend(run)
            run.clear()

        for e in events:
            plain = type(e) is Trade and isinstance(e.px, float) and isinstance(e.qty, float)
            if run and (
                not plain
                or (e.part, e.venue) != (run[0].part, run[0].venue)
                or (e.ts_event_ms < run[-1].ts_event_ms and rng.random() < 0.8)
                or rng.random() < 0.001
            ):
                flush()
            if plain:
                run.append(e)
            else:
                out.append(e)
        flush()
        return out

    return blocked


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("layout", sorted(PARTS))
def test_trade_blocks_give_what_one_record_at_a_time_gives(layout: str, seed: int):
    rng = random.Random(100 + seed)
    events = _plain(rng, _trades(rng, PARTS[layout], 12_000), addresses=seed != 1)
    proxy = SizeProxyConfig(enabled=seed == 2)
    bands = BandConfig(max_price_deviation=0.1 if seed == 3 else 0.2)
    one, batched, got, slow = _run_both(
        _batches(rng, events),
        lambda: _market(size_proxy_cfg=proxy, bands_cfg=bands),
        blocked=_blocker(rng),
    )
    _assert_same_state(one, batched)
    assert one.duplicate_count > 0 and one.late_count > 0 and one.outlier_count > 0
    assert _kinds(got) == set(KINDS)
    trades = sum(isinstance(e, Trade) for e in events)
    assert slow < trades / 4, "most trades must take the column path, or it is not tested"


def test_trade_blocks_with_the_kafka_sources_view_give_the_same():
    rng = random.Random(14)
    parts = ["trades#0", "trades#1", "trades#2"]
    events = _plain(rng, _trades(rng, parts, 12_000))
    view = InputPartitions()

    def read(now_ms: int, batch: list[Any]) -> None:
        for p in parts:
            if rng.random() < 0.5:
                read_batch(
                    view, p, rng.choice([0, 0, 25]), caught_up=rng.random() < 0.6, now_ms=now_ms
                )
        if rng.random() < 0.1:
            view.held_ms["BTC-PERP"] = batch[0].ts_event_ms + rng.randrange(-60_000, 600_000)
        elif rng.random() < 0.1:
            view.held_ms.clear()

    one, batched, got, slow = _run_both(
        _batches(rng, events), _market, view, read, blocked=_blocker(rng)
    )
    _assert_same_state(one, batched)
    assert sum("Close(" in g for g in got) > 10
    assert slow < sum(isinstance(e, Trade) for e in events) / 4


def _grid_trades(rng: random.Random, n: int, t0: int = T0) -> list[Trade]:
    """Ordered trades on a 500 ms grid (ties, trades on a bar's first millisecond, progress
    landing exactly on a bar's end plus the lateness), a flat price and size (a known
    reference), quiet stretches (gap bars), and sizes and prices on either side of the
    bands' edges."""
    ts, out = t0, []
    for k in range(n):
        ts += 20 * 60_000 if k % 5_000 == 4_999 else 500 * rng.choice([0, 1, 1, 2])
        px, qty = rng.choice([99.99, 100.0, 100.01]), 0.02
        r = rng.random()
        if r < 0.003:
            qty = rng.choice([1_990.0, 2_010.0, 1e13])  # the size band's edge is 2,000
        elif r < 0.006:
            px = rng.choice([109.9, 110.1, 90.1, 89.9, 1e300])  # the price band's is 10 %
        out.append(Trade("BTC-PERP", ts, px, qty, 1, f"t{k}", venue="binance"))
    return out


def test_a_long_ordered_block_closes_its_bars_as_trades_one_by_one_do():
    """Bar after bar inside one block of 20,000 ordered trades, the reference refreshed
    every 16 trades, outliers at the bands' edges."""
    trades = _grid_trades(random.Random(21), 20_000)
    one, batched, got, slow = _run_both(
        [(trades, 1_000)], _market, blocked=_blocker(random.Random(1))
    )
    _assert_same_state(one, batched)
    assert sum("Close(" in g for g in got) > 30 and slow < 1_000
    for edge in ("size 2010.0 ", "price 110.1 ", "price 89.9 ", "price 1e+300 is absurd"):
        assert any(f"outlier: {edge}" in g for g in got), edge
    for inside in ("size 1990.0 ", "price 109.9 ", "price 90.1 "):
        assert not any(f"outlier: {inside}" in g for g in got), inside


def test_blocks_that_end_on_a_bars_edges_give_what_one_by_one_gives():
    """A block ends on a bar's first trade and the next starts with a trade at the same
    time (the bar's open stays the first's); a block ends on the trade whose progress is
    exactly a bar's end plus the lateness (it closes that bar)."""
    lateness, width = 5_000, 300_000
    start = T0 + width  # the bar with the tie; it closes on the second block's last trade
    trades = [
        Trade("BTC-PERP", T0 + k * 1_000, 100.0 + k % 3 / 100, 0.02, 1, f"t{k}", venue="binance")
        for k in range(3 * width // 1_000)
    ]
    first = next(k for k, t in enumerate(trades) if t.ts_event_ms == start)
    trades.insert(first + 1, Trade("BTC-PERP", start, 100.5, 0.02, 1, "tie", venue="binance"))
    # the clock is the third latest time: two trades past the bar's end plus the lateness
    end = start + width
    closing = next(k for k, t in enumerate(trades) if t.ts_event_ms == end + lateness + 2_000)
    cuts = [0, first + 1, closing + 1, len(trades)]
    batches = [(trades[a:b], 1_000 + a) for a, b in itertools.pairwise(cuts)]
    one, batched, got, slow = _run_both(batches, _market, blocked=lambda evs: [_block(evs)])
    _assert_same_state(one, batched)
    assert slow <= 2 * 256  # two blocks' first trades: the bands' window fills
    assert f"'5m', start_ms={start}, end_ms={end}, open=100.0," in "".join(got)


def test_a_lone_jump_at_a_blocks_end_is_held_then_refused_as_one_by_one():
    """A trade just past `max_jump_ms` beyond its clock (the lowest of its latest three)
    and a few after it end a block; the next block is back in line: they are dead letters."""
    rng = random.Random(2)
    real = _grid_trades(rng, 3_000)
    clock = sorted(t.ts_event_ms for t in real)[-3]
    ahead = [
        Trade("BTC-PERP", clock + H + 1 + k, 100.0, 0.02, 1, f"a{k}", venue="binance")
        for k in range(5)
    ]
    back = _grid_trades(rng, 500, real[-1].ts_event_ms + 500)
    for k, t in enumerate(back):
        t.trade_id = f"b{k}"
    one, batched, got, slow = _run_both(
        [(real + ahead, 1_000), (back, 2_000)],
        lambda: _market(max_jump_ms=H),
        blocked=_blocker(random.Random(3)),
    )
    _assert_same_state(one, batched)
    assert sum("far out of order" in g for g in got) == len(ahead)


def test_bars_closed_by_the_wall_clock_make_a_blocks_trades_late_as_one_by_one():
    """Live, quiet bars close by processing time (`on_tick`); a block that then arrives in
    order for its partition holds trades for those bars: late, as one by one."""
    trades = _grid_trades(random.Random(5), 4_000)
    first, rest = trades[:2_000], trades[2_000:]
    one, batched = _market(), _market()
    blocked = _blocker(random.Random(6))
    got: list[list[str]] = [[], []]
    for k, st in enumerate((one, batched)):
        out: list[Any] = []
        if k == 0:
            for e in first:
                st.on_event(e, out, 1_000)
        else:
            st.on_events(blocked(first), out, 1_000)
        st.on_tick(rest[1_500].ts_event_ms, 10 * H, out)  # the wall clock is far on
        if k == 0:
            for e in rest:
                st.on_event(e, out, 2_000)
        else:
            st.on_events(blocked(rest), out, 2_000)
        got[k] = [repr(x) for x in out]
    assert got[1] == got[0]
    _assert_same_state(one, batched)
    assert sum("late:" in g for g in got[0]) > 100


def test_a_max_jump_past_int64_folds_as_one_by_one():
    """`max_jump_ms` is any integer the settings accept; the arrays compare a difference
    with it, as Python's integers do (a sum overflowed int64 and lost the block)."""
    trades = _grid_trades(random.Random(8), 3_000)
    one, batched, got, slow = _run_both(
        [(trades, 1_000)], lambda: _market(max_jump_ms=10**19), blocked=_blocker(random.Random(2))
    )
    _assert_same_state(one, batched)
    assert sum("Close(" in g for g in got) > 5 and not [g for g in got if "error" in g]


def test_a_bar_close_that_raises_is_reported_with_its_trade_and_the_block_goes_on(monkeypatch):
    """One bad bar close (a bug in the cohorts, say) is one error record for the trade that
    closed the bar, as one by one, and every later trade of the block is still folded."""
    from operators.cohorts import CohortTracker

    trades = _grid_trades(random.Random(9), 4_000)
    close_bar = CohortTracker.close_bar
    bad_bar = T0 + 4 * 300_000

    def failing(self: CohortTracker, bar: Any) -> Any:
        if bar.start_ms == bad_bar:
            raise RuntimeError("cohorts failed")
        return close_bar(self, bar)

    monkeypatch.setattr(CohortTracker, "close_bar", failing)
    one, batched, got, slow = _run_both(
        [(trades, 1_000)], _market, blocked=lambda evs: [_block(evs)]
    )
    _assert_same_state(one, batched)
    errors = [g for g in got if "error RuntimeError('cohorts failed') on Trade(" in g]
    assert len(errors) == 1 and slow < 1_000
    assert sum("Close(" in g for g in got) == 6  # bars 0-6 but the one that failed


def test_a_doubled_feed_takes_the_per_record_way_in_stretches_not_a_run_per_row(monkeypatch):
    """Every trade twice (a replayed capture): a run stops at each copy, so after a short
    run the block goes one by one for a stretch; the arrays are not rebuilt per row."""
    import operators.market_columns as columns

    runs = []
    fold_run = columns.fold_run

    def counted(*args: Any) -> tuple[int, int]:
        runs.append(args[2])
        return fold_run(*args)

    monkeypatch.setattr(columns, "fold_run", counted)
    trades = _grid_trades(random.Random(10), 6_000)
    doubled = [t for t in trades for _ in (0, 1)]
    one, batched, got, slow = _run_both(
        [(doubled, 1_000)], _market, blocked=lambda evs: [_block(evs)]
    )
    _assert_same_state(one, batched)
    assert one.duplicate_count == len(trades)
    assert len(runs) < len(doubled) / columns.SCALAR_TRADES + 10


def test_the_bands_medians_of_a_run_are_statistics_medians_to_the_bit():
    """The column step's medians of many windows at once (sorted rows) against
    `statistics.median` of each, on prices with ties, sizes spanning decades, and a NaN."""
    import statistics

    from operators.market_columns import _medians

    rng = np.random.default_rng(16)
    for windows in (
        np.round(rng.normal(100.0, 0.5, (300, 128)), 1),  # ties
        np.exp(rng.normal(0.0, 4.0, (300, 128))),  # sizes over many decades
        rng.random((5, 7)),  # an odd count
    ):
        got = _medians(windows)
        want = [statistics.median(row) for row in windows.tolist()]
        assert got.tolist() == want
    with_nan = rng.random((3, 8))
    with_nan[1, 2] = np.nan
    assert np.isnan(_medians(with_nan)[1]) and _medians(with_nan)[0] == np.median(with_nan[0])


def _count_folded(monkeypatch: Any) -> list[int]:
    """How many rows each `fold_run` folds (in a list the caller reads)."""
    import operators.market_columns as columns

    folded: list[int] = []
    fold_run = columns.fold_run

    def counted(*args: Any) -> tuple[int, int]:
        i, (j, k) = args[2], fold_run(*args)
        folded.append(j - i)
        return j, k

    monkeypatch.setattr(columns, "fold_run", counted)
    return folded


def _ordinary_trades(seed: int, n: int) -> list[Trade]:
    """`_grid_trades` without its outliers: every trade one a run can fold."""
    trades = _grid_trades(random.Random(seed), n)
    return [t for t in trades if t.qty == 0.02 and t.px in (99.99, 100.0, 100.01)]


def test_the_first_bar_closes_inside_a_run_as_one_by_one(monkeypatch):
    """Before the symbol's first bar is emitted nothing is late, and the first bar to close
    is the earliest open one: runs take those trades too (they went one by one until the
    first bar was emitted), with the same bars. Only the bands' window fills one by one."""
    folded = _count_folded(monkeypatch)
    trades = _ordinary_trades(22, 3_000)
    one, batched, got, slow = _run_both(
        [(trades, 1_000)], _market, blocked=lambda evs: [_block(evs)]
    )
    _assert_same_state(one, batched)
    first = trades[0].ts_event_ms
    closes = [g for g in got if "Close(" in g]
    assert f"start_ms={first - first % 300_000}," in closes[0]
    assert len(closes) >= 3
    assert sum(folded) >= len(trades) - SCALAR_TRADES


def test_trades_fold_in_runs_while_a_partition_not_yet_heard_holds_the_first_bar(monkeypatch):
    """From Kafka the first bar closes only once every listed input partition has been
    heard (its first mark). Until then one partition's trades fold in runs, not one by
    one, and the bars, once it is heard, are those one by one gives."""
    folded = _count_folded(monkeypatch)
    trades = _ordinary_trades(23, 6_000)
    for t in trades:
        t.part = "trades#0"
    view = InputPartitions()
    view.listed.update(["trades#0", "trades#1"])
    batches = [(trades[a : a + 500], 1_000 + a) for a in range(0, len(trades), 500)]
    heard_from = 6  # trades#1's first mark comes with the sixth batch

    def read(now_ms: int, batch: list[Any]) -> None:
        read_batch(view, "trades#0", len(batch), caught_up=False, now_ms=now_ms)
        if now_ms >= batches[heard_from - 1][1]:
            read_batch(view, "trades#1", 0, caught_up=True, now_ms=now_ms)

    one, batched, got, slow = _run_both(
        batches, _market, view, read, blocked=lambda evs: [_block(evs)]
    )
    _assert_same_state(one, batched)
    assert sum("Close(" in g for g in got) >= 8
    assert sum(folded) >= len(trades) - SCALAR_TRADES

    # and the first bar was held: before trades#1 is heard, nothing closes
    st, view, out = _market(), InputPartitions(), []
    view.listed.update(["trades#0", "trades#1"])
    st.inputs = view
    for events, now in batches[: heard_from - 1]:
        read_batch(view, "trades#0", len(events), caught_up=False, now_ms=now)
        st.on_events([_block(events)], out, now)
    held = sum(len(b) for b, _ in batches[: heard_from - 1])
    assert held > 2_000 and not any(isinstance(o, Close) for o in out)
    assert len(st.builder.buckets) >= 5  # five bars open, not one emitted
