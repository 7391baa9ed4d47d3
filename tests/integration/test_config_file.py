"""The ENSEMBLE_CONFIG file through the real broker: a Kafka tool run with no --bootstrap
finds the broker in the file, as the flow and the consumers do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient

from dataflows.kafka_security import confluent_config
from dataflows.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def test_topics_takes_the_bootstrap_from_the_config_file(kafka_bootstrap, prefix, tmp_path):
    cfg = tmp_path / "ensemble.toml"
    cfg.write_text(f'ENSEMBLE_KAFKA_BOOTSTRAP = "{kafka_bootstrap}"\n')
    env = {k: v for k, v in os.environ.items() if k != "ENSEMBLE_KAFKA_BOOTSTRAP"}
    env["ENSEMBLE_CONFIG"] = str(cfg)
    done = subprocess.run(
        [sys.executable, "-m", "dataflows.topics", "--prefix", prefix],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    topics = AdminClient(confluent_config(kafka_bootstrap)).list_topics(timeout=10).topics
    assert {t.name(prefix) for t in ALL_TOPICS} <= set(topics)

    cfg.write_text('ENSEMBLE_KAFKA_BOOTSTRAP = "127.0.0.1:1"\n')  # the flag wins over the file
    again = subprocess.run(
        [sys.executable, "-m", "dataflows.topics", "--prefix", prefix,
         "--bootstrap", kafka_bootstrap],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"0 created, {len(ALL_TOPICS)} already there" in again.stderr
