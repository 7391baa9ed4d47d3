"""The flow's read of a Kafka input partition against Bytewax's own.

`_WatchedPartition._read` replaces Bytewax 0.21.1's `_KafkaSourcePartition.next_batch`
(dataflows/io.py): the same consume, the same end, errors and next offset, with the
messages between errors as one KafkaRun. Both read the same scripted batches of real
confluent_kafka Messages here, and what they give must be the same messages.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from bytewax.connectors.kafka import KafkaError, KafkaSourceMessage
from bytewax.connectors.kafka import _KafkaSourcePartition as BytewaxPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message

from dataflows import io

TOPIC, IDX = "p.trades", 3
_EOF = ConfluentKafkaError(ConfluentKafkaError._PARTITION_EOF)
CODES = [
    ConfluentKafkaError._PARTITION_EOF,
    ConfluentKafkaError._MSG_TIMED_OUT,
    ConfluentKafkaError._BAD_MSG,
    ConfluentKafkaError.OFFSET_OUT_OF_RANGE,
]


class _Consumer:
    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches
        self.asked: list[tuple[int, float]] = []

    def consume(self, n: int, timeout: float) -> list[Message]:
        self.asked.append((n, timeout))
        return self.batches.pop(0) if self.batches else []


class _Meta:
    """The source's metadata client, which `_read` does not ask."""

    def open(self) -> None:
        return None


def _script(rng: random.Random) -> list[list[Message]]:
    """Batches as librdkafka gives them: values (some None or empty), errors, an end."""
    offset, batches = rng.randrange(0, 10**6), []
    for _ in range(rng.randrange(1, 6)):
        batch = []
        for _ in range(rng.choice([0, 1, 2, 5, 40])):
            roll = rng.random()
            if roll < 0.08:
                code = rng.choice(CODES)
                err = ConfluentKafkaError(code)
                batch.append(Message(topic=TOPIC, partition=IDX, offset=offset, error=err))
            else:
                value = None if roll < 0.12 else b"" if roll < 0.15 else rng.randbytes(5)
                batch.append(Message(topic=TOPIC, partition=IDX, offset=offset, value=value))
            offset += rng.choice([1, 1, 1, 2])  # compacted topics and markers skip offsets
        batches.append(batch)
    return batches


def _bytewax(
    batches: list[list[Message]], raise_on_errors: bool, batch_size: int = 1000
) -> BytewaxPartition:
    part = object.__new__(BytewaxPartition)  # its constructor would connect a consumer
    part._consumer, part._topic, part._part_idx = _Consumer(batches), TOPIC, IDX
    part._batch_size, part._eof, part._offset = batch_size, False, 7
    part._raise_on_errors = raise_on_errors
    return part


def _as_runs(items: list[Any]) -> list[Any]:
    """Bytewax's batch as the flow's: consecutive messages as one KafkaRun (a value of
    None read as b""), errors as they are."""
    out: list[Any] = []
    for x in items:
        if isinstance(x, KafkaSourceMessage):
            if not (out and type(out[-1]) is io.KafkaRun):
                out.append(io.KafkaRun("trades", TOPIC, IDX, [], []))
            out[-1].values.append(x.value or b"")
            out[-1].offsets.append(x.offset)
        else:
            out.append(x)
    return out


def _read_all(next_batch: Any, part: Any) -> list[Any]:
    got = []
    for _ in range(10):
        try:
            got.append(next_batch())
        except StopIteration:
            got.append("end")
            break
        except RuntimeError as exc:
            got.append(("raised", str(exc)))
            break
        got.append(("offset", part._offset, part._eof))
    return got


def _same(x: Any) -> Any:
    """A KafkaError compared by what it carries (confluent's errors compare by code)."""
    if isinstance(x, list):
        return [_same(y) for y in x]
    if isinstance(x, KafkaError):
        m = x.msg
        return ("error", x.err.code(), m.value, m.offset, m.partition, m.topic, m.key)
    return x


@pytest.mark.parametrize("raise_on_errors", [False, True])
def test_the_flows_read_gives_what_bytewaxs_next_batch_gives(raise_on_errors: bool):
    rng = random.Random(16)
    for _ in range(500):
        script = _script(rng)
        theirs = _bytewax([list(b) for b in script], raise_on_errors)
        ours_inner = _bytewax([list(b) for b in script], raise_on_errors)
        ours = io._WatchedPartition(ours_inner, TOPIC, "trades", IDX, False, _Meta())
        want = [
            _as_runs(x) if isinstance(x, list) else x for x in _read_all(theirs.next_batch, theirs)
        ]
        got = _read_all(ours._read, ours_inner)
        assert _same(got) == _same(want), script
        assert ours_inner._consumer.asked == theirs._consumer.asked  # the same reads


def test_an_error_of_no_message_does_not_undo_the_offset_of_the_messages_before_it():
    """librdkafka gives a consumer error that belongs to no message the offset -1001,
    which `Message.offset()` returns as None; Bytewax's next_batch then set no next
    offset for the whole batch, so the partition looked behind (not caught up) and its
    snapshot was one batch short. The flow's read keeps the last real offset."""
    err = ConfluentKafkaError(ConfluentKafkaError._MSG_TIMED_OUT)
    inner = _bytewax([[Message(topic=TOPIC, partition=IDX, offset=9, value=b"x")]], False)
    inner._consumer.batches[0].append(Message(topic=TOPIC, partition=IDX, error=err))
    part = io._WatchedPartition(inner, TOPIC, "trades", IDX, False, _Meta())
    got = part._read()
    assert [type(x).__name__ for x in got] == ["KafkaRun", "KafkaError"]
    assert inner._offset == 10


def _source(monkeypatch: Any, started: tuple[Any, Any] = (None, None), tail: str = "1") -> Any:
    """The flow's Kafka source as `kafka_source` makes it (no broker asked): `started` is
    what the start-up check gives (its client and the broker's answer)."""
    from dataflows.settings import Settings

    monkeypatch.setattr(io, "wait_for_kafka", lambda *a: started)
    env = {
        "ENSEMBLE_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "ENSEMBLE_KAFKA_TAIL": tail,
    }
    return io.kafka_source(Settings.from_env(env))


def test_the_source_reads_up_to_batch_messages_a_time_and_waits_at_most_a_millisecond(
    monkeypatch,
):
    source = _source(monkeypatch)
    assert source._batch_size == io.BATCH_MESSAGES > 1000
    assert source._add_config["auto.offset.reset"] == "earliest"
    inner = _bytewax([[Message(topic=TOPIC, partition=IDX, offset=9, value=b"x")]], False, 7)
    part = io._WatchedPartition(inner, TOPIC, "trades", IDX, False, _Meta())
    assert part._read() == [io.KafkaRun("trades", TOPIC, IDX, [b"x"], [9])]
    assert inner._consumer.asked == [(7, 0.001)] and inner._offset == 10


def test_the_offsets_of_every_partition_are_asked_once_and_one_unanswered_starts_as_bytewax(
    monkeypatch,
):
    from bytewax.connectors.kafka import KafkaSource
    from confluent_kafka import OFFSET_BEGINNING

    source = _source(monkeypatch)
    listed = ["0-p.trades", "1-p.trades", "0-p.funding"]
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: listed)
    asked = []

    def offsets(config: Any, parts: list[str], admin: Any) -> dict[str, tuple[int, int]]:
        asked.append(list(parts))
        return {"0-p.trades": (4, 10), "1-p.trades": (0, 3)}  # the funding one: no answer

    started = {}

    def build(self: Any, step_id: str, for_part: str, resume_state: Any) -> Any:
        started[for_part] = OFFSET_BEGINNING if resume_state is None else resume_state
        return object()

    monkeypatch.setattr(io, "partition_offsets", offsets)
    monkeypatch.setattr(KafkaSource, "build_part", build)
    monkeypatch.setattr(io, "_WatchedPartition", lambda *a: None)
    source.list_parts()
    for part, resumed in (("0-p.trades", None), ("1-p.trades", 2), ("0-p.funding", None)):
        source.build_part("input", part, resumed)
    assert asked == [listed]  # one question for them all
    assert started == {"0-p.trades": 4, "1-p.trades": 2, "0-p.funding": OFFSET_BEGINNING}
    source.build_part("input", "2-p.trades", None)  # not listed: asked on its own
    assert asked[1:] == [["2-p.trades"]] and started["2-p.trades"] == OFFSET_BEGINNING


@pytest.mark.parametrize(
    "resumed, start, warning",
    [
        (None, 4, None),  # new: its first kept offset
        (-2, 4, None),  # a snapshot from before its first read: the logical start
        (4, 4, None),
        (7, 7, None),
        (10, 10, None),  # read to its end: what comes next
        (1, 4, "offset 1 was deleted by retention while the flow was stopped: 3 records"),
        (11, 4, "offset 11 is past the partition's end 10 (the topic was recreated"),
    ],
)
def test_a_partition_starts_where_its_snapshot_says_while_that_offset_is_in_it(
    resumed: int | None, start: int, warning: str | None, caplog: Any
):
    import logging

    with caplog.at_level(logging.WARNING, logger="ensemble.kafka"):
        assert io.start_offset("0-p.trades", resumed, 4, 10) == start
    said = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert said == []
    else:
        assert len(said) == 1 and warning in said[0]


def test_a_partition_resumed_below_its_first_kept_offset_is_caught_up_at_the_end():
    """librdkafka reads such a partition from its first kept offset (auto.offset.reset):
    with nothing kept after it, there is nothing to wait for."""

    class Kept(_Meta):
        def watermarks(self, tp: Any) -> tuple[int, int]:
            return 10, 10  # every record deleted: first kept and end both 10

    inner = _bytewax([], False)
    inner._offset = 2  # the snapshot's offset, below the first kept
    part = io._WatchedPartition(inner, TOPIC, "trades", IDX, False, Kept())
    assert part._caught_up(False)
    inner._offset = 12  # one past the end is not behind either
    assert part._caught_up(False)


def test_a_partition_the_broker_gives_no_offsets_for_is_left_out_and_named(monkeypatch, caplog):
    import concurrent.futures
    import logging

    from bytewax.connectors.kafka import KafkaSource
    from confluent_kafka import KafkaException

    class Answer:
        def __init__(self, offset: int) -> None:
            self.offset = offset

    class Admin:
        """AdminClient.list_offsets: the first kept offset of p.trades 0 and 1; their
        ends, but the request for partition 1's end fails."""

        def __init__(self, config: dict[str, Any]) -> None:
            assert set(config) <= {"bootstrap.servers", "logger", "security.protocol"}

        def list_offsets(self, specs: dict[Any, Any], request_timeout: float) -> dict[Any, Any]:
            out = {}
            for tp, spec in specs.items():
                f: concurrent.futures.Future = concurrent.futures.Future()
                latest = type(spec) is type(io.OffsetSpec.latest())
                if latest and tp.partition == 1:
                    f.set_exception(KafkaException("no answer"))
                else:
                    f.set_result(Answer((10 if latest else 4) + tp.partition))
                out[tp] = f
            return out

    monkeypatch.setattr(io, "AdminClient", Admin)
    got = io.partition_offsets({"bootstrap.servers": "h:1"}, ["0-p.trades", "1-p.trades"])
    assert got == {"0-p.trades": (4, 10)}

    source = _source(monkeypatch)
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: ["0-p.trades", "1-p.trades"])
    monkeypatch.setattr(KafkaSource, "build_part", lambda self, s, p, r: r)
    monkeypatch.setattr(io, "_WatchedPartition", lambda inner, *a: inner)
    source.list_parts()
    with caplog.at_level(logging.WARNING, logger="ensemble.kafka"):
        assert source.build_part("input", "0-p.trades", None) == 4
        assert source.build_part("input", "1-p.trades", 3) == 3  # as Bytewax resumes it
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("input partitions 1-p.trades: the broker")


class _Topic:
    def __init__(self, partitions: list[int], error: Any = None) -> None:
        self.partitions = {i: object() for i in partitions}
        self.error = error


class _Answer:
    """ClusterMetadata as `AdminClient.list_topics` gives it: the topics by name."""

    def __init__(self, topics: dict[str, _Topic]) -> None:
        self.topics = topics


def test_the_partitions_are_listed_from_the_start_up_answer_as_bytewax_lists_them(monkeypatch):
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.connectors.kafka import _list_parts as bytewax_list_parts

    topics = [t.name("ensemble") for t in io.INPUT_TOPICS]
    answer = _Answer({t: _Topic([2, 0, 1] if "trades" in t else [0]) for t in topics})
    answer.topics["other"] = _Topic([0])

    class Client:
        def list_topics(self, topic: str) -> _Answer:
            return _Answer({topic: answer.topics[topic]})

    want = list(bytewax_list_parts(Client(), topics))
    assert list(io._list_parts(answer, topics)) == want
    assert "2-ensemble.trades" in want and not any("other" in p for p in want)

    asked = []
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: asked.append(1) or ["0-x"])
    source = _source(monkeypatch, (None, answer))
    assert source.list_parts() == want and not asked  # no second connection
    source.metadata_s -= io.OFFSETS_FRESH_S + 1  # an answer that old is asked again
    assert source.list_parts() == ["0-x"] and asked

    gone = _Answer({**answer.topics, topics[0]: _Topic([], error=_Error("UNKNOWN_TOPIC"))})
    with pytest.raises(RuntimeError) as ours:
        list(io._list_parts(gone, topics))
    with pytest.raises(RuntimeError) as theirs:
        list(bytewax_list_parts(_Gone(gone), topics))
    assert str(ours.value) == str(theirs.value)


class _Error:
    def __init__(self, name: str) -> None:
        self._name = name

    def str(self) -> str:
        return f"Broker: {self._name}"


class _Gone:
    def __init__(self, answer: _Answer) -> None:
        self.answer = answer

    def list_topics(self, topic: str) -> _Answer:
        return self.answer


def test_the_first_offsets_are_asked_by_the_start_up_client_which_is_then_let_go(monkeypatch):
    import concurrent.futures

    from bytewax.connectors.kafka import KafkaSource

    class Admin:
        def __init__(self) -> None:
            self.asked = 0

        def list_offsets(self, specs: dict[Any, Any], request_timeout: float) -> dict[Any, Any]:
            self.asked += 1
            out = {}
            for tp in specs:
                f: concurrent.futures.Future = concurrent.futures.Future()
                f.set_result(type("Offset", (), {"offset": 5})())
                out[tp] = f
            return out

    def no_new_client(config: Any) -> None:
        raise AssertionError("a second admin client was made")

    admin = Admin()
    source = _source(monkeypatch, (admin, None))
    monkeypatch.setattr(io, "AdminClient", no_new_client)
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: ["0-p.trades"])
    monkeypatch.setattr(KafkaSource, "build_part", lambda self, s, p, r: r)
    monkeypatch.setattr(io, "_WatchedPartition", lambda inner, *a: inner)
    source.list_parts()
    assert source.build_part("input", "0-p.trades", None) == 5
    assert admin.asked == 2 and source.admin is None  # earliest and latest; then let go


@pytest.mark.parametrize("tail", ["0", "1"])
def test_read_to_its_end_a_partition_that_starts_at_its_end_makes_no_consumer(monkeypatch, tail):
    """ENSEMBLE_KAFKA_TAIL=0: a partition with nothing to read from its start offset (empty,
    or a snapshot at its end) is ended at its first read, with the mark a consumer's end
    gives, and no consumer; one with records to read, one the broker gave no offsets for,
    one resumed past a recreated partition's end (read again from its first record), or
    any when tailing, is Bytewax's."""
    from bytewax.connectors.kafka import KafkaSource

    from operators.watermark import InputPartitions, PartitionMark

    source = _source(monkeypatch, tail=tail)
    source.inputs = InputPartitions()
    listed = ["0-p.trades", "1-p.trades", "0-p.funding", "1-p.funding"]
    monkeypatch.setattr(KafkaSource, "list_parts", lambda self: listed)
    bounds = {"0-p.trades": (4, 10), "1-p.trades": (0, 0), "0-p.funding": (3, 7)}  # no 1-
    monkeypatch.setattr(io, "partition_offsets", lambda config, parts, admin: bounds)
    opened = []
    monkeypatch.setattr(io._Metadata, "open", lambda self: opened.append(1))
    consumers = []

    def build(self: Any, step_id: str, for_part: str, resume_state: Any) -> Any:
        consumers.append((for_part, resume_state))
        return _bytewax([], False, 7)

    monkeypatch.setattr(KafkaSource, "build_part", build)
    source.list_parts()
    asked = [
        ("0-p.trades", None),  # records to read
        ("0-p.trades", 6),
        ("0-p.trades", 12),  # past the end of a recreated partition: from its first
        ("1-p.trades", None),  # empty
        ("0-p.funding", 7),  # resumed at its end
        ("1-p.funding", None),  # no offsets from the broker
    ]
    parts = [source.build_part("input", p, resumed) for p, resumed in asked]
    with_consumer = [("0-p.trades", 4), ("0-p.trades", 6), ("0-p.trades", 4)]
    if tail == "1":
        assert consumers == [*with_consumer, ("1-p.trades", 0), ("0-p.funding", 7),
                             ("1-p.funding", None)]  # fmt: skip
        return
    assert consumers == [*with_consumer, ("1-p.funding", None)]
    assert len(opened) == 4  # the metadata client: only partitions with a consumer
    for (_, resumed), part in zip(asked[3:5], parts[3:5], strict=True):
        assert part.inner._consumer is None and part.snapshot() == (resumed or 0)
        (mark,) = part.next_batch()
        ended_by_consumer = io._WatchedPartition(
            _bytewax([[Message(topic=TOPIC, partition=IDX, offset=0, error=_EOF)]], False),
            TOPIC,
            "trades",
            IDX,
            True,
            _Meta(),
        )
        (their_mark,) = ended_by_consumer.next_batch()
        same = ("caught_up", "records", "settled", "ended")
        assert type(mark) is PartitionMark
        assert [getattr(mark, k) for k in same] == [getattr(their_mark, k) for k in same]
        assert mark.ended and mark.caught_up
        with pytest.raises(StopIteration):
            part.next_batch()
        part.close()
