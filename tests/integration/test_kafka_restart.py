"""kill -9 in the middle of a Kafka run, restart on the same recovery directory: after
deduplication by record key (decision id for decisions) the topics hold exactly what an
uninterrupted run decides.

Offsets: the flow does not commit consumer-group offsets; Bytewax stores each input
partition's next offset in its recovery snapshot, together with the state, so state and
position in the input can never disagree. Output is at-least-once: what was published
after the last snapshot is published again after the restart, byte for byte the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dataflows.io import RawMessage
from dataflows.kafka_security import confluent_config
from dataflows.recovery import prepare
from dataflows.topics import OUTPUT_TOPICS, provision
from marketdata.generator import generate
from marketdata.replay import encoded
from operators.telemetry import record_key
from schemas import codec
from tests.conftest import kill_after_a_snapshot, run_records, small_settings
from tests.integration.kafka_io import principal_env, read_topic

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DAYS = "6"  # long enough to kill mid-stream after the first one-second snapshot


def _publish(bootstrap: str, prefix: str, records: list[tuple[str, dict]]) -> None:
    producer = Producer(confluent_config(bootstrap, **{"enable.idempotence": True}))
    for stream, key, value, _ts in encoded(records, "ensemble_1_1"):
        while True:
            try:
                producer.produce(f"{prefix}.{stream}", value=value, key=key)
                break
            except BufferError:  # the local queue is full (a slow broker): let it drain
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _count(bootstrap: str, prefix: str, stream: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(confluent_config(bootstrap, **{"group.id": "ensemble-tests-count"}))
    try:
        md = c.list_topics(f"{prefix}.{stream}", timeout=10)
        parts = md.topics[f"{prefix}.{stream}"].partitions
        total = 0
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(f"{prefix}.{stream}", p), timeout=10)
            total += hi - lo
        return total
    finally:
        c.close()


def test_sigkill_mid_stream_and_restart_publish_the_uninterrupted_decisions(
    kafka_bootstrap, prefix, tmp_path
):
    settings = small_settings(tmp_path / "files", ENSEMBLE_DAYS=DAYS)
    # Funding stays out: this test is about the restart (test_kafka_flow.py checks the
    # alignment of every topic); trades and candles each keep their order.
    records = [(s, r) for s, r in generate(settings.generator) if s != "funding"]
    provision(kafka_bootstrap, prefix)
    _publish(kafka_bootstrap, prefix, records)
    uninterrupted = run_records(settings, [RawMessage(s, r) for s, r in records])

    rec = tmp_path / "recovery"
    prepare(rec, 1)
    env = {
        **os.environ,
        **principal_env("flow"),
        "ENSEMBLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_DAYS": DAYS,
        "ENSEMBLE_SEED": "11",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    command = [
        sys.executable, "-m", "bytewax.run", "dataflows.ensemble",
        "-r", str(rec), "-s", "1", "-b", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    want_signals = len(uninterrupted["signals"])
    kill_after_a_snapshot(
        proc, rec, lambda: _count(kafka_bootstrap, prefix, "signals") > want_signals // 3
    )
    killed_at = _count(kafka_bootstrap, prefix, "signals")
    assert killed_at < want_signals, "the run had already finished when it was killed"

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr

    published = {
        t.stream: read_topic(kafka_bootstrap, t.name(prefix), codec.STREAM_SCHEMAS[t.stream])
        for t in OUTPUT_TOPICS
    }
    resumes = [r for r in published["repro"] if r["event"] == "resume"]
    assert sorted(r["symbol"] for r in resumes) == ["BTC-PERP", "ETH-PERP"]
    for stream in ("bars", "orders", "executions", "rejections", "signals", "health", "costs"):
        unique: dict[tuple, dict] = {}
        for r in published[stream]:
            clean = {k: v for k, v in r.items() if not k.startswith("_")}
            key = record_key(stream, clean)
            assert unique.setdefault(key, clean) == clean, f"{key} published twice, differently"
        want = {record_key(stream, r): codec.decode(
            codec.STREAM_SCHEMAS[stream], codec.encode(codec.STREAM_SCHEMAS[stream], r)
        ) for r in uninterrupted[stream]}  # fmt: skip
        assert want, f"nothing on {stream}"
        assert unique == want, f"{stream} after the restart differs from the uninterrupted run"
