"""Sources and sinks: the generator, market-data files or Kafka in; JSON-lines or Kafka out.

The input yields, in event order, `RawMessage`s (the generator, or messages a test passes:
one partition) or `RowBlock`s (files, column by column: one partition per symbol); each
partition's resume state is the number of records consumed, so a recovered run continues
where it stopped. The
output writes one JSON-lines file per stream (`<out>/<stream>.jsonl`), one partition
per stream, whose resume state is the file offset: a recovered run truncates what was
written after the last snapshot, so each file holds every record exactly once.

With Kafka, input topics are read with Bytewax's KafkaSource (offsets live in Bytewax
recovery snapshots; without recovery a run starts from the beginning of the topics) and
records are written Avro-encoded (PlainAvro, no framing), keyed by symbol, with
`DeliveredSink` (dataflows/kafka_sink.py): at-least-once, so consumers deduplicate by
decision id, and a delivery that fails stops the flow instead of losing the record.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, OffsetSpec

from dataflows.kafka_sink import DeliveredSink, client_logger, wait_for_kafka
from dataflows.progress import no_decision_reasons, stopped_line, stopping
from dataflows.readiness import Readiness, serve
from dataflows.settings import Settings
from dataflows.topics import FLOW_GROUP, INPUT_TOPICS, MAX_MESSAGE_BYTES
from marketdata.files import RowBlock, file_blocks
from marketdata.generator import generate
from operators.telemetry import wall_clock_ms
from operators.watermark import (
    HEARTBEAT_S,
    MARKS_EVERY_S,
    THIS_CLOCK,
    InputPartitions,
    PartitionMark,
)
from schemas.codec import STREAM_SCHEMAS, encode

log = logging.getLogger("ensemble.kafka")
BATCH = 2048
READINESS: Readiness | None = None  # the process's /ready state, when served


@dataclass(slots=True)
class RawMessage:
    """One input message as it arrived: Avro bytes (Kafka) or a decoded record (files)."""

    stream: str
    payload: bytes | dict[str, Any]
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    error: str | None = None  # the transport could not deliver it intact
    origin: str | None = None  # file and row it was read from (input files)


@dataclass(slots=True)
class KafkaRun:
    """Consecutive messages of one Kafka input partition, none an error, as one item of the
    source's batch: their values and offsets in order. Bytewax's connector makes an object
    per message, and the flow made a RawMessage of each: together about a third of a
    Kafka run's CPU (issue 16). A run of trades is decoded from `values` as columns; a
    message is made only for a record that needs one (a dead letter names its offset)."""

    stream: str
    topic: str
    partition: int
    values: list[bytes]
    offsets: list[int]

    def __len__(self) -> int:
        return len(self.values)

    def message(self, i: int) -> RawMessage:
        return RawMessage(
            self.stream, self.values[i], self.topic, self.partition, self.offsets[i], None
        )


def block_message(block: RowBlock, i: int) -> RawMessage:
    """Row `i` of a file block as a message of the per-row path, the way a dead letter
    names it: the file in `topic`, the row in `offset`."""
    row, problem = block.row[i], block.error[i]
    origin = f"{block.path} row {row}"
    error = None if problem is None else f"unreadable: {problem} (at {origin})"
    return RawMessage(block.stream, block.record(i), block.path, None, row, error, origin)


def market_messages(settings: Settings) -> Iterator[RawMessage]:
    """The embedded input one message per record (the tools' and tests' per-row path)."""
    if settings.generator is not None:
        for stream, rec in generate(settings.generator):
            yield RawMessage(stream, rec)
        return
    for block in file_blocks(list(settings.files)):
        for i in range(len(block)):
            yield block_message(block, i)


def market_input(settings: Settings) -> Iterator[RawMessage | RowBlock]:
    """What the flow reads: the generator's messages, or files in blocks of rows."""
    if settings.generator is not None:
        return market_messages(settings)
    return file_blocks(list(settings.files))


def _size(item: RawMessage | RowBlock) -> int:
    return len(item) if isinstance(item, RowBlock) else 1


def _skip(items: Iterator[RawMessage | RowBlock], n: int) -> Iterator[RawMessage | RowBlock]:
    """`items` after the first `n` records (a resumed run: a block may be cut)."""
    for item in items:
        if n > 0:
            size = _size(item)
            if n >= size:
                n -= size
                continue
            item, n = item.slice(n, size), 0  # type: ignore[union-attr]
        yield item


class _IterPartition(StatefulSourcePartition[Any, int]):
    """Batches of about BATCH records; the resume state counts records, not items."""

    def __init__(self, items: Iterator[RawMessage | RowBlock], consumed: int) -> None:
        self.it = _skip(items, consumed)
        self.consumed = consumed

    def next_batch(self) -> list[RawMessage | RowBlock]:
        batch: list[RawMessage | RowBlock] = []
        records = 0
        for item in self.it:
            batch.append(item)
            records += _size(item)
            if records >= BATCH:
                break
        if not batch:
            raise StopIteration
        self.consumed += records
        return batch

    def snapshot(self) -> int:
        return self.consumed


class MarketSource(FixedPartitionedSource[Any, int]):
    """The embedded input: generated market or files, in event order, with an end."""

    def __init__(self, settings: Settings, messages: list[RawMessage] | None = None) -> None:
        self.settings = settings
        self.messages = messages  # tests pass messages directly

    def list_parts(self) -> list[str]:
        """Files: one partition per symbol, named after it, so with several workers each
        symbol is read and decoded on a worker of its own (Bytewax gives partition j of
        these sorted names to worker j mod workers, and the symbol's route key puts its
        state there too: dataflows/routing.py). Otherwise one."""
        if self.messages is not None or not self.settings.files:
            return ["market"]
        return sorted({f.symbol for f in self.settings.files})

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IterPartition:
        if self.messages is not None:
            items: Iterator[RawMessage | RowBlock] = iter(self.messages)
        elif for_part == "market":
            items = market_input(self.settings)
        else:  # this symbol's files, merged in time as always
            items = file_blocks([f for f in self.settings.files if f.symbol == for_part])
        return _IterPartition(items, resume_state or 0)


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    raise TypeError(f"cannot write {type(v).__name__} as JSON")


def _clean(v: Any) -> Any:
    """JSON has no NaN or infinity: write them as null (the record says which field)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


# One encoder for every line: `json.dumps` with options builds a new one per call.
# Records are trees the flow builds, never cyclic: no check for cycles.
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), default=_json_default, allow_nan=False, check_circular=False
)
# orjson writes NaN and infinity as null, as `_clean` does, and non-string keys as strings;
# a dataclass or a datetime goes to `_json_default` (refused, as the standard library does).
_ORJSON = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def to_json_line(record: dict[str, Any]) -> bytes:
    """One JSON line, ASCII. orjson (six times the standard library's speed: the outputs of
    a year's candle replay took a sixth of it to encode); a record orjson refuses (an
    integer past 64 bits, a float subclass such as numpy's) or writes with non-ASCII text
    goes through the standard library, which escapes it as before: a raw U+2028 or U+0085
    would split the line for `str.splitlines`. It walks the record for NaN only when its
    encoder finds one."""
    try:
        line = orjson.dumps(record, default=_json_default, option=_ORJSON)
        if line.isascii():
            return line
    except TypeError:  # orjson.JSONEncodeError
        pass
    try:
        text = _ENCODER.encode(record)
    except ValueError:  # a NaN or an infinity: written as null
        text = _ENCODER.encode(_clean(record))
    return (text + "\n").encode("ascii")


class OutputsLost(RuntimeError):
    """A resumed run's output file holds less than the recovery snapshot continues after."""


class _JsonLinesPartition(StatefulSinkPartition[dict[str, Any], int]):
    def __init__(self, path: Path, resume_offset: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume_offset:  # new, or resumed before its first record
            self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
            return
        size = path.stat().st_size if path.exists() else None
        if size is None or size < resume_offset:  # truncate() would pad it with zero bytes
            held = "is missing" if size is None else f"holds only {size:,} bytes"
            raise OutputsLost(
                f"{path} {held}, but the recovery snapshot continues it after "
                f"{resume_offset:,} bytes: the records written before the restart are not "
                "there. Point ENSEMBLE_OUT at the directory the run wrote, or start on a new "
                "recovery directory (a fresh run)."
            )
        self.f = open(path, "r+b")  # noqa: SIM115
        self.f.seek(resume_offset)
        self.f.truncate()

    def write_batch(self, values: list[dict[str, Any]]) -> None:
        self.f.write(b"".join(to_json_line(v) for v in values))

    def snapshot(self) -> int:
        self.f.flush()
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


class _SummaryPartition(StatefulSinkPartition[dict[str, Any], dict]):
    """Collects per-symbol run summaries and dead-letter counts; prints them at the end
    (and writes `summary.json` beside the output files; a Kafka run has none)."""

    def __init__(self, out_dir: Path | None, resume: dict | None, outputs: str) -> None:
        self.out_dir, self.outputs = out_dir, outputs
        self.state = resume or {"symbols": {}, "dead_letters": 0, "dead_letter_reasons": {}}
        self.state.setdefault("duplicate_trades", {})

    def write_batch(self, values: list[dict[str, Any]]) -> None:
        for v in values:
            if "duplicates" in v:
                dups = self.state["duplicate_trades"]
                dups[v["symbol"]] = dups.get(v["symbol"], 0) + v["duplicates"]
            elif "account" in v:
                self.state["account"] = v["account"]
            elif "dead_letter" in v:
                self.state["dead_letters"] += 1
                kind = v["dead_letter"].split(":")[0].split(" ")[0]
                reasons = self.state["dead_letter_reasons"]
                reasons[kind] = reasons.get(kind, 0) + 1
            else:
                self.state["symbols"][v["symbol"]] = v

    def snapshot(self) -> dict:
        return json.loads(json.dumps(self.state))

    def close(self) -> None:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "summary.json").write_text(
                json.dumps(self.state, indent=2, sort_keys=True) + "\n"
            )
        print(format_summary(self.state, self.outputs), flush=True)


def format_summary(state: dict, outputs: str) -> str:
    lines = ["", "Ensemble run summary (paper trading)"]
    for sym, s in sorted(state["symbols"].items()):
        rej = ", ".join(f"{k} {v}" for k, v in s["rejections"].items()) or "none"
        lines += [
            f"  {sym}: {s['bars']} 5m bars ({s['gap_bars']} missing), {s['decisions']} decisions, "
            f"{s['fills']} fills, {s['round_trips']} round trips "
            f"({s['wins']} won, {s['losses']} lost)",
            f"    rejections by reason: {rej}",
            f"    final equity {s['equity']:,.2f} USD, max drawdown {s['max_drawdown']:.2%}, "
            f"fees {s['fees_usd']:,.2f} USD, funding {s['funding_usd']:+,.2f} USD, "
            f"state {s['trading_state']}",
        ]
    if len(state["symbols"]) > 1 and (acct := state.get("account")):
        lines.append(
            f"  account ({len(state['symbols'])} symbols): equity {acct['equity']:,.2f} USD "
            f"(peak {acct['peak_equity']:,.2f}), max drawdown {acct['max_drawdown']:.2%}, "
            f"state {acct['trading_state']}"
            + (f" ({acct['halt_reason']})" if acct["halt_reason"] else "")
        )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(state["dead_letter_reasons"].items()))
    lines.append(f"  dead letters: {state['dead_letters']}" + (f" ({reasons})" if reasons else ""))
    dups = state.get("duplicate_trades") or {}
    by_symbol = ", ".join(f"{k} {v}" for k, v in sorted(dups.items()))
    lines.append(
        f"  duplicate trades dropped: {sum(dups.values())}"
        + (f" ({by_symbol})" if by_symbol else "")
    )
    lines += [f"  warning: {w}" for w in no_decision_reasons(state)]
    if stopping():
        lines.append(f"  {stopped_line()}")
    lines.append(f"  outputs: {outputs}")
    return "\n".join(lines)


def clear_outputs(out_dir: Path, streams: list[str]) -> None:
    """Before a fresh run (not a resume): remove an earlier run's output files, so that a
    stream this run never writes (a clean run has no dead letters) leaves no stale file
    beside the new summary. A stream's file is created at its first record."""
    for name in streams:
        (out_dir / f"{name}.jsonl").unlink(missing_ok=True)
    (out_dir / "summary.json").unlink(missing_ok=True)


class JsonLinesSink(FixedPartitionedSink[dict[str, Any], Any]):
    """One JSON-lines file per stream; items are (stream, record)."""

    def __init__(self, out_dir: Path, streams: list[str]) -> None:
        self.out_dir = out_dir
        self.parts = sorted([*streams, "summary"])

    def list_parts(self) -> list[str]:
        return self.parts

    def part_fn(self, item_key: str) -> int:
        return self.parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSinkPartition:
        if for_part == "summary":
            outputs = f"{self.out_dir}/<stream>.jsonl and {self.out_dir}/summary.json"
            return _SummaryPartition(self.out_dir, resume_state, outputs)
        return _JsonLinesPartition(self.out_dir / f"{for_part}.jsonl", resume_state)


class SummarySink(FixedPartitionedSink[dict[str, Any], Any]):
    """The run summary alone, printed at the end: a Kafka run's records go to topics and its
    container may have no writable directory."""

    def __init__(self, outputs: str) -> None:
        self.outputs = outputs

    def list_parts(self) -> list[str]:
        return ["summary"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _SummaryPartition:
        return _SummaryPartition(None, resume_state, self.outputs)


def kafka_source(settings: Settings, inputs: InputPartitions | None = None) -> KafkaSource:
    """The input topics, once the broker answers and they exist (bounded wait, else a clear
    error: Bytewax's own listing would wait forever). Starts the `/ready` server if set."""
    assert settings.kafka_bootstrap is not None
    topics = [t.name(settings.topic_prefix) for t in INPUT_TOPICS]
    client = {"bootstrap.servers": settings.kafka_bootstrap, **settings.kafka_security.confluent()}
    admin, metadata = wait_for_kafka(client, topics, settings.kafka_startup_timeout_s)
    if settings.ready_port:
        global READINESS
        READINESS = Readiness(
            {**client, "group.id": FLOW_GROUP, "logger": client_logger()},
            topics,
            settings.ready_stall_s,
        )
        serve(READINESS, settings.ready_port)
    return _WatchedKafkaSource(
        inputs,
        settings.topic_prefix,
        (admin, metadata),
        settings.kafka_bootstrap.split(","),
        topics,
        tail=settings.kafka_tail,
        raise_on_errors=False,  # a broken message is a dead letter, not a crash
        batch_size=BATCH_MESSAGES,
        add_config={
            **settings.kafka_security.confluent(),
            "group.id": FLOW_GROUP,  # the one group the flow's ACLs name
            "logger": client_logger(),
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            # An offset no longer in the partition when fetched (retention deleted it since
            # `start_offset` looked): the first record still kept, not the end (librdkafka's
            # default, which skipped every record between).
            "auto.offset.reset": "earliest",
        },
    )


class InputTopicGone(RuntimeError):
    """An input topic or partition vanished under the running flow: stop, do not stall."""


TOPIC_CHECK_S = 10.0  # how often each input partition asks whether its topic still exists
QUIET_POLL_MIN_S = 0.001  # after an empty batch, poll again after this, doubling
QUIET_POLL_MAX_S = 0.1  # ... up to this: a quiet partition's next record waits at most this
# The longest the broker holds an input partition's fetch with nothing to send (librdkafka's
# default is 500 ms). A consumer's first fetch came back empty after all of it, records
# waiting or not: a consumer on its own got its first record 0.52 s after it was made,
# 0.12 s at 100 ms. At 100 ms, a quiet partition costs the broker ten empty fetches a
# second.
FETCH_WAIT_MS = 100
# How long librdkafka waits before fetching again for a partition whose local queue holds
# its threshold (`queued.min.messages`, 100,000) or more (its default is 1,000 ms). One
# fetch brings more than that, so while the flow worked down a backlog the fetcher slept a
# second at a time: a flow reading at 260,000 records/s sat idle for part of each second
# (one consumer alone drained 2 x 250k trades in 2.25 s; with 10 ms, 0.32 s). The queue's
# bounds are unchanged; only the next look at it comes sooner.
FETCH_QUEUE_BACKOFF_MS = 10
# The most messages one read of an input partition takes (Bytewax's default is 1,000). A
# read returns what the partition's queue holds after at most 1 ms, so live records are
# not held for more; a backlog comes in runs this long, and a run's fixed costs (one
# decode into columns, one market step, one mark) are paid per 20,000 records, not per
# 1,000: 2 x 1M trades from Kafka took 5.7 s at 1,000 and 4.7 s at 20,000 (CPU 5.4 and 4.7 s;
# medians of 3 interleaved runs, one worker).
BATCH_MESSAGES = 20_000
OFFSETS_FRESH_S = 10.0  # a source's answer of every partition's offsets serves this long
OFFSETS_TIMEOUT_S = 5.0  # the longest a source waits for that answer
WATERMARKS_S = 1.0  # how often the high watermarks of partitions that asked are refreshed


class _Metadata:
    """One client per source for the questions its partitions ask the broker (does the
    topic exist, where is the high watermark). Not each partition's own consumer: the
    broker answers one connection's requests in order, so behind that consumer's fetch,
    which waited up to `fetch.wait.max.ms` (librdkafka's 500 ms then; FETCH_WAIT_MS now)
    on a partition with nothing new, every question took half a second, and a following
    flow with twenty quiet partitions spent most of its time waiting (1,000 records read
    per 10 s).

    The high watermarks are asked on a thread of their own, every WATERMARKS_S, for the
    partitions that asked since: each answer takes a round trip (about 17 ms to a local
    TLS broker), and asked from the flow's thread the answers took 1.3 s of a 6.9 s
    `make bench-kafka` run."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.client: Consumer | None = None
        self.users = 0
        self.using = threading.Lock()  # `users` and the client's life (`-w 2`'s workers)
        self.lock = threading.Lock()
        self.wanted: set[TopicPartition] = set()
        self.known: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, idx) -> (low, high)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def open(self) -> Consumer:
        with self.using:
            if self.client is None:
                self.client = Consumer(self.config)  # assigned nothing: it never fetches
                self.stop.clear()
                self.thread = threading.Thread(
                    target=self._refresh,
                    args=(self.client,),
                    name="kafka-watermarks",
                    daemon=True,
                )
                self.thread.start()
            self.users += 1
            return self.client

    def watermarks(self, tp: TopicPartition) -> tuple[int, int] | None:
        """The last (low, high) the broker gave for `tp`, None before its first answer;
        asks for a fresh one at the next refresh."""
        with self.lock:
            self.wanted.add(tp)
            return self.known.get((tp.topic, tp.partition))

    def _refresh(self, client: Consumer) -> None:
        while not self.stop.wait(WATERMARKS_S if self.known else 0.05):
            with self.lock:
                wanted, self.wanted = self.wanted, set()
            for tp in wanted:
                if self.stop.is_set():  # a stop waits for one answer at most, not for all
                    return
                try:
                    marks = client.get_watermark_offsets(tp, timeout=0.5)
                except KafkaException:  # broker away: not caught up until it answers
                    marks = None
                if marks is not None:
                    with self.lock:
                        self.known[(tp.topic, tp.partition)] = marks

    def release(self) -> None:
        with self.using:
            self.users -= 1
            if self.users == 0 and self.client is not None:
                self.stop.set()
                if self.thread is not None:
                    self.thread.join()
                self.client.close()
                self.client, self.thread = None, None


class _WatchedPartition(StatefulSourcePartition):
    """Bytewax's Kafka partition, plus a periodic check that its topic still exists
    (librdkafka may stop fetching a deleted topic without an error, a silent stall), and
    with `marks`, a `PartitionMark` at the end of every batch with records and of every
    batch after which its state changed (whether it has records left to read): the
    steps align the topics by event time with them (operators/watermark.py)."""

    def __init__(
        self, inner: Any, topic: str, stream: str, idx: int, marks: bool, meta: _Metadata
    ) -> None:
        self.inner, self.topic, self.stream, self.idx = inner, topic, stream, idx
        self.marks, self.meta = marks, meta
        # the client asks whether the topic still exists and where its end is: a partition
        # at its end from the start (`_AtEnd`) asks neither
        self.client = None if inner._consumer is None else meta.open()
        self.tp = TopicPartition(topic, idx)
        self.part = partition_name(topic, idx)
        self.next_check_s = time.monotonic() + TOPIC_CHECK_S
        self.quiet_s = 0.0  # the wait before polling again after empty batches
        self.awake_at: datetime | None = None
        self.reported: bool | None = None  # caught up, as the last mark said (None: no mark)
        self.records = 0  # read so far
        self.read_ms: int | None = None  # when it last read records (first: its first poll)
        self.marked_s = 0.0  # when the last mark went (monotonic)
        self.settled = True  # the last mark said all there is until new records

    def next_batch(self) -> list[Any]:
        now = time.monotonic()
        if now >= self.next_check_s and self.client is not None:
            self.next_check_s = now + TOPIC_CHECK_S
            try:
                md = self.client.list_topics(self.topic, timeout=5)
            except KafkaException:  # broker away: /ready reports it, the flow waits
                md = None
            t = None if md is None else md.topics.get(self.topic)
            if md is not None and (t is None or (t.error is not None and t.error.name() in _GONE)):
                raise InputTopicGone(
                    f"input topic {self.topic!r} is gone: recreate it with `python -m "
                    "dataflows.topics` and restart (with recovery the flow resumes from its "
                    "last snapshot)"
                )
        batch = self._read()  # StopIteration: its end (the last mark said so)
        caught_up = self._caught_up(bool(batch))
        if batch or not caught_up:
            self.quiet_s, self.awake_at = 0.0, None
        else:
            self.quiet_s = min(max(2 * self.quiet_s, QUIET_POLL_MIN_S), QUIET_POLL_MAX_S)
            self.awake_at = datetime.now(UTC) + timedelta(seconds=self.quiet_s)
        if self.marks:
            self._mark(batch, caught_up, now)
        return batch

    def _read(self) -> list[Any]:
        """Bytewax's `_KafkaSourcePartition.next_batch` (the same consume, end, errors and
        next offset), with the messages between errors as one KafkaRun instead of an
        object each; an error is the connector's KafkaError, as before."""
        inner = self.inner
        if inner._eof:
            raise StopIteration
        if inner._consumer is None:  # `_AtEnd`: its end is its first read
            inner._eof = True
            return []
        batch: list[Any] = []
        values: list[bytes] = []
        offsets: list[int] = []
        last = None
        for msg in inner._consumer.consume(inner._batch_size, 0.001):
            error = msg.error()
            if error is None:
                values.append(msg.value() or b"")
                offsets.append(last := msg.offset())
                continue
            if error.code() == ConfluentKafkaError._PARTITION_EOF:
                inner._eof = True  # StopIteration at the next call, after this batch
                break
            if inner._raise_on_errors:
                raise RuntimeError(f"error consuming from Kafka topic `{self.topic!r}`: {error}")
            if values:
                batch.append(KafkaRun(self.stream, self.topic, self.idx, values, offsets))
                values, offsets = [], []
            headers = msg.headers()
            kept = KafkaSourceMessage(
                key=msg.key(),
                value=msg.value(),
                topic=msg.topic(),
                headers=[] if headers is None else headers,
                latency=msg.latency(),
                offset=msg.offset(),
                partition=msg.partition(),
                timestamp=msg.timestamp(),
            )
            batch.append(KafkaError(error, kept))
            if msg.offset() is not None:  # None (-1001): an error of no message, no offset
                last = msg.offset()
        if values:
            batch.append(KafkaRun(self.stream, self.topic, self.idx, values, offsets))
        if last is not None:  # resume from the next message, not this one
            inner._offset = last + 1
        return batch

    def _mark(self, batch: list[Any], caught_up: bool, now_s: float) -> None:
        """A mark after records or a change of state; once caught up and quiet for
        MARKS_EVERY_S after one, a settled mark, which the relay sends every symbol (it
        holds back some marks from symbols with no records in their batch, and a partition
        that then goes quiet sends no other); and while it stays so, the settled mark
        again every HEARTBEAT_S, so the steps can tell a quiet partition from a frozen
        reader (operators/watermark.py)."""
        if batch or caught_up is not self.reported:
            if batch or self.read_ms is None:
                self.records, self.read_ms = self.records + _messages(batch), wall_clock_ms()
            self.reported = caught_up
            self.settled = self.inner._eof  # the last batch: nothing will follow it
        elif caught_up and now_s - self.marked_s >= (
            HEARTBEAT_S if self.settled else MARKS_EVERY_S
        ):
            self.settled = True
        else:
            return
        assert self.read_ms is not None
        self.marked_s = now_s
        batch.append(
            PartitionMark(
                self.part,
                caught_up,
                self.records,
                self.read_ms,
                settled=self.settled,
                made_ms=wall_clock_ms(),
                ended=self.inner._eof,
                clock=THIS_CLOCK,
            )
        )

    def _caught_up(self, got_records: bool) -> bool:
        """Nothing left to read now: the partition's end, or the next offset at the high
        watermark. librdkafka caches the high watermark from fetched messages only, so
        after an empty batch the source's metadata client's last answer is used (asked
        about once a second, off this thread): an empty partition, or one read to its
        end, is caught up; one not fetched yet is not."""
        if self.inner._eof:
            return True
        if got_records:
            try:
                marks = self.inner._consumer.get_watermark_offsets(self.tp, cached=True)
            except KafkaException:
                return False
        else:
            marks = self.meta.watermarks(self.tp)
        if marks is None:
            return False
        low, high = marks
        offset = self.inner._offset  # the next to read; negative: the beginning
        # below the first kept offset: librdkafka reads from that one (auto.offset.reset)
        return high >= 0 and (max(offset, low) if offset >= 0 else low) >= high

    def next_awake(self) -> datetime | None:
        """Right away while records come or wait at the broker; once caught up, after each
        empty batch later and later (up to QUIET_POLL_MAX_S): Bytewax's consume waits 1 ms
        on an empty partition, so twenty quiet input partitions polled in every round cost
        about 25 ms before the round reached the trades."""
        return self.awake_at

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()
        if self.client is not None:
            self.meta.release()


class _AtEnd:
    """In place of Bytewax's partition, one with nothing to read when the flow reads its
    input to the end (ENSEMBLE_KAFKA_TAIL=0): it starts at the end the broker gave at
    start, so it makes no consumer (nor opens the source's metadata client). Each
    consumer is a connection (a TLS and SASL handshake), polled in every round until its
    first fetch finds the end: in the Kafka bench, 17 of the 19 input partitions are
    empty (its trades are keyed to 2 of the 6 trades partitions), and given none a run
    of 2 × 1,000 trades took 0.60 s instead of 0.80 (CPU 0.51 s instead of 0.96). Its
    first read is its end, as Bytewax's would be, and its mark says so."""

    def __init__(self, offset: int) -> None:
        self._offset = offset
        self._eof = False
        self._consumer = None

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        pass


def _messages(batch: list[Any]) -> int:
    return sum(len(x) if type(x) is KafkaRun else 1 for x in batch)


class _WatchedKafkaSource(KafkaSource):
    def __init__(
        self,
        inputs: InputPartitions | None,
        prefix: str,
        started: tuple[AdminClient | None, Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """`started`: the start-up check's client and its answer (`wait_for_kafka`)."""
        super().__init__(*args, **kwargs)
        self.inputs, self.prefix = inputs, prefix
        self.config = {"bootstrap.servers": ",".join(self._brokers), **self._add_config}
        self.meta = _Metadata(self.config)
        self.admin, self.metadata = started
        self.metadata_s = time.monotonic()
        self.listed: list[str] = []
        self.offsets: dict[str, tuple[int, int]] = {}  # partition -> (first kept, end)
        self.asked: dict[str, float] = {}  # partition -> when its offsets were asked
        self.asking = threading.Lock()  # `-w 2`: the workers build their parts at once

    def list_parts(self) -> list[str]:
        """Every partition of the input topics (each worker lists them all; Bytewax builds
        each in one process): the steps' views wait for each one's first mark. Listed from
        the start-up check's answer while it is fresh (OFFSETS_FRESH_S), as Bytewax lists
        them (which connected again and asked for each topic in turn: 70 ms)."""
        fresh = time.monotonic() - self.metadata_s <= OFFSETS_FRESH_S
        if self.metadata is not None and fresh:  # the start-up check's answer
            parts = self.listed = list(_list_parts(self.metadata, self._topics))
        else:
            parts = self.listed = super().list_parts()
        if self.inputs is not None:
            named = [_event_part(p) for p in parts]
            self.inputs.listed.update(named)
            control = partition_name(f"{self.prefix}.control", "")  # "PREFIX.control#"
            self.inputs.hold_only.update(n for n in named if n.startswith(control))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _WatchedPartition:
        """Bytewax's partition, started at an offset rather than at the logical start: a
        consumer assigned that before it knows the partition's leader waits half a second
        before it asks where the start is (librdkafka's fixed retry), which was a third
        of the flow's start-up and connecting. The partitions' first and end offsets are
        asked once for all the listed ones (again if that answer is older than
        OFFSETS_FRESH_S). A new partition starts at its first kept offset; a resumed one
        where its snapshot says, unless that offset is no longer in the partition (see
        `start_offset`). A partition the broker gave no answer for starts as Bytewax
        starts it (the logical start, or the snapshot's offset), with a warning. Read to
        the end of the input (not tailing it), a partition that starts at its end gets no
        consumer (`_AtEnd`)."""
        with self.asking:
            asked_s = self.asked.get(for_part)
            if asked_s is None or time.monotonic() - asked_s > OFFSETS_FRESH_S:
                parts = self.listed if for_part in self.listed else [for_part]
                answers = partition_offsets(self.config, parts, self.admin)
                self.admin = None  # once: the start-up check's connection is not kept open
                now = time.monotonic()
                self.offsets.update(answers)
                self.asked.update((p, now) for p in parts)
                if len(answers) < len(parts):
                    log.warning(
                        "input partitions %s: the broker did not say their first and end "
                        "offsets within %.0f s: each starts where Bytewax starts it, and a "
                        "resumed one whose offset is no longer kept reads from its first "
                        "kept record without saying how many records it never read",
                        ", ".join(sorted(set(parts) - set(answers))),
                        OFFSETS_TIMEOUT_S,
                    )
            bounds = self.offsets.get(for_part)
        if bounds is not None:
            resume_state = start_offset(for_part, resume_state, *bounds)
        if bounds is not None and not self._tail and resume_state >= bounds[1]:
            inner: Any = _AtEnd(resume_state)  # nothing to read: no consumer
        else:
            inner = super().build_part(step_id, for_part, resume_state)
        idx, topic = for_part.split("-", 1)
        if READINESS is not None:  # `/ready` counts what waits from here, on this process
            READINESS.reading(topic, int(idx), resume_state)
        stream = stream_of(self.prefix, topic)
        return _WatchedPartition(inner, topic, stream, int(idx), self.inputs is not None, self.meta)


def start_offset(part: str, resumed: int | None, low: int, high: int) -> int:
    """Where partition `part` (kept offsets `low` to `high` - 1) is read from: its first
    kept offset if new; a snapshot's offset if still in it. A snapshot's offset outside
    it is read from the first kept offset too, with a warning that says what happened:
    below it, retention deleted those records while the flow was stopped (they are lost
    to it); past its end, the topic was recreated or its broker lost records, and
    trades and candles read again are refused as duplicates or late, with their reasons
    (funding, overlays and cohorts are taken again), rather than any new record skipped."""
    # new, or a snapshot taken before its first read: Bytewax's logical start (the flow
    # always starts its sources at OFFSET_BEGINNING; a source started at the end would
    # need its own case here)
    if resumed is None or resumed < 0:
        return low
    if resumed < low:
        log.warning(
            "input partition %s: the snapshot's offset %d was deleted by retention while "
            "the flow was stopped: %d records never read; resuming at %d, its first kept",
            part, resumed, low - resumed, low,
        )  # fmt: skip
        return low
    if resumed > high:
        log.warning(
            "input partition %s: the snapshot's offset %d is past the partition's end %d "
            "(the topic was recreated, or its broker lost records): reading from its "
            "first kept offset %d; trades and candles read before are refused as duplicates "
            "or late",
            part, resumed, high, low,
        )  # fmt: skip
        return low
    return resumed


def partition_offsets(
    config: dict[str, Any],
    parts: list[str],
    admin: AdminClient | None = None,
    timeout_s: float = OFFSETS_TIMEOUT_S,
) -> dict[str, tuple[int, int]]:
    """(first kept offset, end offset) of each of Bytewax's partitions (`<idx>-<topic>`),
    asked in two requests for all, by `admin` if given (connected already); a partition
    the broker does not answer for in `timeout_s` is left out."""
    tps = []
    for part in parts:
        idx, topic = part.split("-", 1)
        tps.append(TopicPartition(topic, int(idx)))
    if admin is None:
        client = {
            k: v
            for k, v in config.items()
            if k in ("bootstrap.servers", "logger") or k.startswith(("security.", "sasl.", "ssl."))
        }  # not the consumers' settings, which an admin client logs a warning for each of
        admin = AdminClient(client)  # kept until the answers are in: they need its thread
    asked = [
        admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout_s)
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest())
    ]
    concurrent.futures.wait([f for a in asked for f in a.values()], timeout=timeout_s)
    out: dict[str, tuple[int, int]] = {}
    for tp in tps:
        low, high = (_answer(a.get(tp)) for a in asked)
        if low is not None and high is not None and 0 <= low <= high:
            out[f"{tp.partition}-{tp.topic}"] = (low, high)
    return out


def _list_parts(metadata: Any, topics: list[str]) -> Iterator[str]:
    """Bytewax's `_list_parts` (the same names, order and error) from an answer in hand."""
    for topic in topics:
        topic_metadata = metadata.topics[topic]
        if topic_metadata.error is not None:
            raise RuntimeError(
                f"error listing partitions for Kafka topic `{topic!r}`: "
                f"{topic_metadata.error.str()}"
            )
        for i in topic_metadata.partitions:
            yield f"{i}-{topic}"


def _answer(future: Any) -> int | None:
    if future is None or not future.done() or future.exception() is not None:
        return None
    return int(future.result().offset)


def partition_name(topic: str, idx: int | str) -> str:
    """An input partition's name in the flow (an event's `part`, the view's keys): one
    interned string per partition, so a run of its records is told apart by identity."""
    return sys.intern(f"{topic}#{idx}")


def _event_part(for_part: str) -> str:
    """Bytewax's name of a Kafka partition (`<idx>-<topic>`) as the flow names it."""
    idx, topic = for_part.split("-", 1)
    return partition_name(topic, idx)


# librdkafka error codes that mean the input topic itself is gone
_GONE = {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"}


def from_kafka(prefix: str, msg: Any) -> RawMessage:
    """A KafkaSourceMessage (or KafkaError) as a RawMessage of its input stream."""
    error = None
    if isinstance(msg, KafkaError):
        if msg.err.name() in _GONE:
            raise InputTopicGone(
                f"input topic {msg.msg.topic!r} partition {msg.msg.partition} is gone "
                f"({msg.err.str()}): recreate it with `python -m dataflows.topics` and restart "
                "(with recovery the flow resumes from its last snapshot)"
            )
        error, msg = f"kafka error: {msg.err.str()}", msg.msg
    if READINESS is not None:
        READINESS.saw(msg.topic, msg.partition, msg.offset)
    topic = msg.topic or ""
    return RawMessage(
        stream_of(prefix, topic), msg.value or b"", topic, msg.partition, msg.offset, error
    )


def read_run(run: KafkaRun) -> KafkaRun:
    """A run of messages the flow read (for `/ready`), as `from_kafka` says of one."""
    if READINESS is not None:
        READINESS.saw(run.topic, run.partition, run.offsets[-1])
    return run


def stream_of(prefix: str, topic: str) -> str:
    """The input stream a topic carries (`<prefix>.<stream>`)."""
    return topic[len(prefix) + 1 :] if topic.startswith(prefix + ".") else topic


def to_kafka(prefix: str, item: tuple[str, dict[str, Any]]) -> KafkaSinkMessage | None:
    """(stream, record) as an Avro-encoded KafkaSinkMessage keyed by symbol (None: no topic)."""
    stream, record = item
    schema = STREAM_SCHEMAS.get(stream)
    if schema is None:  # the local run summary has no topic
        return None
    key = record.get("symbol")
    return KafkaSinkMessage(
        key=key.encode() if key else None, value=encode(schema, record), topic=f"{prefix}.{stream}"
    )


def kafka_sink(settings: Settings) -> DeliveredSink:
    """Every output acknowledged by the broker, or the flow stops (dataflows/kafka_sink.py)."""
    assert settings.kafka_bootstrap is not None
    return DeliveredSink(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            **settings.kafka_security.confluent(),
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": settings.kafka_delivery_timeout_ms,
            "message.max.bytes": MAX_MESSAGE_BYTES,
        }
    )
