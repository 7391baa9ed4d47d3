"""Event-time progress of one symbol's input, which one lie or a minority cannot drag forward.

The bars of a symbol close when its progress, less the allowed lateness, passes their end.
With progress = the latest event time seen, one trade stamped 290 s ahead (inside the
allowed clock skew) made every real trade late for five minutes, and trades under a null
key, read ahead on other partitions, closed every bar (issue 14).

So each source keeps its own progress: a source is a Kafka topic partition, or the one
event-ordered stream of a file run (source None). A source's progress is the lowest of
the `quorum` latest event times it delivered, so a record stamped ahead moves it only
once `quorum - 1` more records agree (`QUORUM` for the trades that drive bars; 1 for
candles, funding, overlays, cohorts and commands, which are aggregates or rare). The
symbol's progress is the minimum over the sources that may still deliver an earlier
record, never decreasing: a partition read ahead of the others, or carrying misrouted
records, cannot close another's bars, and funding, overlay, cohort and control records
reach the context join before the bar they belong to closes (topics aligned by event
time, however fast each is read).

Which sources may still deliver: with a view of the Kafka input's partitions
(`InputPartitions`), every partition that is not idle (records left to read, or read
within `idle_ms`), even one that has not delivered a record yet. Such a partition holds
the symbol at its clock while the symbol's records come from it, and at the partition's
latest event time (any symbol's) otherwise: before it ever did, and once the symbol has
had none from it for `idle_ms` (a producer changed partitioner, or partitions were
added, and the symbol moved while the partition stayed busy with others: its frozen
clock held the symbol's bars for ever). Without it, the sources that delivered within
`idle_ms` of wall time, and nothing at all for `idle_ms` after a start, when every
partition has had that long to speak.

The view travels with the records (`PartitionMark`): after each batch a partition's
state goes to every symbol's steps behind the batch's records, on the same channels, so
a step's view never runs ahead of the records it has received, and a symbol's steps see
every partition, in whichever process it is read (`-a`), as one worker would, but for
what reaches them later than in one worker: a quiet partition that wakes up is known
busy only once its first records' mark arrives (README, known limits). A caught-up
partition's source repeats its mark every HEARTBEAT_S, and one silent for SILENT_MS is
not idle: a reading process frozen while its partitions were caught up would otherwise
look idle to the other's steps, whose bars would close before the records it then
reads. Before, each process shared one view of the partitions it read, filled at the
source: with two processes it did not see the others' partitions, and closed a symbol's
bars at the local partitions' event time, ahead of its own trades still on their way
(late). Wall-clock times are not state: a resumed step starts afresh.
"""

from __future__ import annotations

import heapq
import socket
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUORUM = 3
DEFAULT_SOURCE_IDLE_MS = 10_000


@dataclass
class SourceClock:
    """One source's progress: the lowest of its `quorum` latest event times."""

    quorum: int
    latest: list[int] = field(default_factory=list)  # min-heap of the `quorum` latest times

    def add(self, ts_ms: int) -> None:
        if len(self.latest) < self.quorum:
            heapq.heappush(self.latest, ts_ms)
        elif ts_ms > self.latest[0]:
            heapq.heapreplace(self.latest, ts_ms)

    @property
    def progress(self) -> int:
        return self.latest[0]

    def __getstate__(self) -> dict[str, Any]:
        """The times sorted (a sorted list is a heap): equal clocks snapshot equally,
        however their heaps were built (a TradeBlock's run sets them sorted)."""
        return {"quorum": self.quorum, "latest": sorted(self.latest)}


@dataclass
class Progress:
    """A symbol's event-time progress over its sources (see the module docstring)."""

    sources: dict[Hashable, SourceClock] = field(default_factory=dict)
    value: int | None = None  # never decreases
    arrivals: dict[Hashable, int] = field(default_factory=dict)  # wall ms of the last record
    started_ms: int = 0  # wall ms the step started or resumed

    def __getstate__(self) -> dict[str, Any]:
        """Event time only: wall-clock arrivals mean nothing to a resumed run."""
        return {"sources": self.sources, "value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, arrivals={}, started_ms=0)

    def restart(self, now_ms: int) -> None:
        """The step (re)started: give every source `idle_ms` to be heard from again."""
        self.started_ms = now_ms
        self.arrivals.clear()

    def observe(self, source: Hashable, ts_ms: int, now_ms: int, quorum: int) -> None:
        clock = self.sources.get(source)
        if clock is None:
            clock = self.sources[source] = SourceClock(quorum)
        clock.add(ts_ms)
        self.arrivals[source] = now_ms

    def source_progress(self, source: Hashable) -> int | None:
        clock = self.sources.get(source)
        return None if clock is None else clock.progress

    def advance(
        self,
        now_ms: int,
        idle_ms: int,
        inputs: InputPartitions | None = None,
        cap_ms: int | None = None,
    ) -> int | None:
        """The symbol's progress now: the minimum over the partitions that may still deliver
        an earlier record (None: not yet), and never past `cap_ms`."""
        if len(self.sources) == 1 and None in self.sources:  # one merged, ordered stream
            p: int | None = self.sources[None].progress
        else:
            p = self._slowest(now_ms, idle_ms, inputs)
        if p is not None and cap_ms is not None:
            p = min(p, cap_ms)
        if p is not None and (self.value is None or p > self.value):
            self.value = p
        return self.value

    def without(
        self, source: Hashable, now_ms: int, idle_ms: int, inputs: InputPartitions | None
    ) -> tuple[bool, int | None]:
        """`_slowest` at `now_ms` taken apart for a run of records from `source` alone (the
        other sources and `inputs` stay as they are meanwhile): whether `source`'s own
        progress counts, and the minimum over the others that count (None: none does, or,
        when `source` does not count either, the symbol has no progress yet). Then the
        slowest is min(that minimum, `source`'s progress) if it counts, else that minimum."""
        if inputs is not None and (inputs.listed or inputs.caught_up):
            counts, pending, steered = False, [], False
            caught_up, hold_only = inputs.caught_up, inputs.hold_only
            for part in list(inputs.listed or caught_up):
                if part not in caught_up:
                    return False, None  # not heard from yet: it may deliver anything
                if inputs.idle(part, now_ms, idle_ms):
                    continue
                clock = self.sources.get(part)
                if part == source and clock is not None:
                    counts, steered = True, steered or part not in hold_only
                    continue
                last = self.arrivals.get(part, self.started_ms)
                if clock is not None and now_ms - last > idle_ms:
                    clock = None  # the symbol left this busy partition: as one it never used
                p = clock.progress if clock is not None else inputs.latest_ms.get(part)
                if p is None:
                    return False, None  # a partition with records not seen yet: wait for it
                pending.append(p)
                steered = steered or part not in hold_only
            if not steered:  # only partitions that hold back are busy: nothing moves it
                return False, None
            return counts, min(pending) if pending else None
        if now_ms - self.started_ms < idle_ms:
            return False, None  # a partition may not have delivered its first record yet
        counts = now_ms - self.arrivals.get(source, self.started_ms) <= idle_ms
        others = [
            c.progress
            for s, c in self.sources.items()
            if s != source and now_ms - self.arrivals.get(s, self.started_ms) <= idle_ms
        ]
        return counts, min(others) if others else None

    def _slowest(self, now_ms: int, idle_ms: int, inputs: InputPartitions | None) -> int | None:
        """The minimum over every source that may still deliver an earlier record."""
        return self.without(_NO_SOURCE, now_ms, idle_ms, inputs)[1]


_NO_SOURCE = object()  # `without` it, every source counts among the others


@dataclass(slots=True)
class PartitionMark:
    """What the Kafka source knew of one input partition after a batch (dataflows/io.py):
    whether it has records left to read, how many it has read in all and when it last
    read any (wall ms; its first poll before it has), with the latest event time decoded
    from it so far (any symbol's; `MarkRelay`). Decode sends it to the symbols' steps
    behind the batch's records, so each step's view of every partition, in whichever
    process it is read, moves with the records that step has received: a mark never
    overtakes the records read before it. Its figures are totals, so a mark left out
    (`MarkRelay`) loses nothing that a later one does not carry; a partition that goes
    quiet sends a `settled` mark, which every symbol gets."""

    part: str
    caught_up: bool
    records: int
    read_ms: int
    latest_ms: int | None = None
    settled: bool = False  # nothing new will follow until its next records (or its end)
    made_ms: int | None = None  # when the source made it (wall ms; None: no heartbeat kept)
    ended: bool = False  # the partition's end (a finite input): no mark will follow
    clock: str | None = None  # its reader's THIS_CLOCK (None: unknown, not this one)


MARKS_EVERY_S = 0.2  # a symbol with no records in a batch: its marks at most this often
HEARTBEAT_S = 1.0  # a caught-up, quiet partition repeats its settled mark this often
# A caught-up partition whose marks stopped this long ago is not idle: its reader may be
# frozen (another process), and records it has not read may belong to bars not closed yet.
# Below the default allowed lateness (DEFAULT_ALLOWED_LATENESS_MS, operators/market.py)
# less a heartbeat, so that a record read after such a freeze is in time; with a lateness
# set under SILENT_MS plus a heartbeat, a freeze can still make some late.
SILENT_MS = 3_000
# A partition's marks carry its reading host's wall clock; a step on another machine
# reads them on its own, shifted by the least (here - there) seen over this long.
CLOCK_WINDOW_MS = 60_000


def _this_clock() -> str:
    """Which wall clock this process reads: the kernel's boot id, shared by every process
    and container on one machine (one clock), or the host's name where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


THIS_CLOCK = _this_clock()


@dataclass
class HostClock:
    """A partition read on another machine: its marks' times on this step's clock. The
    two clocks may differ by seconds, and read raw, its times made a caught-up partition
    look silent for ever (its clock behind this one's by more than SILENT_MS less a
    heartbeat) or a frozen reader look heard from for longer (its clock ahead). The shift
    is the least of (applied here - made there) over the marks of the last
    CLOCK_WINDOW_MS: the clocks' difference plus the shortest trip a mark made in that
    time, so a mark held up on its way (a step catching up) looks as old as it is once
    one mark in the window came promptly; a delay that lasts the whole window is taken
    for a difference of the clocks (one-way times cannot tell them apart), and the marks
    look fresher than they are by it. A clock stepped back there (or forward here) makes
    the partition look older, so it holds, until the window has passed; the other way the
    shift follows at once. A read time keeps the shift it came with (`read_here`): a
    clock stepped forward there does not make the last read look older."""

    # (first applied, last applied, shift), shifts rising: the window's least first
    seen: deque[tuple[int, int, int]] = field(default_factory=deque)
    read_ms: int | None = None  # the last read time there, and the shift it came with
    read_shift: int = 0

    def shift(self, now_ms: int, made_ms: int) -> int:
        """The shift once a mark made at `made_ms` there is applied at `now_ms` here."""
        shift, seen = now_ms - made_ms, self.seen
        if seen and seen[-1][2] <= shift and now_ms - seen[-1][0] < 1_000:
            # one entry a second at most: the lower one kept up to a second longer
            seen[-1] = (seen[-1][0], now_ms, seen[-1][2])
        else:
            while seen and seen[-1][2] >= shift:
                seen.pop()
            seen.append((now_ms, now_ms, shift))
        while seen[0][1] <= now_ms - CLOCK_WINDOW_MS:
            seen.popleft()
        return seen[0][2]

    def read_here(self, read_ms: int, shift: int) -> int:
        """`read_ms` there on this clock."""
        if read_ms != self.read_ms:
            self.read_ms, self.read_shift = read_ms, shift
        return read_ms + self.read_shift


@dataclass
class MarkRelay:
    """Decode's side of the marks, one per flow (a partition is read, so decoded, by one
    worker, and only that worker writes its entries). Each partition's latest decoded
    event time so far goes into its marks; only the last mark of each partition in a batch
    is sent. A symbol with records in the batch gets every partition's mark behind them.
    One without gets a partition's mark when its `caught_up` differs from the one last
    sent to it, when it is `settled`, and otherwise at most every `every_s`: with every
    symbol sent every mark, two processes spent a tenth of their time exchanging them. A
    mark held back is carried by a later one (totals), and the source sends a settled mark
    once a partition is caught up and quiet for `every_s` after one, so a symbol's view
    lags the partition by at most that much (held back, it saw the partition idle early:
    a stale count or last read time)."""

    latest: dict[str, int] = field(default_factory=dict)
    sent: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)
    every_s: float = MARKS_EVERY_S

    def relay(
        self,
        marks: list[PartitionMark],
        by_symbol: dict[str, list[Any]],
        symbols: Iterable[str],
        now_s: float,
    ) -> None:
        """Append to `by_symbol` (symbol -> its events in the batch) the marks each symbol
        gets, after its events."""
        latest = self.latest
        for events in by_symbol.values():
            for part, ts in latest_by_part(events).items():
                if part is not None and ts > latest.get(part, ts - 1):
                    latest[part] = ts
        last = {m.part: m for m in marks}  # a partition's last mark says all the others did
        for m in last.values():
            m.latest_ms = latest.get(m.part)
        sent, every_s = self.sent, self.every_s
        for symbol in symbols:
            events = by_symbol.get(symbol)
            out = []
            for m in last.values():
                key = (symbol, m.part)
                before = sent.get(key)
                if not (
                    events
                    or m.settled
                    or before is None
                    or before[0] is not m.caught_up
                    or now_s - before[1] >= every_s
                ):
                    continue
                sent[key] = (m.caught_up, now_s)
                out.append(m)
            if out:
                by_symbol.setdefault(symbol, []).extend(out)


@dataclass
class InputPartitions:
    """One step's view of every input partition of a Kafka run (`listed`, from the
    source), fed by the `PartitionMark`s that reach the step: whether each has nothing
    left to read right now (at the broker's high watermark, or its end), when it last
    delivered records (on this step's clock: `HostClock`), and the latest event time
    read from it for any symbol. A partition not heard from yet holds every symbol.

    A partition holds every symbol's progress until it is idle: caught up and quiet for
    the idle bound (Flink's `withIdleness`, measured at the source). So a topic read late
    (the control topic, whose first fetch may come after thousands of trades) is still in
    time. While the
    commands step holds a symbol's command (ahead of that step's view of the time), the
    market step does not close that symbol's bars past it (`held_ms`, shared by the views
    `fork` makes for a process's steps). Not state: it describes the running consumers."""

    caught_up: dict[str, bool] = field(default_factory=dict)  # the partitions heard from
    listed: set[str] = field(default_factory=set)  # every input partition, in any process
    # Partitions whose event times may hold a symbol back but never carry it forward: the
    # control topic's, whose times an operator sets (`--at`). Alone busy while the market
    # was quiet, a command dated ahead moved every symbol's time to it: a replay of 2024
    # behind a command sent in 2026 closed the two years of empty bars between.
    hold_only: set[str] = field(default_factory=set)
    held_ms: dict[str, int] = field(default_factory=dict)  # symbol -> earliest held command
    # symbol -> times of the commands the commands step let through that the market step
    # has not seen yet (between the two steps, the cap must not lift: a market recheck in
    # that gap closed bars past a command, which then reached the bar after its own)
    passing_ms: dict[str, list[int]] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)  # read so far
    last_read_ms: dict[str, int] = field(default_factory=dict)  # on this step's clock
    latest_ms: dict[str, int] = field(default_factory=dict)
    heard_ms: dict[str, int] = field(default_factory=dict)  # its last mark made then (here)
    ended: set[str] = field(default_factory=set)
    hosts: dict[str, HostClock] = field(default_factory=dict)  # its marks' clock

    def fork(self) -> InputPartitions:
        """A view of its own for one step, sharing the partitions listed and the caps."""
        return InputPartitions(
            listed=self.listed,
            hold_only=self.hold_only,
            held_ms=self.held_ms,
            passing_ms=self.passing_ms,
        )

    def apply(self, mark: PartitionMark, now_ms: int) -> None:
        """What a mark says of its partition (its figures are totals), applied at `now_ms`
        (this step's wall clock). A mark made on another machine's clock has its times
        moved onto this step's (`HostClock`)."""
        part, made, read = mark.part, mark.made_ms, mark.read_ms
        if made is not None and mark.clock != THIS_CLOCK:
            host = self.hosts.setdefault(part, HostClock())
            shift = host.shift(now_ms, made)
            made, read = made + shift, host.read_here(read, shift)
        if made is not None:
            self.heard_ms[part] = made
        self.caught_up[part] = mark.caught_up
        self.records[part] = mark.records
        self.last_read_ms[part] = read
        if mark.ended:
            self.ended.add(part)
        if mark.latest_ms is not None:
            self.saw(part, mark.latest_ms)

    def idle(self, part: str, now_ms: int, idle_ms: int) -> bool:
        """Caught up and either empty or quiet for `idle_ms` (its last records processed),
        and, unless it ended, still heard from: its source repeats a caught-up partition's
        mark every HEARTBEAT_S, and one silent for SILENT_MS is not known to be caught up
        any more (its reader, in another process, may be frozen while records arrive)."""
        if not self.caught_up[part]:
            return False
        heard = self.heard_ms.get(part)
        if heard is not None and part not in self.ended and now_ms - heard > SILENT_MS:
            return False
        return not self.records.get(part) or now_ms - self.last_read_ms[part] >= idle_ms

    def catching_up(self, now_ms: int, idle_ms: int, started_ms: int) -> bool:
        """Whether some partition is still being read up to the broker's end: it has
        records left to read and delivered some within `idle_ms`, or it has not been heard
        from yet and the step started less than `idle_ms` ago. Bounded, so that one that
        never reads as caught up (a transactional producer's commit markers keep its next
        offset under the high watermark; a stuck fetch) does not hold a tick for ever."""
        caught_up, last_read = self.caught_up, self.last_read_ms
        for part in self.listed or caught_up:
            if part not in caught_up:
                if now_ms - started_ms < idle_ms:
                    return True
            elif not caught_up[part] and now_ms - last_read.get(part, started_ms) < idle_ms:
                return True
        return False

    def cap_ms(self, symbol: str) -> int | None:
        """How far the market step may close `symbol`'s bars: not past a command held by
        the commands step or on its way from there (None: no limit)."""
        caps = self.passing_ms.get(symbol, [])
        held = self.held_ms.get(symbol)
        return min([*caps, held]) if held is not None else min(caps, default=None)

    def passed(self, symbol: str, ts_ms: int) -> None:
        """The commands step let a command at `ts_ms` through."""
        self.passing_ms.setdefault(symbol, []).append(ts_ms)

    def arrived(self, symbol: str, ts_ms: int) -> None:
        """The market step has the command at `ts_ms`."""
        passing = self.passing_ms.get(symbol)
        if passing and ts_ms in passing:
            passing.remove(ts_ms)

    def saw(self, part: str | None, ts_ms: int) -> None:
        if part is not None and ts_ms > self.latest_ms.get(part, ts_ms - 1):
            self.latest_ms[part] = ts_ms


def split_marks(value: list[Any]) -> tuple[list[Any], list[PartitionMark]]:
    """A symbol's list from decode as (its events, the partition marks after them)."""
    i = len(value)
    while i and type(value[i - 1]) is PartitionMark:
        i -= 1
    return (value, []) if i == len(value) else (value[:i], value[i:])


def latest_by_part(events: list[Any]) -> dict[str | None, int]:
    """The latest event time of each input partition among `events` (a batch)."""
    latest: dict[str | None, int] = {}
    get = latest.get
    for e in events:
        ts, part = e.ts_event_ms, e.part
        if ts > get(part, ts - 1):
            latest[part] = ts
    return latest
