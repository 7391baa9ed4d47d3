"""Kafka topics of SPEC 2, created explicitly (production does not rely on auto-create).

`python -m dataflows.topics --bootstrap 127.0.0.1:19092 [--prefix ensemble]` creates every
topic with its partitions, retention and cleanup policy, and reports the ones that
already exist. Keys are symbols, so one symbol's messages stay in order on one partition.

On a broker with an authorizer (`--acls`, the default when the client authenticates, i.e.
ENSEMBLE_KAFKA_SECURITY_PROTOCOL=SASL_SSL as admin) it also grants each component's
principal only what it needs on PREFIX's topics (`ACCESS` below); anything else is refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from dataflows.environment import add_kafka_arguments, kafka_arguments
from dataflows.kafka_security import KafkaSecurity, confluent_config

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

FLOW_GROUP = "ensemble-flow"  # offsets live in Bytewax snapshots; the group is never joined
MARKET_STREAMS = ("trades", "candles", "funding", "overlays", "cohorts")
TELEMETRY_STREAMS = tuple(t.stream for t in OUTPUT_TOPICS)
# The largest message a producer may send and a topic accepts (Kafka's default for both is
# about 1 MB); the dead-letter step keeps every dead letter well under it.
MAX_MESSAGE_BYTES = 1_048_576


@dataclass(frozen=True)
class Access:
    """What one component's principal may do: read and write these streams, read groups."""

    principal: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    group_prefixes: tuple[str, ...] = ()


# One principal per component, each allowed only its own topics (admin is a super user and
# needs no ACL). Consumers trust telemetry because only the flow may write it.
ACCESS = (
    # the flow commits no offsets, but librdkafka looks its group's coordinator up
    Access(
        "flow",
        reads=tuple(t.stream for t in INPUT_TOPICS),
        writes=TELEMETRY_STREAMS,
        group_prefixes=(FLOW_GROUP,),
    ),
    Access("ingestor", writes=(*MARKET_STREAMS, "dead_letters")),  # bad frames, with reason
    Access("operator", reads=("repro",), writes=("control",)),
    Access("alerts", reads=TELEMETRY_STREAMS, group_prefixes=("ensemble-alerts",)),
    Access("copilot", reads=TELEMETRY_STREAMS),
)


def acl_bindings(prefix: str, access: tuple[Access, ...] = ACCESS) -> list[AclBinding]:
    """The ACLs that give each component exactly its `Access` on PREFIX's topics."""

    def allow(rtype: ResourceType, name: str, who: str, op: AclOperation, pattern=None):
        return AclBinding(
            rtype,
            name,
            pattern or ResourcePatternType.LITERAL,
            f"User:{who}",
            "*",
            op,
            AclPermissionType.ALLOW,
        )

    out = []
    for a in access:
        for stream in a.reads:
            for op in (AclOperation.READ, AclOperation.DESCRIBE):
                out.append(allow(ResourceType.TOPIC, f"{prefix}.{stream}", a.principal, op))
        for stream in a.writes:
            for op in (AclOperation.WRITE, AclOperation.DESCRIBE):
                out.append(allow(ResourceType.TOPIC, f"{prefix}.{stream}", a.principal, op))
        for group in a.group_prefixes:
            out.append(
                allow(
                    ResourceType.GROUP, group, a.principal, AclOperation.READ,
                    ResourcePatternType.PREFIXED,
                )
            )  # fmt: skip
    return out


def grant(bootstrap: str, prefix: str, timeout_s: float = 30.0) -> int:
    """Create every component's ACLs on PREFIX's topics (idempotent); returns how many."""
    admin = AdminClient(confluent_config(bootstrap))
    bindings = acl_bindings(prefix)
    for binding, fut in admin.create_acls(bindings, request_timeout=timeout_s).items():
        try:
            fut.result()
        except KafkaException as e:
            raise RuntimeError(f"could not create ACL {binding}: {e.args[0].str()}") from None
    # the authorizer applies new ACLs a moment later: return once it reports them all
    deadline = time.monotonic() + timeout_s
    want = {(b.name, b.principal, b.operation) for b in bindings}
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    while time.monotonic() < deadline:
        have = admin.describe_acls(everything, request_timeout=timeout_s).result()
        if want <= {(b.name, b.principal, b.operation) for b in have}:
            return len(bindings)
        time.sleep(0.2)
    raise RuntimeError(f"the broker did not apply the ACLs of {prefix!r} within {timeout_s} s")


def provision(
    bootstrap: str,
    prefix: str,
    timeout_s: float = 30.0,
    replication_factor: int = 1,
    acls: bool | None = None,
) -> tuple[list[str], list[str]]:
    """Create every topic; returns (created, already there). Raises on any other failure.

    With a replication factor above 1 the topics also get `min.insync.replicas` = factor - 1,
    so an acknowledged write survives the loss of one broker. `acls` (default: when the
    client authenticates) also grants each component's ACLs on them."""
    if replication_factor < 1:
        raise ValueError(f"replication_factor={replication_factor} must be at least 1")
    extra = {} if replication_factor == 1 else {"min.insync.replicas": str(replication_factor - 1)}
    admin = AdminClient(confluent_config(bootstrap))
    futures = admin.create_topics(
        [
            NewTopic(
                t.name(prefix),
                num_partitions=t.partitions,
                replication_factor=replication_factor,
                config={**t.config(), **extra, "max.message.bytes": str(MAX_MESSAGE_BYTES)},
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
    if KafkaSecurity.from_env().authenticated if acls is None else acls:
        grant(bootstrap, prefix, timeout_s)
    return sorted(created), sorted(existing)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kafka_arguments(ap)
    ap.add_argument(
        "--replication-factor", type=int, default=1, help="1 for a single broker; 3 in production"
    )
    ap.add_argument(
        "--acls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="grant each component's ACLs (default: yes when the client authenticates)",
    )
    args = ap.parse_args(argv)
    kafka_arguments(ap, args)
    if args.replication_factor < 1:
        ap.error(f"--replication-factor {args.replication_factor} must be at least 1")
    acls = KafkaSecurity.from_env().authenticated if args.acls is None else args.acls
    created, existing = provision(
        args.bootstrap, args.prefix, replication_factor=args.replication_factor, acls=acls
    )
    for name in created:
        print(f"created  {name}")
    for name in existing:
        print(f"exists   {name}")
    print(f"{len(created)} created, {len(existing)} already there", file=sys.stderr)
    if acls:
        n = len(acl_bindings(args.prefix))
        print(f"{n} ACLs granted to {', '.join(a.principal for a in ACCESS)}", file=sys.stderr)


if __name__ == "__main__":
    main()
