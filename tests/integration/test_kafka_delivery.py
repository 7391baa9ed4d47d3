"""No silent output loss, and a start that fails clearly (dataflows/kafka_sink.py).

The outage test runs a broker of its own (deploy/kafka/broker.sh on two free ports and a
temporary state directory), so stopping it never disturbs the other tests' broker."""

from __future__ import annotations

import contextlib
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


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_ready_reflects_the_broker_and_a_deleted_input_topic_stops_the_flow(
    kafka_bootstrap, prefix, tmp_path
):
    from confluent_kafka.admin import AdminClient

    from dataflows.kafka_security import confluent_config
    from marketdata.generator import generate
    from tests.conftest import small_settings
    from tests.integration.test_kafka_restart import _publish

    provision(kafka_bootstrap, prefix)
    settings = small_settings(tmp_path / "files")
    _publish(kafka_bootstrap, prefix, list(generate(settings.generator))[:2000])
    port = _free_port()
    env = {
        **os.environ,
        **flow_env(kafka_bootstrap, prefix),
        "ENSEMBLE_KAFKA_TAIL": "1",  # a live flow: keeps waiting for input
        "ENSEMBLE_READY_PORT": str(port),
        "ENSEMBLE_READY_STALL_S": "5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        status = (0, "")
        while time.monotonic() < deadline and status[0] != 200:
            assert proc.poll() is None, proc.stderr.read()
            with contextlib.suppress(OSError):  # not listening yet
                status = _get(f"http://127.0.0.1:{port}/ready")
            time.sleep(0.5)
        assert status[0] == 200 and status[1].startswith("ok"), status

        admin = AdminClient(confluent_config(kafka_bootstrap))
        admin.delete_topics([f"{prefix}.trades"])[f"{prefix}.trades"].result(30)
        out = proc.communicate(timeout=120)[1]
        assert proc.returncode != 0
        assert f"input topic '{prefix}.trades'" in out and "is gone" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ready_is_false_with_the_reason_while_the_broker_is_away():
    from dataflows.readiness import Readiness

    r = Readiness({"bootstrap.servers": f"127.0.0.1:{_free_port()}", "group.id": "x",
                   "log_level": 0}, ["t.trades"])  # fmt: skip
    ready, reason = r.check()
    assert not ready and reason.startswith("broker unreachable")


@pytest.mark.slow
def test_a_flow_whose_broker_is_away_past_the_delivery_timeout_stops_and_loses_nothing(
    own_broker, prefix, tmp_path, monkeypatch
):
    """The whole flow with recovery: the broker freezes (SIGSTOP: it holds every connection
    and answers nothing) for longer than the 3 s delivery timeout while the flow publishes;
    the flow stops with DeliveryFailed instead of dropping output; after the broker is back,
    a restart on the same recovery directory publishes exactly the uninterrupted run's
    records (after deduplication)."""
    import json
    import signal

    from dataflows.io import RawMessage
    from dataflows.recovery import prepare
    from marketdata.generator import generate
    from operators.telemetry import record_key
    from schemas import codec
    from tests.conftest import OPERATOR_KEYS_JSON, run_records, small_settings
    from tests.integration.test_kafka_restart import _count, _publish

    bootstrap, broker = own_broker
    for k in [k for k in os.environ if k.startswith("ENSEMBLE_KAFKA_S")]:
        monkeypatch.delenv(k)  # this broker is the plain-text one
    settings = small_settings(tmp_path / "files", ENSEMBLE_DAYS="6")
    records = [(s, r) for s, r in generate(settings.generator) if s != "funding"]
    provision(bootstrap, prefix)
    _publish(bootstrap, prefix, records)
    uninterrupted = run_records(settings, [RawMessage(s, r) for s, r in records])

    rec = tmp_path / "recovery"
    prepare(rec, 1)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")},
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_DAYS": "6",
        "ENSEMBLE_SEED": "11",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
        "ENSEMBLE_OPERATOR_KEYS_JSON": OPERATOR_KEYS_JSON,
        "ENSEMBLE_KAFKA_DELIVERY_TIMEOUT_MS": "3000",
    }
    command = [
        sys.executable, "-m", "bytewax.run", "dataflows.ensemble",
        "-r", str(rec), "-s", "1", "-b", "0",
    ]  # fmt: skip
    want = len(uninterrupted["signals"])
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())  # own_broker's state dir
    try:
        deadline = time.monotonic() + 180
        while _count(bootstrap, prefix, "signals") <= want // 3:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the flow never got a third of the way"
            time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)  # the outage begins
        try:
            err = proc.communicate(timeout=120)[1]
        finally:
            os.kill(pid, signal.SIGCONT)  # the broker is back
        assert proc.returncode != 0, "the flow finished although its output could not be delivered"
        assert "DeliveryFailed" in err and "not delivered" in err, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for stream in ("bars", "orders", "executions", "rejections", "signals", "health", "costs"):
        published = read_topic(bootstrap, f"{prefix}.{stream}", codec.STREAM_SCHEMAS[stream])
        got = {}
        for r in published:
            clean = {k: v for k, v in r.items() if not k.startswith("_")}
            got.setdefault(record_key(stream, clean), clean)
        schema = codec.STREAM_SCHEMAS[stream]
        expected = {
            record_key(stream, r): codec.decode(schema, codec.encode(schema, r))
            for r in uninterrupted[stream]
        }
        assert got == expected, f"{stream}: {len(got)} unique published, {len(expected)} expected"
