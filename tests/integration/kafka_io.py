"""Test helpers that read topics back (confluent-kafka consumer, assigned partitions)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from dataflows.kafka_security import confluent_config
from schemas import codec
from tests.conftest import OPERATOR_KEYS_JSON


def principal_env(user: str) -> dict[str, str]:
    """The client settings of one component's principal on the test broker (the admin's,
    exported by deploy/kafka/with-broker.sh, name the directory of every user's password);
    on a plain-text broker, none."""
    admin_pw = os.environ.get("ENSEMBLE_KAFKA_SASL_PASSWORD_FILE")
    if os.environ.get("ENSEMBLE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") == "PLAINTEXT":
        return {"ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    assert admin_pw, "the secured test broker exports ENSEMBLE_KAFKA_SASL_PASSWORD_FILE"
    return {
        "ENSEMBLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ENSEMBLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "ENSEMBLE_KAFKA_SASL_USERNAME": user,
        "ENSEMBLE_KAFKA_SASL_PASSWORD_FILE": str(Path(admin_pw).parent / f"{user}.password"),
        "ENSEMBLE_KAFKA_SSL_CA": os.environ.get("ENSEMBLE_KAFKA_SSL_CA", ""),
    }


def on_the_wire(stream: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A file run's records as a Kafka run's consumer reads them: every Avro field is
    present on the wire, so an optional field a record leaves out decodes as null."""
    schema = codec.STREAM_SCHEMAS[stream]
    return [codec.decode(schema, codec.encode(schema, r)) for r in records]


def read_topic(bootstrap: str, topic: str, schema: str | None) -> list[dict[str, Any]]:
    """Every message of `topic`, decoded (or raw under "value"), with its coordinates."""
    return read_topics(bootstrap, {topic: schema})[topic]


def read_topics(bootstrap: str, schemas: dict[str, str | None]) -> dict[str, list[dict[str, Any]]]:
    """Every message of each topic, decoded by its schema (or raw under "value"), with its
    coordinates; one consumer for them all."""
    md = AdminClient(confluent_config(bootstrap)).list_topics(timeout=10)
    parts = [TopicPartition(t, p, 0) for t in schemas for p in sorted(md.topics[t].partitions)]
    consumer = Consumer(
        confluent_config(
            bootstrap,
            **{"group.id": "ensemble-tests", "enable.partition.eof": True},
            **{"enable.auto.commit": False},
        )
    )
    consumer.assign(parts)
    out: dict[str, list[dict[str, Any]]] = {topic: [] for topic in schemas}
    done: set[tuple[str, int]] = set()
    try:
        while len(done) < len(parts):
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    done.add((m.topic(), m.partition()))
                    continue
                schema = schemas[m.topic()]
                rec = codec.decode(schema, m.value()) if schema else {"value": m.value()}
                out[m.topic()].append(
                    {**rec, "_key": m.key(), "_partition": m.partition(), "_offset": m.offset()}
                )
    finally:
        consumer.close()
    return out


def flow_env(
    bootstrap: str, prefix: str, days: str = "2", overrides: str | None = None
) -> dict[str, str]:
    """Settings for the flow on `prefix`'s topics, ending at their end, stamped by event time
    (so its records equal a file run's), on the generator seed the tests publish; as the
    flow's own principal, so its ACLs (dataflows/topics.py) are exercised."""
    return {
        **principal_env("flow"),
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_DAYS": days,
        "ENSEMBLE_SEED": "11",
        "ENSEMBLE_OVERRIDES": overrides or json.dumps({"warmup_bars": 150}),
        "ENSEMBLE_OPERATOR_KEYS_JSON": OPERATOR_KEYS_JSON,
    }
