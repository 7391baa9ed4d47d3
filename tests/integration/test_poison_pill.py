"""A 1,000,000-byte input message (the broker accepts it) is a bounded dead letter: the flow
goes on, and a restart on the same recovery directory runs cleanly."""

from __future__ import annotations

import hashlib

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from confluent_kafka import Producer

from dataflows.ensemble import build_flow
from dataflows.kafka_security import confluent_config
from dataflows.recovery import prepare
from dataflows.settings import Settings
from dataflows.topics import MAX_MESSAGE_BYTES, provision
from marketdata.generator import generate
from operators.telemetry import MAX_DEAD_LETTER_PAYLOAD_BYTES
from schemas import codec
from tests.conftest import small_settings
from tests.integration.kafka_io import flow_env, read_topic
from tests.integration.test_kafka_restart import _publish

pytestmark = pytest.mark.slow

PILL_BYTES = 1_000_000


def test_a_one_megabyte_message_becomes_a_bounded_dead_letter_and_restarts_are_clean(
    kafka_bootstrap, prefix, tmp_path
):
    settings = small_settings(tmp_path / "files")
    provision(kafka_bootstrap, prefix)
    records = [(s, r) for s, r in generate(settings.generator) if s != "funding"]
    half = len(records) // 2
    _publish(kafka_bootstrap, prefix, records[:half])
    pill = b"\x07" + b"A" * (PILL_BYTES - 1)  # undecodable Avro, as big as the broker allows
    p = Producer(confluent_config(kafka_bootstrap, **{"message.max.bytes": MAX_MESSAGE_BYTES}))
    p.produce(f"{prefix}.trades", value=pill, key=b"BTC-PERP")
    assert p.flush(30) == 0
    _publish(kafka_bootstrap, prefix, records[half:])

    rec = tmp_path / "recovery"
    prepare(rec, 1)
    env = flow_env(kafka_bootstrap, prefix, days="2")
    for _run in range(2):  # the restart reads the pill again (or resumes past it): no crash
        run_main(build_flow(Settings.from_env(env)), recovery_config=RecoveryConfig(str(rec)))

    dead = read_topic(
        kafka_bootstrap, f"{prefix}.dead_letters", codec.STREAM_SCHEMAS["dead_letters"]
    )
    pills = [d for d in dead if d["payload_bytes"] == PILL_BYTES]
    assert pills, "the pill is dead-lettered"
    for d in pills:
        assert d["payload_truncated"] and len(d["payload"]) == MAX_DEAD_LETTER_PAYLOAD_BYTES
        assert d["payload_sha256"] == hashlib.sha256(pill).hexdigest()
        assert d["payload"] == pill[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
        assert d["source_offset"] is not None and "undecodable" in d["reason"]
    bars = read_topic(kafka_bootstrap, f"{prefix}.bars", codec.STREAM_SCHEMAS["bars"])
    assert max(b["ts_event_ms"] for b in bars) >= records[-1][1]["ts_event_ms"] - 3_600_000
