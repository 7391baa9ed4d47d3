"""Two processes (`-i/-a`) from Kafka write what one worker writes, through the real broker.

Each process reads its share of the input partitions and folds the symbols its route keys
give it, so a symbol's records may be read in one process and folded in the other: its
trades, funding, overlays, cohorts and commands each come from a partition of their own
topic. Before the market step judged such records by their own arrival (operators/
watermark.py), the partitions read in the folding process closed the symbol's bars at
their own event time, and a few of its trades, still on their way, were dead-lettered as
late: the two runs differed in bars, signals, decisions and dead letters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflows.topics import OUTPUT_TOPICS, provision
from marketdata.generator import GeneratorConfig, generate
from tests.integration.kafka_io import flow_env, read_topics
from tests.integration.test_kafka_delivery import _free_port
from tests.integration.test_kafka_flow import _available_ms, _context_records
from tests.integration.test_kafka_restart import _publish

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ("BTC-PERP", "ETH-PERP", "SOL-PERP")


def _run(env: dict[str, str], processes: int, logs: Path) -> None:
    command = [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"]
    addrs = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
    cluster = [["-i", str(i), "-a", addrs] for i in range(processes)] if processes > 1 else [[]]
    procs = []
    for i, extra in enumerate(cluster):
        with open(logs / f"stderr-{processes}-{i}.txt", "w") as err:  # a pipe could fill
            procs.append(
                subprocess.Popen(
                    [*command, *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
                )
            )
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:  # a failed run must not leave a process behind (and pytest waiting for it)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        err = (logs / f"stderr-{processes}-{i}.txt").read_text()
        assert p.returncode == 0, err
        assert "Traceback" not in err and "panicked" not in err, err


def _outputs(bootstrap: str, prefix: str) -> dict[str, list[str]]:
    """Every output topic's records, sorted (the order across symbols is the scheduler's)."""
    got = read_topics(bootstrap, {t.name(prefix): None for t in OUTPUT_TOPICS})
    return {
        topic.split(".", 1)[1]: sorted(repr((r["_key"], r["value"])) for r in records)
        for topic, records in got.items()
    }


def test_two_processes_from_kafka_write_what_one_worker_writes(kafka_bootstrap, prefix, tmp_path):
    generated = list(
        generate(GeneratorConfig(seed=11, days=2, trade_symbols=SYMBOLS, candle_symbols=()))
    )
    outputs = {}
    for processes in (1, 2):
        run_prefix = f"{prefix}-{processes}"
        context = _context_records(generated, SYMBOLS, topic=f"{run_prefix}.control")
        records = sorted([*generated, *context], key=_available_ms)
        provision(kafka_bootstrap, run_prefix)
        _publish(kafka_bootstrap, run_prefix, records)
        env = {
            **os.environ,
            **flow_env(kafka_bootstrap, run_prefix),
            "ENSEMBLE_SYMBOLS": ",".join(SYMBOLS),
            "ENSEMBLE_CANDLE_SYMBOLS": "",
        }
        env.pop("ENSEMBLE_TEST_KAFKA", None)
        _run(env, processes, tmp_path)
        outputs[processes] = _outputs(kafka_bootstrap, run_prefix)
    one, two = outputs[1], outputs[2]
    assert one["dead_letters"] == [], one["dead_letters"][:3]
    assert len(one["bars"]) > 3 * 500 and len(one["orders"]) > 0, {
        k: len(v) for k, v in one.items()
    }
    for stream in one:
        assert two[stream] == one[stream], (stream, len(two[stream]), len(one[stream]))
