"""Kafka topics of SPEC 2, created explicitly (production does not rely on auto-create).

`python -m dataflows.topics --bootstrap 127.0.0.1:19092 [--prefix ensemble]` creates every
topic with its partitions, retention and cleanup policy, and reports the ones that
already exist. Keys are symbols, so one symbol's messages stay in order on one partition.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Topic:
    stream: str
    partitions: int
    retention_ms: int  # -1 keeps forever
    cleanup: str = "delete"

    def name(self, prefix: str) -> str:
        return f"{prefix}.{self.stream}"

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup}


INPUT_TOPICS = (
    Topic("trades", 6, 7 * DAY_MS),
    Topic("candles", 3, 30 * DAY_MS),
    Topic("funding", 3, 90 * DAY_MS),
    Topic("overlays", 3, 7 * DAY_MS),
    Topic("cohorts", 3, 7 * DAY_MS),
    Topic("control", 1, -1),  # operator commands are an audit trail: kept forever
)
OUTPUT_TOPICS = (
    Topic("bars", 3, 90 * DAY_MS),
    Topic("orders", 3, -1),
    Topic("executions", 3, -1),
    Topic("rejections", 3, 365 * DAY_MS),
    Topic("signals", 3, 30 * DAY_MS),
    Topic("ensemble", 3, 30 * DAY_MS),
    Topic("health", 3, 30 * DAY_MS),
    Topic("costs", 3, 365 * DAY_MS),
    Topic("calibration", 3, 90 * DAY_MS),
    Topic("repro", 1, -1),
    Topic("errors", 1, 90 * DAY_MS),
    Topic("dead_letters", 1, 90 * DAY_MS),
)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS


def provision(
    bootstrap: str, prefix: str, timeout_s: float = 30.0, replication_factor: int = 1
) -> tuple[list[str], list[str]]:
    """Create every topic; returns (created, already there). Raises on any other failure.

    With a replication factor above 1 the topics also get `min.insync.replicas` = factor - 1,
    so an acknowledged write survives the loss of one broker."""
    if replication_factor < 1:
        raise ValueError(f"replication_factor={replication_factor} must be at least 1")
    extra = {} if replication_factor == 1 else {"min.insync.replicas": str(replication_factor - 1)}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                t.name(prefix),
                num_partitions=t.partitions,
                replication_factor=replication_factor,
                config={**t.config(), **extra},
            )
            for t in ALL_TOPICS
        ],
        request_timeout=timeout_s,
    )
    created, existing = [], []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as e:
            if e.args[0].name() == "TOPIC_ALREADY_EXISTS":
                existing.append(name)
            else:
                raise RuntimeError(f"could not create topic {name}: {e.args[0].str()}") from None
    return sorted(created), sorted(existing)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True, help="host:port[,host:port]")
    ap.add_argument("--prefix", default="ensemble")
    ap.add_argument(
        "--replication-factor", type=int, default=1, help="1 for a single broker; 3 in production"
    )
    args = ap.parse_args(argv)
    if args.replication_factor < 1:
        ap.error(f"--replication-factor {args.replication_factor} must be at least 1")
    created, existing = provision(
        args.bootstrap, args.prefix, replication_factor=args.replication_factor
    )
    for name in created:
        print(f"created  {name}")
    for name in existing:
        print(f"exists   {name}")
    print(f"{len(created)} created, {len(existing)} already there", file=sys.stderr)


if __name__ == "__main__":
    main()
