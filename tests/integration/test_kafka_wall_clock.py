"""Live operator commands read from a backlog apply at the bar they belong to.

On the wall clock (the default with Kafka) a command goes from the context join straight to
the strategy step, which applies it between bars as it arrives. Read from a backlog (a
restart with recovery, a flow that was down, this replay), records come in batches of up
to 20,000 a partition, and the market step passes a command on before it closes the bars
the same batch's partition marks let it close: a command arrived hours of bars ahead of
the strategy and was applied there (on the broker: a shadow_on 95 bars early, a halt and
its resume both before any bar between them, so the halt never happened; a restart
republished decisions unlike the copies published before the crash). Now the strategy
keeps such a command for the first bar of its symbol closing at or after its time, the
bar a replay applies it at, so the wall-clock run decides exactly as the file run."""

from __future__ import annotations

import uuid

import pytest
from bytewax.testing import run_main
from kafka import KafkaProducer

from dataflows.ensemble import build_flow
from dataflows.io import RawMessage
from dataflows.kafka_security import kafka_python_config
from dataflows.settings import Settings
from dataflows.topics import provision
from marketdata.generator import generate
from marketdata.replay import encoded
from operators.telemetry import record_key
from schemas import codec
from tests.conftest import run_records, small_settings
from tests.integration.kafka_io import flow_env, on_the_wire, read_topic
from tests.integration.test_kafka_flow import _available_ms, _context_records

pytestmark = pytest.mark.slow

STREAMS = ("orders", "executions", "rejections", "signals", "repro")


def _by_key(stream: str, records: list[dict]) -> dict:
    """Records by identity, without the wall-clock stamp and the Kafka coordinates."""
    out = {}
    for r in records:
        rec = {k: v for k, v in r.items() if not k.startswith("_") and k != "ts_init_ms"}
        out[record_key(stream, rec)] = rec
    return out


def test_commands_read_from_a_backlog_on_the_wall_clock_apply_at_their_bars(
    kafka_bootstrap, tmp_path
):
    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    # the file run reads with the same prefix: the commands are signed for its control topic
    settings = small_settings(tmp_path / "files", ENSEMBLE_DAYS="6", ENSEMBLE_TOPIC_PREFIX=prefix)
    records = list(generate(settings.generator))
    # signed halt/resume (BTC-PERP) and shadow on/off (ETH-PERP), overlays and cohorts
    context = _context_records(records, topic=f"{prefix}.control")
    records = sorted([*records, *context], key=_available_ms)
    producer = KafkaProducer(
        **kafka_python_config(kafka_bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    )
    for stream, key, value, _ in encoded(records, "ensemble_1_1"):
        producer.send(f"{prefix}.{stream}", key=key, value=value)
    producer.flush()
    producer.close()
    env = {**flow_env(kafka_bootstrap, prefix, days="6"), "ENSEMBLE_CLOCK": "wall"}
    run_main(build_flow(Settings.from_env(env)))
    file_run = run_records(settings, [RawMessage(s, r) for s, r in records])

    controls = [r for r in file_run["repro"] if r["event"] == "control"]
    assert len(controls) == 4, "every command is applied in the file run"
    for stream in STREAMS:
        got = _by_key(stream, read_topic(kafka_bootstrap, f"{prefix}.{stream}",
                                         codec.STREAM_SCHEMAS[stream]))  # fmt: skip
        want = _by_key(stream, on_the_wire(stream, file_run[stream]))
        assert want, f"nothing on {stream}"
        differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        assert not differ, f"{stream}: {len(differ)} records differ from the file run, {differ[:3]}"
