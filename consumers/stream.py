"""Reading the flow's telemetry off Kafka: Avro decoding, and deduplication by decision id.

The flow publishes at least once (Bytewax's KafkaSink): after a crash it may publish a
decision's order intent, execution, rejection or signals again, with the same
`decision_id`. Every consumer therefore drops a record whose `dedup_key` it has already
seen. Two ways to read:

- `GroupReader`: a kafka-python consumer group that follows the topics (the alerts
  consumer); the caller commits the positions it read up to once their records were
  handled and their alerts delivered (at least once).
- `read_to_end`: every record from the beginning of the topics up to their end at the
  time of the call, then stop (the copilot, which deduplicates them); no group, nothing
  committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dataflows.kafka_security import KafkaSecurity, kafka_python_config
from operators.telemetry import record_key
from schemas import codec

if TYPE_CHECKING:  # kafka-python is imported where a consumer is made: the flow reads none
    from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger("ensemble.consumers")

Record = tuple[str, dict[str, Any]]  # (stream, decoded record)


class TopicsMissing(RuntimeError):
    """The telemetry topics do not exist on the broker (auto-create is off)."""


def topic_name(prefix: str, stream: str) -> str:
    if stream not in codec.STREAM_SCHEMAS:
        raise ValueError(f"unknown stream {stream!r}; known: {sorted(codec.STREAM_SCHEMAS)}")
    return f"{prefix}.{stream}"


# The identity of a record: a republished copy has the same key (defined next to the
# records themselves, so the flow's tests and the consumers agree on it).
dedup_key = record_key


FIRST, DUPLICATE, CONFLICT = "first", "duplicate", "conflict"


# When the flow stamped the record, by the wall clock in a live (Kafka) run: a republished
# copy (a restart that replays, a rerun) is stamped anew, so it says nothing of the trade.
WALL_CLOCK_FIELDS = frozenset({"ts_init_ms"})


def _digest(rec: dict[str, Any]) -> bytes:
    """A fingerprint of what the record says, all of it but the flow's wall-clock stamp:
    equal for copies of one record, different when anything about the trade differs."""
    content = {k: v for k, v in rec.items() if k not in WALL_CLOCK_FIELDS}
    body = json.dumps(content, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(body.encode()).digest()[:16]


class Dedup:
    """Keys seen recently (bounded, oldest forgotten first), with each first copy's digest.

    A republished copy is identical to the first but for its wall-clock stamp
    (`ts_init_ms`) and is dropped. A record with a seen key but different content is a
    conflict: also dropped (the first copy stands), counted,
    and reported by `check` so the caller raises an alert, since the flow never
    republishes a record differently (a forger, or a bug, did)."""

    def __init__(self, max_keys: int = 200_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys!r} must be >= 1")
        self.max_keys = max_keys
        self._seen: OrderedDict[Hashable, bytes] = OrderedDict()
        self.duplicates = 0
        self.conflicts = 0

    def check(self, stream: str, rec: dict[str, Any]) -> str:
        """FIRST (keep it), DUPLICATE (an identical copy) or CONFLICT (same key, new bytes)."""
        key = dedup_key(stream, rec)
        digest = _digest(rec)
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            if seen == digest:
                self.duplicates += 1
                return DUPLICATE
            self.conflicts += 1
            log.warning(
                "conflicting copy of %s record %r dropped; the first copy stands", stream, key
            )
            return CONFLICT
        self._seen[key] = digest
        if len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return FIRST

    def first(self, stream: str, rec: dict[str, Any]) -> bool:
        return self.check(stream, rec) == FIRST


def unique(records: Iterable[Record], dedup: Dedup | None = None) -> Iterator[Record]:
    dedup = dedup or Dedup()
    for stream, rec in records:
        if dedup.first(stream, rec):
            yield stream, rec


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    prefix: str = "ensemble"

    @classmethod
    def from_values(cls, bootstrap: str | None, prefix: str | None) -> KafkaSettings:
        """Validated like the flow's settings; a bad value raises ValueError naming it."""
        if not bootstrap:
            raise ValueError(
                "no Kafka broker: set ENSEMBLE_KAFKA_BOOTSTRAP=host:port (or pass --bootstrap)"
            )
        if not all(
            h.rpartition(":")[2].isdigit() and h.rpartition(":")[0] for h in bootstrap.split(",")
        ):
            raise ValueError(
                f"ENSEMBLE_KAFKA_BOOTSTRAP={bootstrap!r} must be host:port[,host:port]"
            )
        prefix = prefix or "ensemble"
        if not all(c.isalnum() or c in "._-" for c in prefix):
            raise ValueError(f"ENSEMBLE_TOPIC_PREFIX={prefix!r} may use letters, digits, . _ -")
        KafkaSecurity.from_env()  # a bad security setting stops the start, naming it
        return cls(bootstrap, prefix)

    def servers(self) -> list[str]:
        return self.bootstrap.split(",")


class Decoder:
    """Topic -> stream -> decoded record; undecodable messages are logged and counted."""

    def __init__(self, prefix: str, streams: Iterable[str]) -> None:
        self.by_topic = {topic_name(prefix, s): s for s in streams}
        self.undecodable = 0

    def __call__(
        self, topic: str, partition: int, offset: int, value: bytes | None
    ) -> Record | None:
        stream = self.by_topic.get(topic)
        if stream is None:
            return None
        try:
            return stream, codec.decode(codec.STREAM_SCHEMAS[stream], value or b"")
        except codec.SchemaError as e:
            self.undecodable += 1
            log.warning("skipped undecodable message %s[%d]@%d: %s", topic, partition, offset, e)
            return None


def _check_topics(consumer: KafkaConsumer, topics: Iterable[str]) -> None:
    known = consumer.topics()
    missing = sorted(t for t in topics if t not in known)
    if missing:
        raise TopicsMissing(
            f"topics {missing} do not exist on the broker; create them with "
            "`python -m dataflows.topics --bootstrap HOST:PORT --prefix PREFIX`"
        )


def _consumer(kafka: KafkaSettings, client_id: str, **config: Any) -> KafkaConsumer:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(
            **kafka_python_config(
                kafka.servers(), client_id=client_id, allow_auto_create_topics=False, **config
            )
        )
    except KafkaError as e:
        raise ConnectionError(f"cannot reach Kafka at {kafka.bootstrap}: {e}") from None


class GroupReader:
    """A consumer group member following `streams`; `commit` what `positions` returned once
    the records read up to there were handled."""

    def __init__(
        self,
        kafka: KafkaSettings,
        streams: Iterable[str],
        group_id: str,
        start: str = "latest",
        client_id: str = "ensemble-consumer",
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ValueError(f"start={start!r} must be earliest or latest")
        self.decode = Decoder(kafka.prefix, streams)
        self.prefix = kafka.prefix
        self.consumer = _consumer(
            kafka,
            client_id,
            group_id=group_id,
            auto_offset_reset=start,
            enable_auto_commit=False,
        )
        try:
            _check_topics(self.consumer, self.decode.by_topic)
        except Exception:
            self.consumer.close(autocommit=False)
            raise
        self.consumer.subscribe(sorted(self.decode.by_topic))

    def poll(self, timeout_s: float, max_records: int = 500) -> tuple[list[Record], int]:
        """(decoded records, messages polled): undecodable ones count but are not returned."""
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        n = 0
        for tp, msgs in batches.items():
            for m in msgs:
                n += 1
                rec = self.decode(tp.topic, tp.partition, m.offset, m.value)
                if rec is not None:
                    out.append(rec)
        return out, n

    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to read of each assigned partition (those known)."""
        out = {}
        for tp in self.consumer.assignment():
            pos = self.consumer.position(tp, timeout_ms=0)
            if pos is not None:
                out[tp] = pos
        return out

    def commit(self, positions: dict[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        # a partition moved to another member since is that member's to commit
        mine = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in positions.items() if tp in mine}
        if offsets:
            self.consumer.commit(offsets)

    def unread(self, stream: str) -> int:
        """Records of `stream` on the broker not read yet, from the high-water marks of the
        last fetches (no request is sent; a partition not fetched yet counts 0)."""
        topic = topic_name(self.prefix, stream)
        n = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp) if tp.topic == topic else None
            pos = self.consumer.position(tp, timeout_ms=0) if high is not None else None
            if pos is not None:
                n += max(0, high - pos)
        return n

    def unread_health(self) -> int:
        return self.unread("health")

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _partitions(consumer: KafkaConsumer, decode: Decoder) -> list[TopicPartition]:
    from kafka import TopicPartition

    _check_topics(consumer, decode.by_topic)
    return [
        TopicPartition(t, p)
        for t in sorted(decode.by_topic)
        for p in sorted(consumer.partitions_for_topic(t) or ())
    ]


def _read_until(
    consumer: KafkaConsumer,
    decode: Decoder,
    stop: dict[TopicPartition, int],
    poll_timeout_s: float,
    stall_timeout_s: float,
    raise_on_stall: bool = True,
) -> Iterator[Record]:
    """Decoded records of the assigned partitions up to (not including) their `stop` offset.
    After `stall_timeout_s` without a message: TimeoutError, or just stop."""
    todo = set(stop)
    stalled = 0.0
    while todo:
        batches = consumer.poll(timeout_ms=int(poll_timeout_s * 1000), max_records=5000)
        if not batches:
            stalled += poll_timeout_s
            if stalled >= stall_timeout_s:
                if not raise_on_stall:
                    return
                raise TimeoutError(
                    f"no progress reading {sorted(tp.topic for tp in todo)} for "
                    f"{stall_timeout_s:.0f} s"
                )
        else:
            stalled = 0.0
        for tp, msgs in batches.items():
            for m in msgs:
                if m.offset < stop[tp]:
                    rec = decode(tp.topic, tp.partition, m.offset, m.value)
                    if rec is not None:
                        yield rec
        for tp in list(todo):
            if consumer.position(tp) >= stop[tp]:
                todo.discard(tp)
                consumer.pause(tp)


def read_before_committed(
    kafka: KafkaSettings,
    streams: Iterable[str],
    group_id: str,
    per_partition: int,
    client_id: str = "ensemble-consumer-warmup",
) -> Iterator[Record]:
    """Up to `per_partition` records just before `group_id`'s committed offsets: what the
    group handled last, to rebuild a restarted member's memory. Nothing is committed;
    a new group (no committed offsets) yields nothing."""
    decode = Decoder(kafka.prefix, streams)
    consumer = _consumer(kafka, client_id, group_id=group_id, enable_auto_commit=False)
    try:
        parts = _partitions(consumer, decode)
        begin = consumer.beginning_offsets(parts)
        stop: dict[TopicPartition, int] = {}
        for tp in parts:
            committed = consumer.committed(tp)
            if committed is not None and committed > begin[tp]:
                stop[tp] = committed
        if not stop or per_partition <= 0:
            return
        consumer.assign(list(stop))
        for tp, end in stop.items():
            consumer.seek(tp, max(begin[tp], end - per_partition))
        yield from _read_until(consumer, decode, stop, 1.0, 30.0, raise_on_stall=False)
    finally:
        consumer.close(autocommit=False)


def read_to_end(
    kafka: KafkaSettings,
    streams: Iterable[str],
    client_id: str = "ensemble-copilot",
    poll_timeout_s: float = 1.0,
    stall_timeout_s: float = 30.0,
) -> Iterator[Record]:
    """Every decodable record of `streams` from the beginning to the current end.

    Partitions are assigned directly (no group, no commits). Republished duplicates are
    left in: the caller deduplicates (and can count them). Raises TimeoutError if no
    progress is made for `stall_timeout_s` before the end offsets are reached.
    """
    decode = Decoder(kafka.prefix, streams)
    consumer = _consumer(kafka, client_id, group_id=None, enable_auto_commit=False)
    try:
        parts = _partitions(consumer, decode)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        begin = consumer.beginning_offsets(parts)
        stop = {tp: end[tp] for tp in parts if end[tp] > begin[tp]}
        yield from _read_until(consumer, decode, stop, poll_timeout_s, stall_timeout_s)
    finally:
        consumer.close(autocommit=False)
