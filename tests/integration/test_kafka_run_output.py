"""What the flow on Kafka tells its operator, through the real broker: the start line, the
periodic status line, and a clean stop on SIGINT with the run summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataflows.topics import provision
from marketdata.generator import GeneratorConfig, generate
from tests.integration.kafka_io import principal_env
from tests.integration.test_kafka_restart import _publish

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_kafka_run_prints_start_and_status_lines_and_stops_on_sigint_with_a_summary(
    kafka_bootstrap, prefix, tmp_path
):
    records = [(s, r) for s, r in generate(GeneratorConfig(seed=11, days=2)) if s != "funding"]
    provision(kafka_bootstrap, prefix)
    _publish(kafka_bootstrap, prefix, records)
    env = {
        **os.environ,
        **principal_env("flow"),
        "ENSEMBLE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "1",  # follows the topics: only a signal ends it
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_OUT": str(tmp_path),
        "ENSEMBLE_STATUS_INTERVAL_S": "1",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    out: list[str] = []
    # each pipe read by its own thread to the end (communicate() would read stderr too,
    # taking lines from this reader and closing the pipe under it)
    readers = [
        threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True),
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 180
        # every 5m bar of the two days decided on, for both symbols: the input is read to its
        # end (each symbol's trades are a partition of their own, read at their own pace)
        while not any(
            "BTC-PERP 425 decisions" in line and "ETH-PERP 425 decisions" in line
            for line in list(lines)
        ):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        for reader in readers:
            reader.join(timeout=30)
        stdout = "".join(out)
    finally:  # a failed wait must not leave the flow running (and pytest waiting for it)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    assert "panicked" not in stderr and "Traceback" not in stderr, stderr

    start = lines[0]
    assert start.startswith(f"ensemble: start: input Kafka {kafka_bootstrap} (following {prefix}.")
    for part in (
        f"outputs Kafka topics {prefix}.<stream>",
        "preset ensemble_1_1",
        "model stack-",
        "symbols BTC-PERP,ETH-PERP",
        "recovery off",
        "warm-up 150 5m bars",
    ):
        assert part in start, start
    status = [line for line in lines if line.startswith("ensemble: status: ")]
    assert status, stderr
    last = status[-1]
    assert "event time 2024-01-02 23:5" in last, last  # the last 5m close of the two days
    assert "ETH-PERP 425 decisions" in last and "ACTIVE" in last, last
    assert any("warm-up " in line for line in status[:-1]) or "fills" in last

    assert "Ensemble run summary" in stdout
    assert "BTC-PERP: 575 5m bars (0 missing), 425 decisions" in stdout, stdout
    assert "stopped by a signal before the end of the input" in stdout
    assert f"outputs: Kafka topics {prefix}.<stream>" in stdout
