"""Test helpers that read topics back (confluent-kafka consumer, assigned partitions)."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas import codec


def read_topic(bootstrap: str, topic: str, schema: str | None) -> list[dict[str, Any]]:
    """Every message of `topic`, decoded (or raw under "value"), with its coordinates."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in sorted(md.topics[topic].partitions)]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ensemble-tests",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign(parts)
    out: list[dict[str, Any]] = []
    done: set[int] = set()
    try:
        while len(done) < len(parts):
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    done.add(m.partition())
                    continue
                rec = codec.decode(schema, m.value()) if schema else {"value": m.value()}
                out.append(
                    {**rec, "_key": m.key(), "_partition": m.partition(), "_offset": m.offset()}
                )
    finally:
        consumer.close()
    return out


def flow_env(
    bootstrap: str, prefix: str, days: str = "2", overrides: str | None = None
) -> dict[str, str]:
    """Settings for the flow on `prefix`'s topics, ending at their end, stamped by event time
    (so its records equal a file run's), on the generator seed the tests publish."""
    return {
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_DAYS": days,
        "ENSEMBLE_SEED": "11",
        "ENSEMBLE_OVERRIDES": overrides or json.dumps({"warmup_bars": 150}),
    }
