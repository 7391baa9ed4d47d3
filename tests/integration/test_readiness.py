"""`GET /ready` of a Kafka-fed flow (dataflows/readiness.py) after a restart: the records
read before it are not "waiting", so a flow that is caught up stays ready while its input
is quiet (the Kubernetes readiness probe and `kubectl rollout status` rely on it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dataflows.recovery import prepare
from dataflows.topics import provision
from marketdata.generator import generate
from tests.conftest import small_settings
from tests.integration.kafka_io import flow_env
from tests.integration.test_kafka_restart import _publish

ROOT = Path(__file__).resolve().parents[2]
CHECK_S = 5.0  # dataflows/readiness.serve's interval between checks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:  # not listening yet
        return None


def _wait_for(port: int, proc: subprocess.Popen, want: str, deadline_s: float) -> str:
    end, last = time.monotonic() + deadline_s, None
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        last = _ready(port)
        if last is not None and last[0] == 200 and want in last[1]:
            return last[1]
        time.sleep(0.5)
    raise AssertionError(f"/ready never said {want!r}: last {last}")


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def test_a_resumed_flow_that_is_caught_up_stays_ready_while_its_input_is_quiet(
    kafka_bootstrap, prefix, tmp_path
):
    provision(kafka_bootstrap, prefix)
    settings = small_settings(tmp_path / "files")
    _publish(kafka_bootstrap, prefix, list(generate(settings.generator))[:2000])
    rec = tmp_path / "recovery"
    prepare(rec, 1)
    port = _free_port()
    env = {
        **os.environ,
        **flow_env(kafka_bootstrap, prefix),
        "ENSEMBLE_KAFKA_TAIL": "1",  # a live flow: keeps waiting for input
        "ENSEMBLE_READY_PORT": str(port),
        "ENSEMBLE_READY_STALL_S": "1",
        "ENSEMBLE_STATUS_INTERVAL_S": "0",
    }
    command = [
        sys.executable, "-m", "bytewax.run", "dataflows.ensemble",
        "-r", str(rec), "-s", "1", "-b", "0",
    ]  # fmt: skip

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    first = start()
    try:  # reads everything, then a snapshot holds the end of every partition
        _wait_for(port, first, "ok: broker answers, 0 input messages waiting", 120)
        time.sleep(2.5)
    finally:
        _stop(first)

    second = start()  # resumes at the end of every partition; nothing new arrives
    try:
        _wait_for(port, second, "ok", 120)
        seen = []
        for _ in range(int(3 * CHECK_S / 0.5)):  # past the stall time, over three checks
            assert second.poll() is None, second.communicate()[1][-3000:]
            seen.append(_ready(port))
            time.sleep(0.5)
        not_ready = [s for s in seen if s is None or s[0] != 200]
        assert not not_ready, f"a caught-up, quiet flow said not ready: {not_ready[:1]}"
        assert seen[-1] == (200, "ok: broker answers, 0 input messages waiting\n"), seen[-1]
    finally:
        _stop(second)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _readiness_on_candles(bootstrap: str, prefix: str, per_partition: dict[int, int]):
    """A Readiness on `prefix`'s input topics (fake clock, stall after 60 s), with
    `per_partition[p]` messages on partition p of PREFIX.candles."""
    from confluent_kafka import Producer

    from dataflows.kafka_security import confluent_config
    from dataflows.readiness import Readiness
    from dataflows.topics import INPUT_TOPICS

    provision(bootstrap, prefix)
    producer = Producer(confluent_config(bootstrap))
    for p, n in per_partition.items():
        for i in range(n):
            producer.produce(f"{prefix}.candles", value=b"x%d" % i, partition=p)
    assert producer.flush(30) == 0
    clock = _Clock()
    config = confluent_config(bootstrap, **{"group.id": "ensemble-flow", "log_level": 0})
    topics = [t.name(prefix) for t in INPUT_TOPICS]
    return Readiness(config, topics, stall_s=60, clock=clock), clock


def test_only_the_partitions_this_process_reads_count_as_waiting(kafka_bootstrap, prefix):
    """With several dataflow processes each reads its own partitions: another process's
    backlog is not this one's, and a partition opened at its snapshot offset waits only
    for what lies past it."""
    r, clock = _readiness_on_candles(kafka_bootstrap, prefix, {0: 3, 1: 4, 2: 5})
    candles = f"{prefix}.candles"
    # none opened (yet, or ever: more workers than partitions): nothing waits here
    assert r.check() == (True, "ok: broker answers; this process reads no input partition")
    r.reading(candles, 0, None)  # from its first record: 3 waiting
    r.reading(candles, 2, 5)  # resumed at its end: nothing waiting
    # partition 1 is another process's
    assert r.check() == (True, "ok: broker answers, 3 input messages waiting")
    clock.now += 61
    assert r.check() == (False, f"no input read for 61 s from {candles}[0] with 3 messages waiting")
    r.saw(candles, 0, 2)
    assert r.check() == (True, "ok: broker answers, 0 input messages waiting")


def test_a_frozen_partition_is_not_ready_while_the_others_are_read(kafka_bootstrap, prefix):
    """A partition with records left that stops delivering (a stuck fetch) holds every
    symbol's bars (README, "event time"): /ready must say so even while other partitions
    keep delivering."""
    r, clock = _readiness_on_candles(kafka_bootstrap, prefix, {0: 3, 1: 4})
    candles = f"{prefix}.candles"
    r.reading(candles, 0, None)
    r.reading(candles, 1, None)
    r.saw(candles, 0, 2)  # partition 0: all read
    r.saw(candles, 1, 1)  # partition 1: 2 read, then frozen with 2 left
    assert r.check() == (True, "ok: broker answers, 2 input messages waiting")
    clock.now += 61
    r.saw(candles, 0, 2)  # partition 0 is still read
    ready, reason = r.check()
    assert not ready, reason
    assert reason == f"no input read for 61 s from {candles}[1] with 2 messages waiting"
