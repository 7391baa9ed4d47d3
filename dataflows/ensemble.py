"""The Ensemble dataflow: `python -m bytewax.run dataflows.ensemble`.

Wiring only; every rule lives in `operators/`. Reads top to bottom like the diagram:

    input → decode (a batch at once, by symbol) → commands
          → market (5m bars by event time, cohorts, 15m/1h bars)
          → context_join (as-of overlays, cohort, funding, control; staleness)
          → features → predict → by_account → strategy (all symbols in event-time order;
            fill → control → mark → kill-switch and account limits → decide)
          → outputs (one JSON-lines file per stream)

Bad input never stops the flow: undecodable or invalid records, late trades and unused
candles become dead letters with their reason; an exception on one record becomes an
`errors` record and the flow goes on. With no Kafka configured the input is the
embedded generator (or files from ENSEMBLE_INPUT) and the run ends with a summary.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic, StatefulLogic

from dataflows import cluster, metrics, progress, routing
from dataflows.io import (
    JsonLinesSink,
    KafkaRun,
    RawMessage,
    SummarySink,
    block_message,
    clear_outputs,
    from_kafka,
    kafka_sink,
    kafka_source,
    partition_name,
    read_run,
    to_kafka,
)
from dataflows.io import MarketSource as _MarketSource
from dataflows.kafka_sink import KafkaUnavailable
from dataflows.progress import StoppableSource, stopping
from dataflows.routing import RoutesError, route_order
from dataflows.settings import Settings
from marketdata.files import RowBlock
from operators.account import AccountRisk, EventTimeAligner, check_dropped_books
from operators.bars import Bar
from operators.commands import CommandGate, CommandRefused, verify
from operators.config import ConfigError
from operators.events import (
    FROM_COLUMNS,
    ControlCommand,
    InvalidRecord,
    TradeBlock,
    avro_trade_columns,
    decode,
    trade_columns,
    trades_from_columns,
)
from operators.features import FeatureState
from operators.market import Close, Late, MarketState
from operators.market_columns import MIN_BLOCK
from operators.overlays import BarContext, ContextJoin, Staleness
from operators.predict import ArtifactError, load_runtime
from operators.redaction import clean, scrub
from operators.strategy import Strategy, SymbolState, new_state, on_close
from operators.telemetry import WALL_CLOCK, Clock, Stamp, dead_letter, wall_clock_ms
from operators.watermark import InputPartitions, MarkRelay, PartitionMark, split_marks
from schemas.codec import STREAM_SCHEMAS, SchemaError
from schemas.codec import decode as avro_decode
from schemas.columns import MIN_ROWS as COLUMNS_MIN
from schemas.columns import decode_columns

OUTPUT_STREAMS = sorted(STREAM_SCHEMAS)
TICK = timedelta(seconds=1)  # live: a quiet symbol's step wakes at least this often
RECHECK = timedelta(milliseconds=200)  # Kafka: how often a quiet symbol rechecks progress


@dataclass(slots=True)
class Emit:
    """A finished output record on its way to the sink."""

    stream: str
    record: dict[str, Any]


@dataclass(slots=True)
class Duplicates:
    """Trades dropped as duplicates by the market step in one batch (for the summary)."""

    symbol: str
    count: int


def _error(
    stamp: Stamp, stage: str, symbol: str, ts_ms: int, exc: BaseException, context: dict[str, Any]
) -> Emit:
    return Emit(
        "errors",
        stamp(
            symbol,
            ts_ms,
            stage=stage,
            error_type=type(exc).__name__,
            message=scrub(str(exc)),  # SPEC 9: events' reprs and messages may hold secrets
            context_json=json.dumps(
                clean({**context, "traceback": traceback.format_exc(limit=5)}), default=repr
            ),
        ),
    )


def _bar_record(stamp: Stamp, b: Bar) -> dict[str, Any]:
    return stamp(
        b.symbol,
        b.end_ms,
        timeframe=b.timeframe,
        start_ms=b.start_ms,
        end_ms=b.end_ms,
        open=b.open,
        high=b.high,
        low=b.low,
        close=b.close,
        volume=b.volume,
        count=b.count,
        complete=b.complete,
    )


# -- decode ------------------------------------------------------------------------------
def decode_batch(
    settings: Settings,
    stamp: Stamp,
    to_raw: Callable[[Any], RawMessage] | None,
    keys: Mapping[str, str],
    items: list[Any],
    relay: MarkRelay | None = None,
) -> list[Any]:
    """A whole input batch at once: its dead letters (and their summary counts), then one
    `(key, events)` per symbol with that symbol's events in input order, so the steps
    after this one take a list per symbol and batch, not an item per record. The key is
    the symbol's route key (dataflows/routing.py; the symbol itself if it has none). File
    blocks are validated column by column; a row that fails goes through `decode_step`
    for its reason. `to_raw` turns a source item (a Kafka message) into a RawMessage; the
    Kafka source's runs of messages (KafkaRun) are decoded as they come, a run of trades
    as columns.
    The Kafka source's partition marks go to the symbols' steps after their events
    (`relay`, operators/watermark.py)."""
    out: list[Any] = []
    by_symbol: dict[str, list[Any]] = {}
    counts: dict[str, int] = {}
    now_ms = wall_clock_ms()
    run: list[RawMessage] = []  # consecutive Kafka trades of one partition

    def one_by_one(raws: list[RawMessage]) -> None:
        for raw in raws:
            for x in decode_step(settings, stamp, raw):
                if isinstance(x, Emit):
                    out.append(x)
                else:
                    by_symbol.setdefault(x.symbol, []).append(x)

    def trades(payloads: list[bytes], message: Callable[[int], RawMessage], part: str) -> None:
        decoded = _decode_kafka_trades(settings, stamp, payloads, message, part, now_ms, out)
        if decoded is None:
            one_by_one([message(i) for i in range(len(payloads))])
        else:
            for symbol, events in decoded.items():
                by_symbol.setdefault(symbol, []).extend(events)

    def end_run() -> None:
        payloads = [bytes(raw.payload) for raw in run]  # type: ignore[arg-type]
        trades(payloads, run.__getitem__, partition_name(run[0].topic, run[0].partition))
        run.clear()

    marks: list[PartitionMark] = []
    stopped = False
    for item in items:
        if type(item) is PartitionMark:
            marks.append(item)
            continue
        if type(item) is progress.Stopped:
            stopped = True
            continue
        if type(item) is KafkaRun:  # the Kafka source's messages between errors
            read_run(item)
            counts[item.stream] = counts.get(item.stream, 0) + len(item)
            if run:
                end_run()
            if item.stream == "trades":
                trades(item.values, item.message, partition_name(item.topic, item.partition))
            else:
                one_by_one([item.message(i) for i in range(len(item))])
            continue
        if isinstance(item, RowBlock):
            counts[item.stream] = counts.get(item.stream, 0) + len(item)
            events = _decode_block(settings, stamp, item, now_ms, out)
            if events:
                by_symbol.setdefault(item.symbol, []).extend(events)
            continue
        raw = item if to_raw is None else to_raw(item)
        counts[raw.stream] = counts.get(raw.stream, 0) + 1
        if (
            raw.stream == "trades"
            and raw.partition is not None
            and raw.error is None
            and isinstance(raw.payload, (bytes, bytearray))
        ):
            if run and (run[0].topic, run[0].partition) != (raw.topic, raw.partition):
                end_run()
            run.append(raw)
            continue
        if run:
            end_run()
        one_by_one([raw])
    if run:
        end_run()
    metrics.count_inputs(counts)
    if marks:
        assert relay is not None  # marks come from the Kafka source, which build_flow relays
        relay.relay(marks, by_symbol, keys, time.monotonic())
    out.extend((keys.get(symbol, symbol), events) for symbol, events in by_symbol.items())
    if stopped:  # to every symbol's and the account's worker, whichever process runs them
        out.extend((key, progress.Stopped()) for key in sorted({*keys.values(), ACCOUNT_KEY}))
    return out


def _decode_block(
    settings: Settings, stamp: Stamp, block: RowBlock, now_ms: int, dead: list[Any]
) -> list[Any]:
    """The block's events in row order (all of its symbol); dead letters go to `dead`."""
    from_columns = FROM_COLUMNS.get(block.stream)
    n = len(block)
    if from_columns is None:  # funding: a few rows a day
        events: list[Any] = [None] * n
    else:
        events = from_columns(block.fields, n, settings.symbols, now_ms, settings.max_clock_skew_ms)
    if not any(e is None for e in events):
        return events
    good: list[Any] = []
    for i, event in enumerate(events):
        if event is not None:
            good.append(event)
            continue
        for x in decode_step(settings, stamp, block_message(block, i)):
            (dead if isinstance(x, Emit) else good).append(x)
    return good


def _decode_kafka_trades(
    settings: Settings,
    stamp: Stamp,
    payloads: list[bytes],
    message: Callable[[int], RawMessage],
    part: str,
    now_ms: int,
    dead: list[Any],
) -> dict[str, list[Any]] | None:
    """Consecutive trades of one Kafka partition (`part`; message i is `message(i)`), each
    symbol's as columns (a TradeBlock when every one is a plain trade), in order; a row
    the column rules refuse goes through `decode_step` for its reason (dead letters to
    `dead`). The Avro is read as columns (schemas/columns.py) when the run is long enough
    and the reader takes every message, else message by message with fastavro. None:
    fewer than MIN_BLOCK (one by one is as fast) or bytes that do not decode, for
    `decode_step`."""
    if len(payloads) < MIN_BLOCK:
        return None
    cols = decode_columns("trade", payloads) if len(payloads) >= COLUMNS_MIN else None
    if cols is not None:
        groups = avro_trade_columns(cols)
    else:  # short, or a message the column reader leaves to fastavro
        recs: dict[str, list[dict[str, Any]]] = {}
        rows: dict[str, list[int]] = {}
        try:
            for i, payload in enumerate(payloads):
                rec = avro_decode("trade", payload)
                symbol = rec.get("symbol")
                recs.setdefault(symbol, []).append(rec)
                rows.setdefault(symbol, []).append(i)
        except SchemaError:
            return None
        groups = {s: (trade_columns(s, group), rows[s]) for s, group in recs.items()}
    symbols, skew = settings.symbols, settings.max_clock_skew_ms
    out: dict[str, list[Any]] = {}
    for symbol, (columns, idx) in groups.items():
        events = trades_from_columns(columns, len(idx), symbols, now_ms, skew)
        good = out.setdefault(symbol, [])
        if type(events[0]) is TradeBlock:  # every row a plain trade
            events[0].part = part
            good.append(events[0])
            continue
        for i, event in zip(list(idx), events, strict=True):
            if event is None:  # refused: the per-record path says why
                for x in decode_step(settings, stamp, message(i)):
                    (dead if isinstance(x, Emit) else good).append(x)
            else:
                event.part = part
                good.append(event)
    return {symbol: events for symbol, events in out.items() if events}


def decode_step(settings: Settings, stamp: Stamp, raw: RawMessage) -> list[Any]:
    """An event, or a dead letter (plus its summary count): one message on its own."""
    if raw.error is not None:
        dl = dead_letter(
            stamp,
            raw.stream,
            raw.payload,
            raw.error,
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
        )
        return [Emit("dead_letters", dl), Emit("summary", {"dead_letter": raw.error})]
    try:
        event = decode(
            raw.stream, raw.payload, settings.symbols, wall_clock_ms(), settings.max_clock_skew_ms
        )
    except InvalidRecord as e:
        reason = str(e) if raw.origin is None else f"{e} (at {raw.origin})"
        dl = dead_letter(
            stamp,
            raw.stream,
            raw.payload,
            reason,
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
        )
        return [Emit("dead_letters", dl), Emit("summary", {"dead_letter": reason})]
    if raw.partition is not None:  # Kafka: the market step keeps each partition's progress
        # the market step reads a partition's clock and bands once per run of its records
        event.part = partition_name(raw.topic, raw.partition)
    if isinstance(event, ControlCommand):
        try:
            topic = raw.topic or f"{settings.topic_prefix}.control"  # files: the flow's own
            event = verify(event, settings.operator_keys, settings.strategy.strategy_id, topic)
        except CommandRefused as e:
            dl = dead_letter(
                stamp,
                raw.stream,
                raw.payload,
                str(e),
                topic=raw.topic,
                partition=raw.partition,
                offset=raw.offset,
            )
            return [Emit("dead_letters", dl), Emit("summary", {"dead_letter": str(e)})]
        if event.symbol == "*":
            return [dataclasses.replace(event, symbol=s) for s in sorted(settings.symbols)]
    return [event]


class CommandLogic(StatefulLogic):
    """Per symbol: a replayed or stale command becomes a dead letter; the rest pass on.
    At the end of a finite input, held commands are judged against its last market time."""

    def __init__(
        self,
        settings: Settings,
        stamp: Stamp,
        inputs: InputPartitions | None,
        gate: CommandGate | None,
    ) -> None:
        self.stamp = stamp
        self.inputs = None if inputs is None else inputs.fork()  # this step's view
        now = wall_clock_ms()
        self.fresh = gate is None  # nothing to keep yet (the account's key gets a Stopped)
        if gate is None:
            gate = CommandGate()
        gate.configure(settings.command_window_ms, settings.source_idle_ms)  # on resume too
        gate.progress.restart(now)
        self.gate = gate
        if gate.held:  # resumed holding commands: the market step must not close past them
            self._holding(gate.held[0].symbol)

    def on_item(self, value: list[Any]) -> tuple[list[Any], bool]:
        """`value`: this symbol's events from one input batch, in order, then the batch's
        partition marks (Kafka), which move this step's view after the events and go on
        to the market step behind what passes. Or a stopped input's `Stopped`: this
        process stops too (its steps keep their state at the end of the input)."""
        if type(value) is progress.Stopped:
            progress.peer_stopped()
            return [], self.fresh  # a key with no state of its own keeps none
        self.fresh = False
        events, marks = split_marks(value)
        now = wall_clock_ms()
        items = self.gate.on_events(events, now, self.inputs) if events else []
        if marks:
            assert self.inputs is not None  # marks come from the Kafka source only
            for m in marks:
                self.inputs.apply(m, now)
            items += self.gate.recheck(now, self.inputs)  # held commands the view lets through
        for symbol in {events[0].symbol} if events else {_symbol(x) for x in items}:
            self._holding(symbol)
        return self._out(items, marks), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """With Kafka: held commands are rechecked while the symbol has nothing new."""
        return None if self.inputs is None or not self.gate.held else datetime.now(UTC) + RECHECK

    def on_notify(self) -> tuple[list[Any], bool]:
        items = self.gate.recheck(wall_clock_ms(), self.inputs)
        for item in items:
            self._holding(_symbol(item))
        return self._out(items), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        """The input's end judges the held commands; a stop keeps them for the restart
        (the control topic's offset is past them: judged now, one ahead of the market by
        more than the window would be refused as stale and never read again)."""
        if stopping():
            return [], StatefulLogic.RETAIN
        items = self.gate.flush()
        for item in items:
            self._holding(_symbol(item))
        return self._out(items), StatefulLogic.RETAIN

    def _holding(self, symbol: str) -> None:
        """Tell the market step not to close bars past a command held here."""
        if self.inputs is None:
            return
        if self.gate.held:
            self.inputs.held_ms[symbol] = min(c.ts_event_ms for c in self.gate.held)
        else:
            self.inputs.held_ms.pop(symbol, None)

    def _out(self, items: list[Any], marks: list[PartitionMark] | None = None) -> list[Any]:
        """Dead letters for the refused commands; what passes goes on as one list, the
        marks last (and the market step is told of the commands in it:
        InputPartitions.passing_ms)."""
        out: list[Any] = []
        passed: list[Any] = []
        for item in items:
            if self.inputs is not None and type(item) is ControlCommand:
                self.inputs.passed(item.symbol, item.ts_event_ms)
            if isinstance(item, CommandRefused):
                cmd = item.command  # type: ignore[attr-defined]
                fields = {**cmd.signed_fields(), "signature": cmd.signature, "signer": cmd.signer}
                out += [
                    Emit("dead_letters", dead_letter(self.stamp, "control", fields, str(item))),
                    Emit("summary", {"dead_letter": str(item)}),
                ]
            else:
                passed.append(item)
        if marks:
            passed += marks
        if passed:
            out.append(passed)
        return out

    def snapshot(self) -> CommandGate:
        return copy.deepcopy(self.gate)


def _symbol(item: Any) -> str:
    """The symbol of what the commands step lets through or refuses."""
    return getattr(item, "symbol", None) or item.command.symbol


# -- market -----------------------------------------------------------------------------
class MarketLogic(StatefulBatchLogic):
    """The market step of one symbol; the running settings are bound at every build."""

    def __init__(
        self,
        settings: Settings,
        stamp: Stamp,
        inputs: InputPartitions | None,
        state: MarketState | None,
        clock: Clock = WALL_CLOCK,
    ) -> None:
        self.settings, self.stamp, self.state, self.clock = settings, stamp, state, clock
        self.inputs = None if inputs is None else inputs.fork()  # this step's view
        if state is not None:
            self._configure(state)
            state.progress.restart(clock.now_ms())
        # Wall time of the last record (a restart counts as one): the tick's idle time.
        self.last_arrival_ms = self.started_ms = clock.now_ms()
        self.missed_due_ms: int | None = None  # a due time a tick passed without closing

    def _settings(self, symbol: str) -> tuple[Any, ...]:
        """MarketState's running settings for `symbol`, in its field order."""
        s = self.settings
        return (
            symbol in s.candle_symbols,
            s.allowed_lateness_ms,
            s.strategy.cohorts,
            s.max_jump_ms,
            s.strategy.size_proxy,
            s.strategy.bands,
            s.source_idle_ms,
            self.inputs,
        )

    def _configure(self, state: MarketState) -> MarketState:
        return state.configure(*self._settings(state.symbol))

    def _ensure(self, symbol: str) -> MarketState:
        if self.state is None:
            self.state = MarketState(symbol, *self._settings(symbol))
            self.state.progress.restart(self.started_ms)
        return self.state

    def on_batch(self, values: list[list[Any]]) -> tuple[list[Any], bool]:
        """`values`: lists of this symbol's events (one per input batch), in order, each
        followed by partition marks (Kafka; a list may hold only marks), which move the
        step's view after the events before them and let it close bars (a recheck)."""
        out: list[Any] = []
        st: MarketState | None = None
        dups = 0 if self.state is None else self.state.duplicate_count
        now = self.clock.now_ms()

        def failed(e: Any, exc: Exception) -> None:  # one bad record must not stop the flow
            context = {"event": repr(e)}
            out.append(_error(self.stamp, "market", e.symbol, e.ts_event_ms, exc, context))

        arrived = False
        for value in values:
            events, marks = split_marks(value)
            if events:
                arrived = True
                st = self._ensure(events[0].symbol)  # one key: every event is this symbol's
                st.on_events(events, out, now, failed)
            if marks:  # the view moves after the events read before them (watermark.py)
                assert self.inputs is not None  # marks come from the Kafka source only
                for m in marks:
                    self.inputs.apply(m, now)
                if self.state is not None:
                    try:
                        self.state.recheck(now, out)
                    except Exception as exc:  # as in on_notify: the flow goes on
                        out.append(_error(self.stamp, "market", self.state.symbol, now, exc, {}))
        if self.settings.wall_clock and arrived:
            self.last_arrival_ms = self.clock.now_ms()
        if st is not None and st.duplicate_count > dups:
            out.append(Duplicates(st.symbol, st.duplicate_count - dups))
        return self._emit(out), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """Live: a wall-clock tick, when the next bar is due to close (`tick_due_ms`) or
        within TICK. With Kafka, also a recheck of the symbol's progress: it may move with
        other partitions when this symbol has nothing new. A file replay has neither and
        stays deterministic."""
        if self.settings.wall_clock:
            tick = datetime.now(UTC) + TICK
            now = self.clock.now_ms()
            due = None if self.state is None else self.state.tick_due_ms(now, self.last_arrival_ms)
            if due is None or due == self.missed_due_ms:  # that tick failed: poll, not spin
                return tick
            return min(tick, self.clock.wake_at(max(due, now + 1)))  # on_tick needs time gone
        if self.inputs is not None:
            return datetime.now(UTC) + RECHECK
        return None

    def on_notify(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        if self.state is not None:
            now = self.clock.now_ms()
            try:
                self.state.recheck(now, out)
                if self.settings.wall_clock:
                    self.state.on_tick(now, now - self.last_arrival_ms, out)
            except Exception as exc:  # a tick must not stop the flow either
                out.append(_error(self.stamp, "market", self.state.symbol, now, exc, {}))
            if self.settings.wall_clock:  # still due (it raised): the next try waits a TICK
                due = self.state.tick_due_ms(now, self.last_arrival_ms)
                late = due is not None and due <= now and now > self.last_arrival_ms
                self.missed_due_ms = due if late else None
        return self._emit(out), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        if stopping():  # stopped, not ended: the open bars stay open for a restart
            return out, StatefulBatchLogic.RETAIN
        if self.state is not None:
            self.state.flush(out)
        return self._emit(out), StatefulBatchLogic.RETAIN

    def _emit(self, items: list[Any]) -> list[Any]:
        """Bars and dead letters become records; everything goes on to the context join."""
        res: list[Any] = []
        for it in items:
            if isinstance(it, Close):
                res.append(Emit("bars", _bar_record(self.stamp, it.bar)))
            elif isinstance(it, Bar):
                res.append(Emit("bars", _bar_record(self.stamp, it)))
            elif isinstance(it, Duplicates):
                res.append(Emit("summary", {"symbol": it.symbol, "duplicates": it.count}))
                continue
            elif isinstance(it, Late):
                e = it.event
                res.append(
                    Emit(
                        "dead_letters",
                        dead_letter(
                            self.stamp,
                            _stream_of(e),
                            _event_dict(e),
                            it.reason,
                            symbol=e.symbol,
                            ts_event_ms=e.ts_event_ms,
                        ),
                    )
                )
                res.append(Emit("summary", {"dead_letter": it.reason}))
                continue
            res.append(it)
        return res

    def snapshot(self) -> MarketState:
        return copy.deepcopy(self.state)


def _stream_of(e: Any) -> str:
    return "trades" if hasattr(e, "trade_id") else "funding" if hasattr(e, "rate") else "candles"


def _event_dict(e: Any) -> dict[str, Any]:
    return {f: getattr(e, f) for f in e.__slots__ if f != "part"}


# -- context join, features, predict -----------------------------------------------------
def context_step(
    settings: Settings, stamp: Stamp, join: ContextJoin | None, item: Any
) -> tuple[ContextJoin, list[Any]]:
    join = ContextJoin() if join is None else join
    if settings.wall_clock and isinstance(item, ControlCommand):
        return join, [item]  # live: the operator's command acts now, not at the next close
    try:
        if isinstance(item, Close):
            ctx = join.at_close(item.bar, item.cohort, Staleness.of(settings.strategy))
            ctx.size_proxy = item.size_proxy
            ctx.closed_ns = time.perf_counter_ns()  # for the decision-latency metric
            return join, [ctx]
        join.add(item)
        return join, []
    except Exception as exc:
        return join, [
            _error(
                stamp,
                "context_join",
                getattr(item, "symbol", "?"),
                getattr(item, "ts_event_ms", 0),
                exc,
                {"item": repr(item)},
            )
        ]


def features_step(stamp: Stamp, fs: FeatureState | None, item: Any) -> tuple[FeatureState, Any]:
    fs = FeatureState() if fs is None else fs
    if not isinstance(item, BarContext):
        return fs, item
    try:
        item.features = fs.at_close(item)
    except Exception as exc:
        b = item.bar
        return fs, _error(stamp, "features", b.symbol, b.end_ms, exc, {"bar": repr(b)})
    return fs, item


def predict_step(settings: Settings, stamp: Stamp, item: Any) -> Any:
    if not isinstance(item, BarContext) or item.features is None:
        return item
    try:
        rt = load_runtime(str(settings.model_dir))
        pred = rt.predict(item.features)
    except Exception as exc:
        return _error(
            stamp, "predict", item.bar.symbol, item.bar.end_ms, exc, {"features": item.features}
        )
    item.p_up, item.p_up_bma, item.model_id = pred.p_up, pred.p_up_bma, rt.model_id
    return item


# -- strategy ---------------------------------------------------------------------------
ACCOUNT_KEY = "account"  # every symbol's strategy runs under this one key: see AccountBook


@dataclass
class AccountBook:
    """The strategy step's state: the account's risk and every symbol's book, together,
    because account limits need every symbol's equity and Bytewax has no cycles."""

    account: AccountRisk
    symbols: dict[str, SymbolState]
    aligner: EventTimeAligner = dataclasses.field(default_factory=EventTimeAligner)


class StrategyLogic(StatefulLogic):
    def __init__(self, settings: Settings, stamp: Stamp, resume: AccountBook | None) -> None:
        self.settings, self.stamp = settings, stamp
        cfg = settings.strategy
        self.book = resume or AccountBook(
            AccountRisk.new(settings.symbols, cfg.risk.initial_equity), {}
        )
        self.resumed = set(self.book.symbols) if resume is not None else set()
        # a resume may trade other symbols than the snapshot's: more, or fewer if flat
        check_dropped_books(self.book.symbols, settings.symbols)
        self.book.aligner.trade_only(settings.symbols)
        self.book.account.open_books(settings.symbols, cfg.risk.initial_equity)
        self.strategies: dict[str, Strategy] = {}

    def _ensure(self, symbol: str) -> Strategy:
        strat = self.strategies.get(symbol)
        if strat is None:
            rt = load_runtime(str(self.settings.model_dir))
            info = {
                "model_id": rt.model_id,
                "model_sha256": rt.manifest["model_sha256"],
                "horizon_bars": rt.horizon_bars,
            }
            cfg = self.settings.strategy
            state = self.book.symbols.get(symbol) or new_state(cfg, symbol, self.settings.seed)
            self.book.symbols[symbol] = state
            strat = Strategy(
                cfg,
                state,
                self.stamp,
                info,
                resumed=symbol in self.resumed,
                account=self.book.account,
            )
            self.strategies[symbol] = strat
        return strat

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        if isinstance(value, Emit):
            return [value], StatefulLogic.RETAIN
        if isinstance(value, ControlCommand):  # live: between bars (see context_step)
            if not self.book.aligner.command(value):  # bars before it still to decide
                return [], StatefulLogic.RETAIN
            return self._control(value), StatefulLogic.RETAIN
        # every symbol's bars in event-time order
        return self._bars(self.book.aligner.add(value)), StatefulLogic.RETAIN

    def _control(self, cmd: ControlCommand) -> list[Any]:
        strat = self._ensure(cmd.symbol)
        return [Emit(st, r) for st, r in strat.on_control(cmd)]

    def _bars(self, ready: list[BarContext]) -> list[Any]:
        """The aligner's bars, (close, symbol) in order: those closing at one time together,
        as one close of the account (`on_close`). A symbol's live commands kept for its bar
        join the bar's own (`controls_due`), so they apply as a replay applies them: after
        the bar's fill and funding, in event-time order, marked at its close (applied
        before the bar, a reset re-armed the limits from the equity before the fill)."""
        outs: list[Any] = []
        for _, group in itertools.groupby(ready, key=lambda ctx: ctx.bar.end_ms):
            ctxs = list(group)
            for ctx in ctxs:
                if kept := self.book.aligner.due(ctx.bar.symbol, ctx.bar.end_ms):
                    both = [*ctx.controls_due, *kept]
                    ctx.controls_due = sorted(both, key=lambda c: c.ts_event_ms)
            done = on_close([(self._ensure(ctx.bar.symbol), ctx) for ctx in ctxs])
            for ctx, (records, exc) in zip(ctxs, done, strict=True):
                outs.extend(Emit(s, r) for s, r in records)
                if exc is None:
                    metrics.observe_latency((time.perf_counter_ns() - ctx.closed_ns) / 1e9)
                else:  # what happened before the failure went out above, the error with it
                    bar, where = ctx.bar, {"bar": repr(ctx.bar)}
                    outs.append(_error(self.stamp, "strategy", bar.symbol, bar.end_ms, exc, where))
        return outs

    def on_eof(self) -> tuple[list[Any], bool]:
        """At the end of the input: decide the bars still waiting and reject intents that
        can no longer fill. Stopped by a signal: keep both for a restart, only summarise."""
        outs: list[Any] = []
        ended = not stopping()
        if ended:
            outs.extend(self._bars(self.book.aligner.flush()))
            for cmd in self.book.aligner.flush_commands():  # after the last bar: now
                outs.extend(self._control(cmd))
        for symbol in sorted(self.strategies):
            strat = self.strategies[symbol]
            if ended:
                outs.extend(Emit(s, r) for s, r in strat.on_eof())
            outs.append(Emit("summary", strat.summary()))
        outs.append(Emit("summary", {"account": self.book.account.summary()}))
        return outs, StatefulLogic.RETAIN

    def snapshot(self) -> AccountBook:
        return copy.deepcopy(self.book)


# -- the flow ---------------------------------------------------------------------------------
def _account_key(_item: Any) -> str:
    return ACCOUNT_KEY


def _is_record(kv: tuple[str, Any]) -> bool:
    """A finished output record (not market data for the next step)."""
    return isinstance(kv[1], Emit)


# The streams whose records carry free text (an operator's halt reason or command, an
# error message, a dead letter's input, a veto's detail); the others carry numbers, ids
# and typed codes, and walking every signal for strings would cost more than the decision.
FREE_TEXT_STREAMS = frozenset({"health", "repro", "errors", "dead_letters", "rejections"})


def _observed(e: Emit) -> tuple[str, dict[str, Any]]:
    """(stream, record), scrubbed of secret-looking values if it carries free text
    (operators/redaction.py), counted in the Prometheus metrics on its way out."""
    record = clean(e.record) if e.stream in FREE_TEXT_STREAMS else e.record
    metrics.observe(e.stream, record)
    if e.stream == "health":
        progress.heartbeat(record)
    return e.stream, record


def build_flow(
    settings: Settings,
    messages: list[RawMessage] | None = None,
    sink: Any = None,
    source: Any = None,
    recovery: Path | None = None,
    clock: Clock = WALL_CLOCK,
) -> Dataflow:
    """The dataflow over `settings`' input (or `messages`, or `source`), into `sink` (or
    JSON files). Tests pass a `source` to inject a crash (bytewax.testing.TestingSource).
    Every input ends early once a signal asks the run to stop (dataflows/progress.py).
    `recovery` is the run's recovery directory, where the symbols' route keys are pinned.
    `clock` is what a live run (`wall_clock`) stamps records with and closes quiet bars
    by: a paced replay may pass a faster one; Kafka input, whose partitions are timed by
    the wall clock, refuses it."""
    kafka = settings.kafka_bootstrap is not None and messages is None and source is None
    if kafka and clock is not WALL_CLOCK:
        raise ValueError("Kafka input runs on the wall clock: `clock` must be WALL_CLOCK")
    stamp = Stamp(settings.strategy.strategy_id, clock.now_ms if settings.wall_clock else None)
    rt = load_runtime(str(settings.model_dir))  # a bad artifact stops the start, not a bar
    metrics.trading(settings.symbols)
    settings.strategy.with_model_horizon(rt.horizon_bars)  # a hold the model disagrees with

    flow = Dataflow("ensemble")
    inputs = InputPartitions() if kafka else None  # this run's partitions, for alignment
    to_raw = None
    if source is not None:
        raw = op.input("input", flow, StoppableSource(source))
    elif kafka:
        raw = op.input("input", flow, StoppableSource(kafka_source(settings, inputs)))
        to_raw = partial(from_kafka, settings.topic_prefix)
    else:
        raw = op.input("input", flow, StoppableSource(_MarketSource(settings, messages)))
    # One (symbol, events) per symbol and input batch from here to the market step.
    resumed = recovery is not None and progress.resumed_epoch(recovery) is not None
    keys = routing.routes(route_order(settings), recovery, resumed)
    decode = partial(decode_batch, settings, stamp, to_raw, keys, relay=MarkRelay())
    decoded = op.flat_map_batch("decode", raw, decode)
    split = op.branch("dead_letters_in", decoded, lambda x: isinstance(x, Emit))
    bad = split.trues
    keyed = cast(KeyedStream[list[Any]], split.falses)  # keyed by the symbols' route keys
    checked = op.stateful("commands", keyed, partial(CommandLogic, settings, stamp, inputs))
    refused = op.filter_map(
        "refused", checked, lambda kv: kv[1] if isinstance(kv[1], Emit) else None
    )
    accepted = op.filter("accepted", checked, lambda kv: not isinstance(kv[1], Emit))
    market = op.stateful_batch(
        "market", accepted, partial(MarketLogic, settings, stamp, inputs, clock=clock)
    )
    # Records (bars, dead letters, errors) branch off to the sink after each step; only
    # market data rides on through the keyed stateful steps.
    market_out = op.branch("market_records", market, _is_record)
    contexts = op.stateful_flat_map(
        "context_join", market_out.falses, partial(context_step, settings, stamp)
    )
    context_out = op.branch("context_records", contexts, _is_record)
    featured = op.stateful_map("features", context_out.falses, partial(features_step, stamp))
    features_out = op.branch("features_records", featured, _is_record)
    predicted = op.map_value("predict", features_out.falses, partial(predict_step, settings, stamp))
    predict_out = op.branch("predict_records", predicted, _is_record)
    by_account = op.key_on("by_account", op.key_rm("to_account", predict_out.falses), _account_key)
    decided = op.stateful(
        "strategy", by_account, lambda resume: StrategyLogic(settings, stamp, resume)
    )
    emitted: Stream[Emit] = op.merge(
        "outputs",
        bad,
        refused,
        op.key_rm("market_unkey", market_out.trues),
        op.key_rm("context_unkey", context_out.trues),
        op.key_rm("features_unkey", features_out.trues),
        op.key_rm("predict_unkey", predict_out.trues),
        op.key_rm("unkey", decided),
    )
    by_stream = op.map("by_stream", emitted, _observed)
    if sink is None and settings.kafka_bootstrap is not None:
        to_topics = op.filter_map("to_kafka", by_stream, partial(to_kafka, settings.topic_prefix))
        op.output("sink", to_topics, kafka_sink(settings))
        summary = op.filter("summary", by_stream, lambda kv: kv[0] == "summary")
        outputs = f"Kafka topics {settings.topic_prefix}.<stream>"
        op.output("summary_out", summary, SummarySink(outputs))
    else:
        if sink is None and not resumed:  # a resume truncates the files to its snapshot
            clear_outputs(settings.out_dir, OUTPUT_STREAMS)
        op.output("sink", by_stream, sink or JsonLinesSink(settings.out_dir, OUTPUT_STREAMS))
    return flow


GC_GEN0_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)


def tune_gc() -> None:
    """The flow allocates short-lived objects per record, few of them in cycles: with the
    default threshold the cyclic collector ran every 700 allocations and rescanned the
    start-up objects (model, modules) at each older-generation pass. Freeze those and
    collect the young generation less often; reference counting still frees the rest."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _flow_from_env() -> Dataflow:
    """The main job: the flow, a start line and warm-up warning on stderr, a status line
    every ENSEMBLE_STATUS_INTERVAL_S, and a clean stop with the summary on SIGINT/SIGTERM."""
    recovery = progress.recovery_from_argv(sys.argv[1:]) if progress.main_job() else None
    try:
        settings = Settings.from_env()
        built = build_flow(settings, recovery=recovery)
    except (ConfigError, ArtifactError, KafkaUnavailable, RoutesError) as e:
        print(f"ensemble: cannot start: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    tune_gc()
    if not progress.main_job():  # imported (tests, tools): no signal handlers, no output
        return built
    model_id = load_runtime(str(settings.model_dir)).model_id
    progress.note_recovery(recovery)
    print(progress.start_line(settings, model_id, recovery), file=sys.stderr, flush=True)
    warning = progress.warmup_warning(settings)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    progress.install_stop_handlers()
    cluster.install_parking()  # as a cluster: the main thread takes the GIL every 50 ms, not 1
    if settings.status_interval_s:
        progress.report_status(settings.status_interval_s, settings.strategy.warmup_bars)
    cluster.wait_for_peers(cluster.earlier_local_ports())  # spares Timely's 1 s retry
    return built


flow = _flow_from_env()
