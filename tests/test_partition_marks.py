"""Partition marks: the Kafka source's view of every input partition travels with the
records (operators/watermark.py), so a symbol's steps see every partition as one worker
sees it, in whichever process it is read, and never ahead of the records they have."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from dataflows.io import RawMessage
from operators.config import CohortConfig
from operators.events import Trade, expand_blocks
from operators.market import MarketState
from operators.telemetry import Stamp
from operators.watermark import InputPartitions, MarkRelay, PartitionMark
from tests.conftest import small_settings
from tests.test_lying_input import T0, M, S, _bars, _run, _t


def _two_processes(pause_ms: int) -> tuple[MarketState, list[Any], list[Trade]]:
    """BTC-PERP's trades on trades#1, read by the other process, which pauses once for
    `pause_ms` halfway; trades#0, read here, runs 30 minutes ahead. Every partition's
    marks reach the step behind the records read before them (as decode sends them)."""
    view = InputPartitions(listed={"trades#0", "trades#1"})
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig(), source_idle_ms=10_000, inputs=view)
    st.progress.restart(0)
    out: list[Any] = []
    real = [_t(T0 + i * S, part="trades#1") for i in range(1_800)]
    now = 1_000
    for i, e in enumerate(real):
        if i == 900:  # the other process stops sending; trades#0 goes on here
            for _ in range(pause_ms // 1_000):
                now += 1_000
                view.apply(PartitionMark("trades#0", True, 1, now, e.ts_event_ms + 30 * M), now)
                st.recheck(now, out)
        now += 100
        view.apply(PartitionMark("trades#0", True, 1, now, e.ts_event_ms + 30 * M), now)
        st.on_event(e, out, now)
        view.apply(PartitionMark("trades#1", False, 1, now, e.ts_event_ms), now)
    return st, out, real


def test_a_symbol_read_in_another_process_is_held_as_one_worker_holds_it_through_a_pause():
    """Two processes (`-a`): a process's view used to cover only the partitions it read,
    so trades#0 closed BTC-PERP's bars at its own time, 30 minutes ahead, and BTC-PERP's
    trades, on their way from the other process, were late. With every partition's marks
    the step holds BTC-PERP while trades#1 has records left to read, even through a
    pause longer than the idle bound (an answer kept only while records keep arriving
    closed bars in such a pause: 150 trades late)."""
    clean = _bars(_run([(dataclasses.replace(e, part=None), 0) for e in _two_processes(0)[2]])[1])
    for pause_ms in (0, 15_000):
        st, out, _ = _two_processes(pause_ms)
        assert st.late_count == 0
        closed = [(start, count) for start, count, _ in _bars(out)]
        assert closed == [(T0 + k * 5 * M, 300) for k in range(5)]  # up to its own time
        st.flush(out)
        assert _bars(out) == clean


def test_a_partition_not_heard_from_yet_holds_every_symbol_until_its_first_mark():
    """In any process: a listed partition whose first mark has not arrived (its reader
    not started, or far away) may deliver anything, so it holds, past the idle bound too;
    its first mark (caught up, empty) lets the bars close."""
    view = InputPartitions(listed={"trades#0", "control#0"})
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig(), source_idle_ms=10_000, inputs=view)
    out: list[Any] = []
    for i in range(900):
        now = 20_000 + i * 100
        st.on_event(_t(T0 + i * S, part="trades#0"), out, now)
        view.apply(PartitionMark("trades#0", False, 1, now, T0 + i * S), now)
    assert not _bars(out)
    view.apply(PartitionMark("control#0", True, 0, 120_000), 120_000)
    st.recheck(120_000, out)
    assert [start for start, _, _ in _bars(out)] == [T0, T0 + 5 * M]


def test_the_source_tells_the_view_every_partition_by_the_name_events_carry(monkeypatch):
    from bytewax.connectors.kafka import KafkaSource

    from dataflows.io import _WatchedKafkaSource, partition_name

    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: ["0-p.trades", "11-p.funding"])
    view = InputPartitions()
    source = _WatchedKafkaSource(
        view, "p", (None, None), ["127.0.0.1:9"], ["p.trades", "p.funding"]
    )
    assert source.list_parts() == ["0-p.trades", "11-p.funding"]
    assert view.listed == {partition_name("p.trades", 0), partition_name("p.funding", 11)}
    assert view.hold_only == set()


def test_the_source_names_the_control_topics_partition_as_one_that_only_holds_back(
    monkeypatch,
):
    from bytewax.connectors.kafka import KafkaSource

    from dataflows.io import _WatchedKafkaSource, partition_name

    parts = ["0-p.trades", "0-p.control", "0-p.controls", "0-q.control"]
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: parts)
    view = InputPartitions()
    source = _WatchedKafkaSource(view, "p", (None, None), ["127.0.0.1:9"], ["p.trades"])
    source.list_parts()
    assert view.hold_only == {partition_name("p.control", 0)}
    assert view.fork().hold_only is view.hold_only  # every step's view knows it


def test_a_command_dated_ahead_of_a_quiet_market_does_not_carry_its_time_forward():
    """A following flow had read its replayed days (the trades partition caught up and
    quiet) when an operator sent reset_kill_switch dated now, two years after them: the
    control partition, alone busy, moved BTC-PERP's time to the command's and the market
    step closed every empty 5m bar between (210,000 of them, the flow frozen for good).
    The control partition holds a symbol back while the market is busy, as before, but
    never carries it forward."""
    view = InputPartitions(listed={"p.trades#0", "p.control#0"}, hold_only={"p.control#0"})
    st = MarketState("BTC-PERP", False, 0, CohortConfig(), source_idle_ms=10_000, inputs=view)
    st.progress.restart(0)
    out: list[Any] = []
    now = 1_000
    view.apply(PartitionMark("p.control#0", True, 0, now, None, made_ms=now), now)
    for i in range(600):  # ten minutes of trades, one a second
        now += 10
        st.on_event(_t(T0 + i * S, part="p.trades#0"), out, now)
        view.apply(PartitionMark("p.trades#0", False, i + 1, now, T0 + i * S, made_ms=now), now)
        view.apply(PartitionMark("p.control#0", True, 0, 1_000, None, made_ms=now), now)
    now += 1_000  # the trades partition is read to its end
    view.apply(PartitionMark("p.trades#0", True, 600, now - 1_000, T0 + 599 * S, made_ms=now), now)
    st.recheck(now, out)
    closed = _bars(out)
    assert closed and max(start for start, _, _ in closed) < T0 + 10 * M
    two_years = T0 + 730 * 86_400_000
    now += 20_000  # quiet for longer than the idle bound; then a command dated ahead
    view.apply(PartitionMark("p.trades#0", True, 600, now - 21_000, T0 + 599 * S, made_ms=now), now)
    view.apply(PartitionMark("p.control#0", True, 1, now, two_years, made_ms=now), now)
    st.recheck(now, out)
    assert _bars(out) == closed, "no bar closed by the command's time"
    assert st.progress.value is not None and st.progress.value < T0 + 11 * M


def test_decode_sends_each_partitions_mark_to_every_symbol_behind_its_records(tmp_path: Path):
    """A batch's marks go to every symbol's key (the first time), after that symbol's
    events, each with the latest event time decoded from its partition so far (any
    symbol's): BTC-PERP, with no record in it, still sees trades#0 move with ETH-PERP's
    trades. Only a partition's last mark in a batch goes."""
    from dataflows.ensemble import decode_batch
    from schemas.codec import encode, with_defaults

    settings = small_settings(tmp_path)
    stamp = Stamp(settings.strategy.strategy_id, None)

    def trade(k: int) -> RawMessage:
        rec = {"symbol": "ETH-PERP", "ts_event_ms": T0 + k * S, "trade_id": str(k), "px": 2e3,
               "qty": 0.1, "side": "buy", "venue": "binance"}  # fmt: skip
        return RawMessage("trades", encode("trade", with_defaults("trade", rec)), "p.trades", 0, k)

    first = PartitionMark("p.trades#0", False, 2, 900)
    marks = [PartitionMark("p.trades#0", False, 3, 1_000), PartitionMark("p.trades#1", True, 0, 1)]
    keys = {"BTC-PERP": "BTC-PERP/0", "ETH-PERP": "ETH-PERP/1"}
    items = [trade(0), trade(2), first, trade(1), *marks]
    out = dict(decode_batch(settings, stamp, None, keys, items, relay=MarkRelay()))
    assert out["BTC-PERP/0"] == marks
    assert [e.trade_id for e in expand_blocks(out["ETH-PERP/1"][:-2])] == ["0", "2", "1"]
    assert out["ETH-PERP/1"][-2:] == marks
    assert [m.latest_ms for m in marks] == [T0 + 2 * S, None]


def test_a_symbol_without_records_gets_a_partitions_mark_when_it_changes_or_now_and_then():
    """Every mark to every symbol cost two processes a tenth of their time exchanging
    them; a mark held back only holds a little longer, since the next carries it all
    (totals, and the latest event time decoded from the partition so far)."""
    relay = MarkRelay(every_s=0.2)
    got: list[PartitionMark] = []

    def send(t: float, caught_up: bool, busy: bool) -> dict[str, list[str]]:
        mark = PartitionMark("trades#0", caught_up, 10, int(t * 1000))
        got.append(mark)
        trades = [_t(T0 + int(t * 1000), part="trades#0")] if busy else []
        by_symbol: dict[str, list[Any]] = {"ETH-PERP": trades} if busy else {}
        relay.relay([mark], by_symbol, ["BTC-PERP", "ETH-PERP"], t)
        return {s: [type(x).__name__ for x in v] for s, v in by_symbol.items()}

    both = ["PartitionMark"]
    assert send(0.0, False, True) == {"BTC-PERP": both, "ETH-PERP": ["Trade", *both]}
    assert send(0.1, False, True) == {"ETH-PERP": ["Trade", *both]}  # BTC-PERP: too soon
    assert send(0.25, False, True)["BTC-PERP"] == both  # due again
    assert send(0.3, True, False) == {"BTC-PERP": both, "ETH-PERP": both}  # caught up: both
    assert send(0.35, True, False) == {}  # nothing changed, not due
    assert [m.latest_ms for m in got] == [T0, T0 + 100, T0 + 250, T0 + 250, T0 + 250]


def _message(value: bytes, offset: int) -> Any:
    """A confluent_kafka Message, as the consumer gives one."""
    from confluent_kafka import Message

    return Message(topic="p.trades", partition=3, offset=offset, value=value)


def _end() -> Any:
    """The message librdkafka gives at a partition's end (with enable.partition.eof)."""
    from confluent_kafka import KafkaError, Message

    return Message(topic="p.trades", partition=3, error=KafkaError(KafkaError._PARTITION_EOF))


_END = object()  # in a script of batches: the partition's end


class _Inner:
    """Bytewax's Kafka partition (and its consumer) as far as `_WatchedPartition` asks."""

    def __init__(self, batches: list[list[bytes]], high: int) -> None:
        self.batches, self._eof, self._offset = batches, False, 5
        self._consumer, self._batch_size, self._raise_on_errors = self, 1000, False
        self.high = high

    def consume(self, n: int, timeout: float) -> list[Any]:
        return [
            _end() if v is _END else _message(v, self._offset + i)
            for i, v in enumerate(self.batches.pop(0))
        ]

    def get_watermark_offsets(self, tp: Any, cached: bool) -> tuple[int, int]:
        return 0, self.high


class _Meta:
    def open(self) -> None:
        return None

    def watermarks(self, tp: Any) -> tuple[int, int]:
        return 0, 5


def test_a_kafka_partition_marks_records_changes_of_state_and_once_settled(monkeypatch):
    """Totals and the last time records were read (its first poll before any); once
    caught up and quiet for MARKS_EVERY_S after a mark, a settled mark, repeated every
    HEARTBEAT_S while it stays so; its end's last batch is settled and ended."""
    import types

    import dataflows.io as io

    clock = {"ms": 100_000}
    monkeypatch.setattr(io, "time", types.SimpleNamespace(monotonic=lambda: clock["ms"] / 1e3))
    monkeypatch.setattr(io, "wall_clock_ms", lambda: clock["ms"])
    inner = _Inner([[], [], [], [b"m1", b"m2"], [], [], [], [], [], [b"m3", _END]], high=10)
    part = io._WatchedPartition(inner, "p.trades", "trades", 3, True, _Meta())
    got = []
    for dt in (0, 100, 150, 100, 100, 100, 300, 500, 500, 100):
        clock["ms"] += dt
        got.append(part.next_batch())
    marks = [(m.caught_up, m.records, m.read_ms, m.settled, m.made_ms, m.ended)
             for b in got for m in b[-1:] if type(m) is PartitionMark]  # fmt: skip
    assert [len(b) for b in got] == [1, 0, 1, 2, 1, 0, 1, 0, 1, 2]  # a run, then its mark
    assert marks == [
        (True, 0, 100_000, False, 100_000, False),  # the first poll: caught up, empty
        (True, 0, 100_000, True, 100_250, False),  # quiet for 0.25 s after it: settled
        (False, 2, 100_350, False, 100_350, False),  # records, more left to read
        (True, 2, 100_350, False, 100_450, False),  # caught up again
        (True, 2, 100_350, True, 100_850, False),  # settled, 0.4 s later
        (True, 2, 100_350, True, 101_850, False),  # still so a second later: a heartbeat
        (True, 3, 101_950, True, 101_950, True),  # its end: settled and ended
    ]
    assert got[3][0] == io.KafkaRun("trades", "p.trades", 3, [b"m1", b"m2"], [5, 6])
    assert got[9][0] == io.KafkaRun("trades", "p.trades", 3, [b"m3"], [7])
    assert inner._offset == 8 and inner._eof  # the next to read; StopIteration next time
    with pytest.raises(StopIteration):
        part.next_batch()
    quiet = io._WatchedPartition(_Inner([[b"m1"]], 10), "p.trades", "trades", 3, False, _Meta())
    assert quiet.next_batch() == [io.KafkaRun("trades", "p.trades", 3, [b"m1"], [5])]  # no mark


def test_a_caught_up_partition_whose_marks_stop_is_not_idle_unless_it_ended():
    """Two processes: the other one froze while its partitions were caught up and quiet.
    Its last marks said so, and its partitions looked idle for as long as it stayed
    frozen, so bars closed that the records it read once it ran again belonged to (late).
    Its heartbeats stop with it: a caught-up partition silent for SILENT_MS holds again;
    one that ended (a finite input) does not."""
    from operators.watermark import SILENT_MS

    view = InputPartitions(listed={"trades#1", "funding#0"})
    view.apply(PartitionMark("trades#1", True, 5, 1_000, settled=True, made_ms=2_000), 2_000)
    view.apply(
        PartitionMark("funding#0", True, 5, 1_000, settled=True, made_ms=2_000, ended=True), 2_000
    )
    assert view.idle("trades#1", 2_000 + SILENT_MS, 1_000)  # heard within SILENT_MS
    assert not view.idle("trades#1", 2_001 + SILENT_MS, 1_000)  # silent: maybe frozen
    assert view.idle("funding#0", 60_000, 1_000)  # ended: silent for good
    view.apply(PartitionMark("trades#1", True, 5, 1_000, settled=True, made_ms=9_000), 9_000)
    assert view.idle("trades#1", 9_500, 1_000)  # a heartbeat again


@pytest.mark.parametrize("ahead_ms", [-5_000, 0, 5_000])
def test_a_partition_read_on_a_machine_whose_clock_differs_is_idle_while_heard_from(ahead_ms):
    """Two machines: the process that reads trades#1 has a clock `ahead_ms` ahead of this
    step's. Its marks' times were read raw: 5 s behind, a caught-up partition heard from
    every second looked silent for ever (every symbol held); 5 s ahead, a frozen reader
    looked heard from 5 s longer (records it read after the freeze could come late). Now
    it is idle while its heartbeats come and silent SILENT_MS after the last one, on this
    step's clock, whatever the difference."""
    from operators.watermark import SILENT_MS

    view = InputPartitions(listed={"trades#1"})
    here, trip = 100_000, 5  # a mark takes 5 ms to get here
    for _ in range(10):  # a heartbeat a second; its records last read at 90 s, there
        here += 1_000
        made = here - trip + ahead_ms
        view.apply(_there("trades#1", 90_000 + ahead_ms, made), here)
        assert view.idle("trades#1", here + 500, 10_000)
    assert view.last_read_ms["trades#1"] == 90_000 + trip
    # its reader freezes: the heartbeats stop (the shortest trip counts as the clocks')
    assert view.idle("trades#1", here + SILENT_MS, 10_000)
    assert not view.idle("trades#1", here + SILENT_MS + 1, 10_000)


def _there(part: str, read_ms: int, made_ms: int) -> PartitionMark:
    """A caught-up partition's mark, made on another machine's clock."""
    return PartitionMark(part, True, 5, read_ms, made_ms=made_ms, clock="another machine")


def test_a_mark_held_up_on_its_way_looks_as_old_as_it_is():
    """The shift is the least seen (`HostClock`): a heartbeat that reaches a busy step
    2.5 s late is 2.5 s old there, not fresh, and the partition is silent 3 s after it
    was made, as on one machine. A mark made on this machine's clock is read as it is,
    however late."""
    from operators.watermark import SILENT_MS, THIS_CLOCK

    view = InputPartitions(listed={"trades#1"})
    for here in range(1_000, 10_001, 1_000):  # its clock 2 s behind this one, 5 ms trips
        view.apply(_there("trades#1", 0, here - 5 - 2_000), here)
    view.apply(_there("trades#1", 0, 11_000 - 5 - 2_000), 13_500)
    assert view.heard_ms["trades#1"] == 11_000
    assert view.idle("trades#1", 11_000 + SILENT_MS, 1_000)
    assert not view.idle("trades#1", 11_001 + SILENT_MS, 1_000)
    late = PartitionMark("trades#0", True, 5, 500, made_ms=1_000, clock=THIS_CLOCK)
    view.apply(late, 9_000)
    assert (view.heard_ms["trades#0"], view.last_read_ms["trades#0"]) == (1_000, 500)


def test_a_clock_stepped_back_holds_its_partition_for_at_most_the_window():
    """A clock stepped (NTP) makes the difference jump. Forward there: the shift follows
    at once. Back there: the partition looks older than it is, so it holds (the safe
    side), until the marks from before the step have left the window."""
    from operators.watermark import CLOCK_WINDOW_MS

    view = InputPartitions(listed={"trades#1"})
    here = 0

    def beat(step_ms: int) -> bool:
        nonlocal here
        here += 1_000
        view.apply(_there("trades#1", 0, here + step_ms), here)
        return view.idle("trades#1", here, 1_000)

    assert all([beat(0) for _ in range(30)])
    assert all([beat(5_000) for _ in range(30)])  # stepped forward 5 s there
    held = [beat(0) for _ in range(CLOCK_WINDOW_MS // 1_000 + 5)]  # and back
    assert held.index(True) == CLOCK_WINDOW_MS // 1_000 - 1 and all(held[held.index(True) :])


def test_a_read_keeps_the_shift_it_came_with_and_the_window_stays_small():
    """A clock stepped forward there lowers the shift at once; the last read, made
    before the step, keeps the shift it came with: with the new one it looked 5 s older,
    and the partition idle 5 s early. And marks many times a second, each later than the
    one before (a step falling behind), keep at most one entry a second."""
    from operators.watermark import CLOCK_WINDOW_MS

    view = InputPartitions(listed={"trades#1"})
    view.apply(_there("trades#1", 1_000, 1_000), 1_000)  # shift 0
    view.apply(_there("trades#1", 1_000, 7_000), 2_000)  # stepped forward 5 s there
    assert view.heard_ms["trades#1"] == 2_000
    assert view.last_read_ms["trades#1"] == 1_000
    assert not view.idle("trades#1", 10_999, 10_000)
    view.apply(_there("trades#1", 8_000, 8_000), 3_000)  # a new read: the new shift
    assert view.last_read_ms["trades#1"] == 3_000
    for i in range(10 * CLOCK_WINDOW_MS // 1_000):
        view.apply(_there("trades#1", 8_000, 8_000 + i * 100), 3_000 + i * 101)
    assert len(view.hosts["trades#1"].seen) <= CLOCK_WINDOW_MS // 1_000 + 1


def test_live_a_tick_waits_while_a_partition_is_read_up_to_its_end_and_stops_at_a_command():
    """Live with Kafka, the wall-clock tick moved a quiet symbol's time on from its
    progress whatever the partitions said: it closed BTC-PERP's bar while funding#0 was
    still being read up to its end, and past a command the commands step held. Now it
    waits while a partition has records left and delivered some within the idle bound
    (or has not been heard from within that bound of the start), and stops at the
    command; `tick_due_ms` says so (None: the step polls). The wait is bounded: a
    partition that never reads as caught up but delivers nothing (a transactional
    producer's commit markers, a stuck fetch) holds nothing once idle. Each tick follows
    a recheck, as in `MarketLogic.on_notify`."""
    end = T0 + 5 * M
    view = InputPartitions(listed={"trades#0", "funding#0"})
    st = MarketState("BTC-PERP", False, 0, CohortConfig(), source_idle_ms=10_000, inputs=view)
    arrived = end - 400
    st.progress.restart(arrived - 5_000)  # the step started 5 s before the trades came
    out: list[Any] = []
    for i in range(5):  # the last at end - 500; the 3rd latest at end - 700
        st.on_event(_t(end - 900 + i * 100, part="trades#0"), out, arrived)
    view.apply(PartitionMark("trades#0", True, 5, arrived, end - 500, made_ms=arrived), arrived)
    st.recheck(arrived, out)  # funding#0 not heard from yet, 5 s after the start: it holds
    assert st.builder.max_event_ms is None
    assert st.tick_due_ms(arrived, arrived) is None and not _bars(out)
    view.apply(PartitionMark("funding#0", True, 3, arrived - M, T0, made_ms=arrived), arrived)
    st.recheck(arrived, out)
    assert st.builder.max_event_ms == end - 700 and not _bars(out)

    def tick(now: int, funding_caught_up: bool = True, funding_read: int = arrived - M) -> Any:
        view.apply(PartitionMark("trades#0", True, 5, arrived, end - 500, made_ms=now), now)
        view.apply(
            PartitionMark("funding#0", funding_caught_up, 3, funding_read, T0, made_ms=now), now
        )
        st.recheck(now, out)
        st.on_tick(now, now - arrived, out)
        return st.tick_due_ms(now, arrived)

    now = end + M  # a minute of quiet since the trades came
    assert tick(now, funding_caught_up=False, funding_read=now - 1_000) is None  # read to its end
    assert not _bars(out)
    view.held_ms["BTC-PERP"] = end - M  # a command at 4:00 held by the commands step
    assert tick(now) is None and not _bars(out)
    del view.held_ms["BTC-PERP"]
    assert st.tick_due_ms(now, arrived) == end + 300  # 700 ms after the trades came
    tick(now, funding_caught_up=False, funding_read=now - 10_000)  # never caught up, idle
    assert [start for start, _, _ in _bars(out)] == [T0]


def test_a_partition_not_heard_from_holds_the_tick_only_within_the_idle_bound_of_the_start():
    view = InputPartitions(listed={"trades#0", "control#0"})
    view.apply(PartitionMark("trades#0", True, 5, 1_000, T0, made_ms=1_000), 1_000)
    assert view.catching_up(10_999, 10_000, 1_000)
    assert not view.catching_up(11_000, 10_000, 1_000)
    view.apply(PartitionMark("control#0", False, 1, 11_000, T0, made_ms=11_000), 11_000)
    assert view.catching_up(20_999, 10_000, 1_000)  # records left, some read 10 s ago
    assert not view.catching_up(21_000, 10_000, 1_000)
    view.apply(PartitionMark("control#0", True, 1, 11_000, T0, made_ms=11_000, ended=True), 11_000)
    assert not view.catching_up(11_001, 10_000, 1_000)  # caught up (or ended)


def test_a_settled_mark_reaches_a_symbol_a_held_back_one_did_not():
    """The control topic's first mark reached BTC-PERP (caught up, empty); 0.1 s later an
    ETH-PERP command was read, its mark held back from BTC-PERP, and the topic went
    quiet. BTC-PERP's view kept "empty", so the topic was idle at once, where one worker
    holds BTC-PERP at the command's time for the idle bound. The settled mark fixes it."""
    relay = MarkRelay(every_s=0.2)
    view = InputPartitions(listed={"control#0"})
    command = _t(T0 + 7 * M, part="control#0")

    def deliver(mark: PartitionMark, now_s: float, events: list[Any]) -> None:
        by_symbol: dict[str, list[Any]] = {"ETH-PERP": events} if events else {}
        relay.relay([mark], by_symbol, ["BTC-PERP", "ETH-PERP"], now_s)
        for m in by_symbol.get("BTC-PERP", []):
            view.apply(m, round(now_s * 1_000))

    deliver(PartitionMark("control#0", True, 0, 1_000), 1.0, [])
    deliver(PartitionMark("control#0", True, 1, 1_100), 1.1, [command])
    assert view.idle("control#0", 2_000, 10_000)  # held back: BTC-PERP sees it empty
    deliver(PartitionMark("control#0", True, 1, 1_100, settled=True), 1.3, [])
    assert not view.idle("control#0", 2_000, 10_000)  # read 0.9 s ago: not idle yet
    assert view.latest_ms["control#0"] == T0 + 7 * M and view.idle("control#0", 11_100, 10_000)


# -- the two keyed steps ------------------------------------------------------------------
def _mark(part: str, caught_up: bool, records: int, read_ms: int, latest: int) -> PartitionMark:
    return PartitionMark(part, caught_up, records, read_ms, latest)


def test_the_commands_step_moves_its_own_view_after_the_events_and_passes_the_marks_on_last(
    tmp_path: Path,
):
    from dataflows.ensemble import CommandLogic

    shared = InputPartitions(listed={"trades#0"})
    logic = CommandLogic(small_settings(tmp_path), Stamp("x"), shared, None)
    assert logic.inputs is not shared and logic.inputs.held_ms is shared.held_ms  # a fork
    seen_by_events: list[dict[str, bool]] = []
    on_events = logic.gate.on_events

    def spy(events: list[Any], now_ms: int, inputs: InputPartitions) -> list[Any]:
        seen_by_events.append(dict(inputs.caught_up))
        return on_events(events, now_ms, inputs)

    logic.gate.on_events = spy  # type: ignore[method-assign]
    trade, mark = _t(T0, part="trades#0"), _mark("trades#0", False, 1, 5, T0)
    (passed,), _ = logic.on_item([trade, mark])
    assert passed == [trade, mark]  # the marks go on last, behind what passes
    assert seen_by_events == [{}]  # the events were judged before the mark moved the view
    assert logic.inputs.caught_up == {"trades#0": False} and not shared.caught_up
    later = _mark("trades#0", True, 1, 6, T0)
    assert logic.on_item([later])[0] == [[later]]  # marks alone go on too


def test_the_market_step_folds_the_events_then_moves_its_view_and_closes_what_it_allows(
    tmp_path: Path,
):
    from dataflows.ensemble import MarketLogic

    shared = InputPartitions(listed={"trades#0", "funding#0"})
    settings = small_settings(tmp_path, ENSEMBLE_CLOCK="wall")
    logic = MarketLogic(settings, Stamp("x"), shared, None)
    assert logic.inputs is not shared and logic.inputs.passing_ms is shared.passing_ms
    logic.on_batch([[_mark("funding#0", True, 0, 1, T0)]])  # marks alone: no state yet
    assert logic.state is None and logic.inputs.caught_up == {"funding#0": True}
    arrived = logic.last_arrival_ms
    trades = [_t(T0 + i * S, part="trades#0") for i in range(700)]
    folded: list[int] = []
    on_events = MarketState.on_events

    def spy(st: MarketState, events: list[Any], *args: Any) -> None:
        folded.append(len(st.inputs.caught_up))  # the view when the events are folded
        on_events(st, events, *args)

    MarketState.on_events = spy  # type: ignore[method-assign]
    try:
        out, _ = logic.on_batch([[*trades, _mark("trades#0", False, 700, 2, T0 + 699 * S)]])
    finally:
        MarketState.on_events = on_events  # type: ignore[method-assign]
    assert folded == [1]  # trades#0's mark applied after the events, not before
    assert logic.state is not None and logic.last_arrival_ms >= arrived
    # folded while trades#0 was unheard (nothing could close), then its mark: the recheck
    # after it closed the bars it allows
    bars = [x.record for x in out if getattr(x, "stream", None) == "bars"]
    assert [(b["timeframe"], b["ts_event_ms"]) for b in bars] == [
        ("5m", T0 + 5 * M),
        ("5m", T0 + 10 * M),
    ]
    stamp = logic.last_arrival_ms
    time.sleep(0.002)  # a later wall-clock millisecond
    logic.on_batch([[_mark("trades#0", True, 700, 3, T0 + 699 * S)]])
    assert logic.last_arrival_ms == stamp  # a mark is no record: the wall-clock idle time


def test_a_resumed_commands_step_holds_the_market_step_at_the_commands_it_holds(tmp_path: Path):
    """After a restart the commands step's held commands come back in its snapshot; the
    market step learned of them only at the symbol's next record, and could close bars
    past them meanwhile (marks alone move it now)."""
    from dataflows.ensemble import CommandLogic
    from operators.commands import CommandGate
    from tests.test_commands import _cmd, _control

    gate = CommandGate(window_ms=900_000, idle_ms=10_000)
    held = _control(_cmd(symbol="BTC-PERP"))
    gate.held = [held]
    shared = InputPartitions(listed={"control#0"})
    CommandLogic(small_settings(tmp_path), Stamp("x"), shared, gate)
    assert shared.held_ms == {"BTC-PERP": held.ts_event_ms}
    assert shared.cap_ms("BTC-PERP") == held.ts_event_ms
