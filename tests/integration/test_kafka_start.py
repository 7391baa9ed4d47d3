"""Where the flow starts reading an input partition, on the real broker.

A partition starts at its first kept offset, asked of the broker once for every partition
(dataflows/io.py `first_offsets`), not at the logical start, which cost each consumer half
a second; a resumed partition whose snapshot offset retention has since deleted reads
from the first record still kept, not from the end.
"""

from __future__ import annotations

import time
from typing import Any

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
    kafka_bootstrap: str, prefix: str
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
    first = io.first_offsets(source.config, parts)  # as the flow's principal
    assert first[name] == 4 and first[f"1-{topic}"] == 0

    fresh = source.build_part("input", name, None)
    assert fresh.inner._offset == 4  # an offset, not the logical start
    stale = source.build_part("input", name, 1)  # a snapshot from before the deletion
    try:
        assert _offsets_read(fresh) == list(range(4, 10))
        assert _offsets_read(stale) == list(range(4, 10))  # not nothing (librdkafka: "latest")
    finally:
        fresh.close()
        stale.close()
