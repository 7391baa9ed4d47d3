"""Where the flow starts reading an input partition, on the real broker.

A partition starts at its first kept offset, asked of the broker once for every partition
(dataflows/io.py `partition_offsets`), not at the logical start, which cost each consumer
half a second; a resumed partition whose snapshot offset is no longer in it (deleted by
retention, or past its end) reads from the first record still kept, with a warning, not
from the end; and an offset deleted after the flow looked reads from there too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from dataflows import io
from dataflows.kafka_security import confluent_config
from dataflows.settings import Settings
from dataflows.topics import provision
from tests.integration.kafka_io import flow_env


def _offsets_read(part: Any) -> list[int]:
    """Every offset the partition gives, to its end."""
    got: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            batch = part.next_batch()
        except StopIteration:
            return got
        got += [o for x in batch if type(x) is io.KafkaRun for o in x.offsets]
        time.sleep(0.01)
    raise AssertionError(f"the partition did not end in 30 s (read {got})")


def test_an_input_partition_starts_at_its_first_kept_record_even_from_a_deleted_offset(
    kafka_bootstrap: str, prefix: str, caplog: Any
):
    provision(kafka_bootstrap, prefix)
    topic = f"{prefix}.trades"
    producer = Producer(confluent_config(kafka_bootstrap))
    for i in range(10):
        producer.produce(topic, value=b"r%d" % i, partition=0)
    assert producer.flush(30) == 0
    admin = AdminClient(confluent_config(kafka_bootstrap))
    deleted = admin.delete_records([TopicPartition(topic, 0, 4)], request_timeout=30)
    for future in deleted.values():
        assert future.result(timeout=30).low_watermark == 4  # offsets 0-3 are gone

    source = io.kafka_source(Settings.from_env(flow_env(kafka_bootstrap, prefix)))
    parts = source.list_parts()
    name = f"0-{topic}"
    assert name in parts
    bounds = io.partition_offsets(source.config, parts)  # as the flow's principal
    assert bounds[name] == (4, 10) and bounds[f"1-{topic}"] == (0, 0)

    with caplog.at_level(logging.WARNING, logger="ensemble.kafka"):
        built: dict[Any, Any] = {
            resumed: source.build_part("input", name, resumed) for resumed in (None, 1, 6, 12)
        }
    # a consumer given an offset retention deleted (as when that happens after the look):
    # librdkafka reads from the first kept record (auto.offset.reset), not from the end,
    # its default, which skipped every record between
    stale = KafkaSource.build_part(source, "input", name, 1)
    built["stale"] = io._WatchedPartition(stale, topic, "trades", 0, False, source.meta)
    try:
        offsets = {r: p.inner._offset for r, p in built.items()}
        assert offsets == {None: 4, 1: 4, 6: 6, 12: 4, "stale": 1}
        warned = [r.getMessage() for r in caplog.records if r.name == "ensemble.kafka"]
        assert len(warned) == 2
        assert (
            "offset 1 was deleted by retention" in warned[0] and "3 records never read" in warned[0]
        )
        assert "offset 12 is past the partition's end 10" in warned[1]
        assert _offsets_read(built[None]) == list(range(4, 10))
        assert _offsets_read(built[6]) == list(range(6, 10))
        assert _offsets_read(built["stale"]) == list(range(4, 10))
    finally:
        for part in built.values():
            part.close()
