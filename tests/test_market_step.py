"""The per-symbol market step in the running flow: settings on resume, duplicate trades,
and processing-time progress in live mode (issue 12, items 1, 5 and 12)."""

from __future__ import annotations

import json
import pickle
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows import metrics
from dataflows.ensemble import Emit, build_flow
from dataflows.io import RawMessage
from operators.config import CohortConfig
from operators.events import Trade
from operators.market import MarketState
from operators.overlays import ContextJoin
from operators.telemetry import Clock, Stamp
from tests.conftest import messages, run_records, signed, small_settings

M = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _trade(ts_ms: int, px: float = 100.0, trade_id: str | None = None, **kw: Any) -> RawMessage:
    rec = {
        "symbol": "BTC-PERP",
        "ts_event_ms": ts_ms,
        "trade_id": trade_id or f"t{ts_ms}",
        "px": px,
        "qty": 1.0,
        "side": "buy",
        **kw,
    }
    return RawMessage("trades", rec)


def _market(lateness_ms: int = 5_000) -> MarketState:
    return MarketState("BTC-PERP", False, lateness_ms, CohortConfig())


def _t(ts_ms: int, trade_id: str | None = None, venue: str | None = None) -> Trade:
    return Trade("BTC-PERP", ts_ms, 100.0, 1.0, 1, trade_id or f"t{ts_ms}", venue=venue)


# -- item 1: configuration is not state ----------------------------------------------------


def test_a_snapshot_of_the_market_state_holds_no_settings():
    st = _market(lateness_ms=12_345)
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000), out)
    blob = pickle.dumps(st)
    assert b"CohortConfig" not in blob and b"allowed_lateness_ms" not in blob
    assert b"cohort_cfg" not in blob and b"max_jump_ms" not in blob


def test_a_snapshot_of_the_context_join_holds_no_staleness_settings():
    blob = pickle.dumps(ContextJoin())
    assert b"stale" not in blob


def test_a_resumed_market_state_runs_with_the_settings_it_is_configured_with():
    st = _market(lateness_ms=5_000)
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000), out)
    resumed = pickle.loads(pickle.dumps(st)).configure(False, 120_000, CohortConfig(), 3_600_000)
    resumed.on_event(_t(T0 + 5 * M + 30_000), out)  # 5 s lateness would close the bar here
    resumed.on_event(_t(T0 + 4 * M), out)  # 29 s behind: within 120 s, folds in
    assert out == [] and resumed.late_count == 0


@pytest.mark.slow
def test_a_restart_with_changed_settings_runs_with_the_new_settings(tmp_path: Path):
    """Lateness 5 s before the crash, 120 s after: the resumed flow folds a trade 90 s
    late into its bar instead of dead-lettering it."""
    rec = tmp_path / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    before = [_trade(T0 + i * 10_000, 100.0 + i / 10) for i in range(40)]  # into T0 + 6.5 min
    after = [_trade(T0 + 10 * M + 30_000, 101.0), _trade(T0 + 9 * M, 99.0)]
    msgs: list[Any] = [*before, TestingSource.ABORT(), *after]
    items: list[tuple[str, dict[str, Any]]] = []
    for lateness in ("5000", "120000"):
        settings = small_settings(tmp_path / "out", ENSEMBLE_ALLOWED_LATENESS_MS=lateness)
        flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(msgs, 1))
        run_main(
            flow, epoch_interval=timedelta(milliseconds=1), recovery_config=RecoveryConfig(str(rec))
        )
    assert [r["message"] for s, r in items if s == "errors"] == []
    late = [r for s, r in items if s == "dead_letters"]
    assert late == [], [r["reason"] for r in late]
    bar = next(
        r
        for s, r in items
        if s == "bars" and r["timeframe"] == "5m" and r["start_ms"] == T0 + 5 * M
    )
    assert bar["low"] == 99.0  # the 90 s late trade is in it


def test_a_market_snapshot_from_before_these_fields_resumes():
    st = _market()
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000), out)
    del st.recent, st.duplicate_count  # what an older snapshot lacks
    for b in st.builder.buckets.values():
        del b.parts, b.part_ms
    back = pickle.loads(pickle.dumps(st)).configure(False, 5_000, CohortConfig(), 3_600_000)
    back.on_event(_t(T0 + 2_000), out)
    back.on_event(_t(T0 + 2_000), out)  # a duplicate: dropped and counted
    back.flush(out)
    (close,) = [o for o in out if hasattr(o, "bar")]
    assert (close.bar.count, close.bar.complete, back.duplicate_count) == (2, True, 1)


def test_a_snapshot_with_the_old_dedup_sets_of_venue_and_id_resumes():
    """Before ids were kept per venue, a bar's identities were one set of (venue, id)."""
    st = _market()
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000, "a", "binance"), out)
    st.on_event(_t(T0 + 1_000, "b", None), out)
    st.recent.by_bar = {T0: {("binance", "a"), (None, "b")}}  # what an older snapshot held
    back = pickle.loads(pickle.dumps(st)).configure(False, 5_000, CohortConfig(), 3_600_000)
    assert back.recent.by_bar == {T0: {"binance": {"a"}, None: {"b"}}}
    for trade_id, venue in (("a", "binance"), ("b", None), ("a", "hyperliquid")):
        back.on_event(_t(T0 + 2_000, trade_id, venue), out)
    assert (back.duplicate_count, len(back.recent)) == (2, 3)  # the last is another trade


# -- item 12: duplicate trades -------------------------------------------------------------


def test_a_trade_seen_twice_in_an_open_bar_is_dropped_and_counted():
    st = _market()
    out: list[Any] = []
    for e in (_t(T0 + 1_000, "a", "x"), _t(T0 + 1_000, "a", "x"), _t(T0 + 2_000, "b", "x")):
        st.on_event(e, out)
    st.flush(out)
    (close,) = [o for o in out if hasattr(o, "bar")]
    assert (close.bar.count, close.bar.volume, st.duplicate_count) == (2, 2.0, 1)


def test_the_same_trade_id_on_another_venue_is_another_trade():
    st = _market()
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000, "a", "binance"), out)
    st.on_event(_t(T0 + 1_000, "a", "hyperliquid"), out)
    assert st.duplicate_count == 0


def test_the_dedup_window_is_the_open_bars_and_is_forgotten_at_their_close():
    st = _market(lateness_ms=0)
    out: list[Any] = []
    for i in range(100):
        st.on_event(_t(T0 + i * 1_000), out)
    assert len(st.recent) == 100
    for i in range(1, 4):  # a quorum of trades past its end closes the first bar
        st.on_event(_t(T0 + 5 * M + i), out)
    assert len(st.recent) == 3
    st.on_event(_t(T0 + 1_000), out)  # a copy after its bar closed: late, not folded in
    assert (st.late_count, st.duplicate_count) == (1, 0)


@pytest.mark.slow
def test_a_feed_with_every_trade_twice_gives_the_bars_of_the_single_feed_and_counts_the_copies(
    tmp_path: Path,
):
    settings = small_settings(tmp_path, ENSEMBLE_DAYS="0.3")
    msgs = messages(settings)
    doubled = [m2 for m in msgs for m2 in ([m, m] if m.stream == "trades" else [m])]
    n_trades = sum(m.stream == "trades" for m in msgs)
    before = metrics.DUPLICATES.labels("BTC-PERP")._value.get()
    single, double = run_records(settings, msgs), run_records(settings, doubled)
    for stream in ("bars", "signals", "orders"):  # symbols interleave by batch: compare each
        for sym in ("BTC-PERP", "ETH-PERP"):
            assert [r for r in double[stream] if r["symbol"] == sym] == [
                r for r in single[stream] if r["symbol"] == sym
            ]
    dup = sum(r["duplicates"] for r in double["summary"] if "duplicates" in r)
    assert dup == n_trades
    assert metrics.DUPLICATES.labels("BTC-PERP")._value.get() - before == n_trades


def test_the_run_summary_prints_the_duplicates_dropped():
    from dataflows.io import format_summary

    state = {"symbols": {}, "dead_letters": 0, "dead_letter_reasons": {}}
    state["duplicate_trades"] = {"BTC-PERP": 7}
    assert "duplicate trades dropped: 7 (BTC-PERP 7)" in format_summary(state, "out/")


# -- item 5: processing-time progress in live mode -----------------------------------------


def test_a_tick_closes_a_quiet_symbols_bars_and_gap_bars_after_the_lateness():
    st = _market(lateness_ms=5_000)
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000), out)
    st.on_tick(T0 + 5 * M + 4_999, 5 * M + 3_999, out)  # quiet since T0 + 1 s
    assert out == []
    st.on_tick(T0 + 15 * M + 5_000, 15 * M + 4_000, out)
    closes = [o.bar for o in out if hasattr(o, "bar")]
    assert [(b.start_ms, b.count) for b in closes] == [(T0, 1), (T0 + 5 * M, 0), (T0 + 10 * M, 0)]


def test_a_tick_while_records_keep_arriving_closes_nothing_early():
    """Catching up a backlog: the wall clock is hours ahead, but the stream is not idle."""
    st = _market(lateness_ms=5_000)
    out: list[Any] = []
    st.on_event(_t(T0 + 1_000), out)
    st.on_tick(T0 + 10 * 60 * M, 0, out)
    assert out == []


def test_live_a_symbol_quiet_for_hours_trades_again_at_once_not_after_fifty_trades():
    """Live, the wall clock closed a quiet symbol's bars (gap bars) for 90 minutes; its next
    trades, stamped now, are no jump past those closed bars: they fold into their bars,
    which close on time. They were held as a jump past the last trade's time until 50 came
    (an illiquid symbol: 50 minutes without a bar, and every symbol's decisions waiting)."""
    st = _market(lateness_ms=5_000)
    out: list[Any] = []

    def trade(ts_ms: int) -> Trade:
        t = _t(ts_ms)
        t.part = "trades#0"  # live: a Kafka partition
        return t

    arrived = T0
    for k in range(360):  # an hour of a trade every 10 s, each read as it happens
        arrived = T0 + k * 10_000
        st.on_event(trade(arrived), out, arrived)
    for now in range(arrived + 1_000, arrived + 90 * M, 1_000):  # quiet: the ticks
        st.on_tick(now, now - arrived, out)
    resumed = arrived + 90 * M
    out.clear()
    for k in range(12):  # then a trade a minute, and a tick every second between them
        arrived = resumed + k * M
        st.on_event(trade(arrived), out, arrived)
        for now in range(arrived + 1_000, arrived + M, 1_000):
            st.on_tick(now, now - arrived, out)
    assert not st.ahead and not [o for o in out if type(o).__name__ == "Late"]
    first = resumed - resumed % (5 * M)  # the bar of the first trade after the quiet
    closed = [(o.bar.start_ms, o.bar.count) for o in out if hasattr(o, "bar")]
    # it and the next one closed (the partition's clock, a quorum of three trades, trails
    # its latest trade by two minutes here)
    assert closed == [(first, 1), (first + 5 * M, 5)]


def _bars(out: list[Any]) -> list[tuple[int, int]]:
    return [(o.bar.start_ms, o.bar.count) for o in out if hasattr(o, "bar")]


@pytest.mark.parametrize("seed", range(40))
def test_a_tick_first_closes_the_earliest_bar_when_tick_due_says(seed: int):
    """Live, the step wakes when `tick_due_ms` says: a tick a millisecond before closes
    nothing, a tick then closes the earliest open bar (a gap bar too), whatever the trades,
    the lateness and how late the last one arrived."""
    import random

    def made() -> tuple[MarketState, int]:
        """The same state each time: trades, maybe a tick, and the latest one's arrival."""
        rng = random.Random(seed)
        st = _market(lateness_ms=rng.choice([0, 300, 5_000]))
        out: list[Any] = []
        assert st.tick_due_ms(T0, T0) is None, "no bar yet: nothing to close"
        ts = T0 + rng.randrange(0, 5 * M)
        for i in range(rng.randrange(1, 12)):
            ts += rng.choice([0, 1, rng.randrange(1, 90_000)])
            st.on_event(_t(ts, f"t{i}"), out)
        if rng.random() < 0.3:  # ticked on already: the next bar is a gap bar
            ticked = st.tick_due_ms(ts, ts)
            assert ticked is not None
            st.on_tick(ticked, ticked - ts, out)
            assert _bars(out)
        # the wall clock when the latest trade came (behind the exchange's clock, or ahead)
        return st, ts + rng.randrange(-2_000, 2_000)

    st, arrived = made()
    due = st.tick_due_ms(arrived, arrived)
    assert due is not None and due > arrived
    early: list[Any] = []
    st.on_tick(due - 1, due - 1 - arrived, early)
    assert _bars(early) == []
    st, arrived = made()
    b = st.builder
    earliest = b.next_start_ms if b.next_start_ms is not None else min(b.buckets)
    on_time: list[Any] = []
    st.on_tick(due, due - arrived, on_time)
    bars = _bars(on_time)
    assert bars, f"nothing closed at {due}"
    assert bars[0][0] == earliest
    assert earliest + 5 * M + st.allowed_lateness_ms <= due


class _Fixed(Clock):
    """A clock that shows `now` until set; `wake_at` counts from `base` (a real time)."""

    def __init__(self, now_ms: int) -> None:
        self.now, self.base = now_ms, datetime.now(UTC)

    def now_ms(self) -> int:
        return self.now

    def wake_at(self, ms: int) -> datetime:
        return self.base + timedelta(milliseconds=ms - self.now)


def _plain_tick(logic: Any) -> bool:
    """`notify_at` asks for the one-second TICK: neither sooner (a spin) nor later."""
    from dataflows.ensemble import TICK

    before = datetime.now(UTC)
    wake = logic.notify_at()
    return before + TICK <= wake <= datetime.now(UTC) + TICK


def test_live_the_step_wakes_when_its_next_bar_is_due(tmp_path: Path):
    """MarketLogic asks Bytewax to wake it when its next bar is due on its clock (within
    the one-second TICK), so a quiet symbol's bar closes then, not up to a tick later,
    stamped by that clock."""
    from dataflows.ensemble import MarketLogic

    end = T0 + 5 * M
    clock = _Fixed(end - 400)
    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall", ENSEMBLE_ALLOWED_LATENESS_MS="300")
    logic = MarketLogic(settings, Stamp("x", clock.now_ms), None, None, clock=clock)
    assert _plain_tick(logic), "no bar yet"
    logic.on_batch([[_t(end - 900 + i * 100) for i in range(5)]])  # the last at end - 500
    assert logic.last_arrival_ms == end - 400
    # Progress is the 3rd latest trade, end - 700, and it came at end - 400: the bar is
    # due once the clock passes end + 300 (the lateness) and 700 + 300 ms have gone by
    # since then, at end + 600.
    clock.now, clock.base = end + 200, datetime.now(UTC)
    assert logic.notify_at() == clock.base + timedelta(milliseconds=400)
    clock.now = end - 10 * M  # due far beyond the tick: the tick comes first
    assert _plain_tick(logic)
    clock.now = end + 600  # due now: a millisecond on, as on_tick needs time gone by
    assert logic.notify_at() == clock.base + timedelta(milliseconds=1)
    records, _ = logic.on_notify()
    bars = [e.record for e in records if isinstance(e, Emit) and e.stream == "bars"]
    assert [(b["end_ms"], b["ts_init_ms"]) for b in bars] == [(end, end + 600)]
    clock.now = end + 700
    records, _ = logic.on_batch([[_t(end - 100)]])  # in the bar just closed: late
    late = [e.record for e in records if isinstance(e, Emit) and e.stream == "dead_letters"]
    assert [d["ts_init_ms"] for d in late] == [end + 700]


def test_live_a_tick_that_fails_is_tried_again_a_tick_later_not_at_once(tmp_path: Path):
    """A due bar the tick could not close (it raised) would have the step woken again at
    once, an error record each time; it waits a TICK, and the due time after that one."""
    from dataflows.ensemble import MarketLogic

    end = T0 + 5 * M
    clock = _Fixed(end - 400)
    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall", ENSEMBLE_ALLOWED_LATENESS_MS="300")
    logic = MarketLogic(settings, Stamp("x", clock.now_ms), None, None, clock=clock)
    logic.on_batch([[_t(end - 900 + i * 100) for i in range(5)]])
    assert logic.state is not None
    tick = logic.state.on_tick

    def broken(*args: Any) -> None:
        raise RuntimeError("broken")

    logic.state.on_tick = broken  # type: ignore[method-assign]
    clock.now = end + 600
    records, _ = logic.on_notify()
    assert [e.stream for e in records] == ["errors"]
    assert _plain_tick(logic), "still due: a spin"
    logic.state.on_tick = tick  # type: ignore[method-assign]
    clock.now, clock.base = end + 1_000, datetime.now(UTC)
    records, _ = logic.on_notify()
    closed = [e.record["end_ms"] for e in records if isinstance(e, Emit) and e.stream == "bars"]
    assert closed == [end]
    clock.now = end + 5 * M + 100  # the next (gap) bar is due at end + 5 min + 600
    assert logic.notify_at() == clock.base + timedelta(milliseconds=500)


def test_the_flow_runs_its_live_steps_on_the_clock_it_is_given(tmp_path: Path):
    """`build_flow(clock=...)` reaches the market step and the records' stamps: on a clock
    that moves a minute at every reading, a quiet bar closes by the tick before the
    input ends."""

    class Ahead(_Fixed):
        def now_ms(self) -> int:
            self.now += M
            return self.now

        def wake_at(self, ms: int) -> datetime:
            return datetime.now(UTC) + timedelta(milliseconds=20)

    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall", ENSEMBLE_ALLOWED_LATENESS_MS="0")
    msgs = [_trade(T0 + 1_000 + i * 100, 100.0 + i) for i in range(5)]
    log: list[Any] = []  # the sink's records and, when the input ends, its end time
    clock = Ahead(T0 + 60 * M)
    run_main(
        build_flow(
            settings, sink=TestingSink(log), source=_QuietSource(msgs, 1.0, log), clock=clock
        )
    )
    ended = next(i for i, x in enumerate(log) if isinstance(x, int))
    bars = [r for x in log[:ended] if isinstance(x, tuple) for s, r in [x] if s == "bars"]
    assert bars and bars[0]["end_ms"] == T0 + 5 * M, "not closed by the tick on the given clock"
    assert T0 + 60 * M < bars[0]["ts_init_ms"] <= clock.now


def test_kafka_input_refuses_a_clock_other_than_the_wall_clock(tmp_path: Path):

    settings = small_settings(tmp_path, ENSEMBLE_KAFKA_BOOTSTRAP="127.0.0.1:9")
    with pytest.raises(ValueError, match="wall clock"):
        build_flow(settings, clock=Clock())


class _QuietPartition(StatefulSourcePartition[RawMessage, None]):
    """Sends its messages, stays quiet for `quiet_s` without ending, then ends."""

    def __init__(self, msgs: list[RawMessage], quiet_s: float, ended_ms: list[int]) -> None:
        self.msgs, self.quiet_s, self.ended_ms = msgs, quiet_s, ended_ms
        self.end_at: float | None = None

    def next_batch(self) -> list[RawMessage]:
        if self.msgs:
            batch, self.msgs = self.msgs, []
            self.end_at = time.time() + self.quiet_s
            return batch
        assert self.end_at is not None
        if time.time() >= self.end_at:
            self.ended_ms.append(time.time_ns() // 1_000_000)
            raise StopIteration
        return []

    def next_awake(self) -> datetime:
        return datetime.now(UTC) + timedelta(milliseconds=50)

    def snapshot(self) -> None:
        return None


class _QuietSource(FixedPartitionedSource[RawMessage, None]):
    def __init__(self, msgs: list[RawMessage], quiet_s: float, ended_ms: list[int]) -> None:
        self.msgs, self.quiet_s, self.ended_ms = msgs, quiet_s, ended_ms

    def list_parts(self) -> list[str]:
        return ["quiet"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _QuietPartition:
        return _QuietPartition(self.msgs, self.quiet_s, self.ended_ms)


@pytest.mark.slow
def test_live_a_bar_closes_by_the_wall_clock_when_its_symbol_goes_quiet(tmp_path: Path):
    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall", ENSEMBLE_ALLOWED_LATENESS_MS="300")
    now = time.time_ns() // 1_000_000
    end = now - now % (5 * M)  # the last 5m boundary: its bar ends here
    # Progress is the 3rd latest trade (QUORUM), end - 800: the tick closes the bar once
    # 1.1 s of quiet has passed (with the 300 ms lateness); the step wakes then
    # (`tick_due_ms`), well before the input ends at 5 s.
    msgs = [_trade(end - 1_000 + i * 100, 100.0 + i) for i in range(5)]
    ended_ms: list[int] = []
    items: list[tuple[str, dict[str, Any]]] = []
    run_main(
        build_flow(settings, sink=TestingSink(items), source=_QuietSource(msgs, 5.0, ended_ms))
    )
    (bar,) = [r for s, r in items if s == "bars" and r["timeframe"] == "5m"]
    assert (bar["end_ms"], bar["count"]) == (end, 5)
    assert bar["ts_init_ms"] < ended_ms[0], "closed only by the end of input, not by the tick"


def test_replays_on_the_event_clock_never_tick(tmp_path: Path):
    from dataflows.ensemble import MarketLogic

    logic = MarketLogic(small_settings(tmp_path), Stamp("x"), None, None)
    assert logic.notify_at() is None
    live = MarketLogic(small_settings(tmp_path, ENSEMBLE_CLOCK="wall"), Stamp("x"), None, None)
    assert live.notify_at() is not None


# -- item 17: records branch off to the sink ----------------------------------------------


def test_dead_letters_and_bars_never_ride_the_keyed_stream_into_the_later_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import dataflows.ensemble as ens

    seen: list[str] = []
    context_step, features_step = ens.context_step, ens.features_step

    def spy_context(settings, stamp, join, item):
        seen.append(type(item).__name__)
        return context_step(settings, stamp, join, item)

    def spy_features(stamp, fs, item):
        seen.append(type(item).__name__)
        return features_step(stamp, fs, item)

    monkeypatch.setattr(ens, "context_step", spy_context)
    monkeypatch.setattr(ens, "features_step", spy_features)
    msgs = [_trade(T0 + i * 20_000) for i in range(40)] + [_trade(T0 + 1_000, trade_id="late")]
    msgs += [_trade(T0 + 15 * M)]
    out = run_records(small_settings(tmp_path), msgs)
    assert [d["reason"].split(":")[0] for d in out["dead_letters"]] == ["late"]
    assert len([b for b in out["bars"] if b["timeframe"] == "5m"]) == 4
    assert "Emit" not in seen
    assert {"Close", "BarContext"} <= set(seen)


@pytest.mark.slow
def test_live_an_operator_halt_acts_on_arrival_not_at_the_next_bar_close(tmp_path: Path):
    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall")
    now = time.time_ns() // 1_000_000
    start = now - now % (5 * M)  # the open bar: it closes minutes from now
    msgs = [_trade(start + i, 100.0) for i in range(3)]
    halt = signed({"symbol": "BTC-PERP", "ts_event_ms": now, "command": "halt",
                   "operator": "ops", "reason": "drill", "command_id": "c1"})  # fmt: skip
    msgs.append(RawMessage("control", halt))
    ended_ms: list[int] = []
    items: list[tuple[str, dict[str, Any]]] = []
    run_main(
        build_flow(settings, sink=TestingSink(items), source=_QuietSource(msgs, 2.0, ended_ms))
    )
    (audit,) = [r for s, r in items if s == "repro" and r["event"] == "control"]
    assert audit["ts_init_ms"] < ended_ms[0], "applied only when the input ended"
    assert audit["command"]["command_id"] == "c1"
    assert json.loads(audit["change_json"])["after"]["trading_state"] == "HALTED"
