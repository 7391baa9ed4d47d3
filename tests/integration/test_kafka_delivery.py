"""No silent output loss, and a start that fails clearly (dataflows/kafka_sink.py).

The outage test runs a broker of its own (deploy/kafka/broker.sh on two free ports and a
temporary state directory), so stopping it never disturbs the other tests' broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage

from dataflows.kafka_sink import DeliveredSink, DeliveryFailed
from dataflows.topics import provision
from tests.integration.kafka_io import flow_env, read_topic

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / "deploy" / "kafka" / "broker.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_broker(kafka_bootstrap, tmp_path):
    """A plain-text broker that this test may stop and start (its own ports and data)."""
    env = {
        **os.environ,
        "ENSEMBLE_KAFKA_PORT": str(_free_port()),
        "ENSEMBLE_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "ENSEMBLE_KAFKA_STATE": str(tmp_path / "kafka"),
        "ENSEMBLE_KAFKA_SECURITY": "plaintext",
        "ENSEMBLE_KAFKA_KEEP_DATA": "1",
        "ENSEMBLE_KAFKA_PYTHON": sys.executable,
    }

    def broker(cmd: str) -> str:
        done = subprocess.run(
            [str(BROKER), cmd], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    bootstrap = broker("start")
    try:
        yield bootstrap, broker
    finally:
        broker("stop")


def _message(prefix: str, i: int) -> KafkaSinkMessage:
    return KafkaSinkMessage(key=b"BTC-PERP", value=f"m{i}".encode(), topic=f"{prefix}.errors")


def test_an_outage_longer_than_the_delivery_timeout_stops_the_sink_instead_of_losing_output(
    own_broker, prefix, monkeypatch
):
    bootstrap, broker = own_broker
    for k in [k for k in os.environ if k.startswith("ENSEMBLE_KAFKA_S")]:
        monkeypatch.delenv(k)  # this broker is the plain-text one
    provision(bootstrap, prefix)
    config = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "message.timeout.ms": 3_000,  # the test's short delivery timeout
        "log_level": 0,
    }
    part = DeliveredSink(config).build("sink", 0, 1)
    part.write_batch([_message(prefix, 0)])  # acknowledged while the broker is up

    broker("stop")
    t0 = time.monotonic()
    with pytest.raises(DeliveryFailed, match="not delivered"):
        part.write_batch([_message(prefix, 1), _message(prefix, 2)])
    assert time.monotonic() - t0 < 60, "the failure surfaces after the delivery timeout"
    part.close()

    broker("start")  # the restart republishes what the failed batch held
    again = DeliveredSink(config).build("sink", 0, 1)
    again.write_batch([_message(prefix, 1), _message(prefix, 2)])
    again.close()
    got = sorted(r["value"] for r in read_topic(bootstrap, f"{prefix}.errors", None))
    assert got == [b"m0", b"m1", b"m2"]


def _start_flow(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_broker_absent_at_start_stops_the_start_with_a_clear_message(kafka_bootstrap, prefix):
    absent = f"127.0.0.1:{_free_port()}"
    env = {**flow_env(absent, prefix), "ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S": "3"}
    t0 = time.monotonic()
    done = _start_flow(env)
    assert done.returncode != 0
    assert f"Kafka at {absent} did not answer within 3 s" in done.stderr
    assert time.monotonic() - t0 < 60


def test_missing_input_topics_stop_the_start_with_a_clear_message(kafka_bootstrap, prefix):
    env = {**flow_env(kafka_bootstrap, prefix), "ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S": "3"}
    done = _start_flow(env)  # nothing provisioned for this prefix
    assert done.returncode != 0
    assert f"{prefix}.trades" in done.stderr and "do not exist" in done.stderr
