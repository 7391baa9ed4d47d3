"""The flow's Kafka output: nothing is lost silently, and the start waits a bounded time.

Bytewax 0.21.1's `KafkaSink` produces without a delivery callback, so a message whose
delivery times out (broker away longer than `message.timeout.ms`) is dropped without a
word while later snapshots move past it. `DeliveredSink` checks every delivery report of
a batch before `write_batch` returns: a failed delivery raises `DeliveryFailed`, which
stops the flow before the next snapshot commits, so a restart replays from the last
good snapshot and nothing is lost.

`wait_for_kafka` is the start-up check: the broker must answer and every input topic
exist within a bounded wait, else the start fails with a message saying which.
librdkafka's own log lines go through `RateLimitedLog` (at most a few per kind a minute).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

log = logging.getLogger("ensemble.kafka")


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge an output message: stop before the next snapshot."""


class KafkaUnavailable(RuntimeError):
    """The broker or an input topic is missing at start."""


# How confluent-kafka hands the `logger` setting a librdkafka line: (facility, client, text).
# Every line has this format, so the format alone made them all one kind: the start-up's
# configuration warnings used up the kind's lines and hid, say, an offset reset after them.
LIBRDKAFKA_LINE = "%s [%s] %s"


class RateLimitedLog(logging.Filter):
    """Let at most `per_window` records of one kind (logger + first words; a librdkafka
    line's facility) through per `window_s`; then one line saying how many were
    suppressed."""

    def __init__(self, per_window: int = 5, window_s: float = 60.0) -> None:
        super().__init__()
        self.per_window = per_window
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == LIBRDKAFKA_LINE and isinstance(record.args, tuple) and record.args:
            kind = f"{record.name}:{record.args[0]}"  # its facility (CONFWARN, OFFSET, ...)
        else:
            kind = f"{record.name}:{str(record.msg)[:40]}"
        now = time.monotonic()
        start, n = self._seen.get(kind, (now, 0))
        if now - start >= self.window_s:
            if n > self.per_window:
                record.msg = f"{record.msg} ({n - self.per_window} similar lines suppressed)"
            start, n = now, 0
        self._seen[kind] = (start, n + 1)
        return n < self.per_window


def client_logger(name: str = "ensemble.kafka.librdkafka") -> logging.Logger:
    """The logger handed to librdkafka (`logger` setting), rate-limited once."""
    lg = logging.getLogger(name)
    if not any(isinstance(f, RateLimitedLog) for f in lg.filters):
        lg.addFilter(RateLimitedLog())
    return lg


class _DeliveredPartition(StatelessSinkPartition[KafkaSinkMessage]):
    def __init__(self, producer: Producer, flush_timeout_s: float) -> None:
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self.failures: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err.str()}")

    def write_batch(self, items: list[KafkaSinkMessage]) -> None:
        for m in items:
            while True:
                try:
                    self.producer.produce(
                        m.topic, value=m.value, key=m.key, on_delivery=self._on_delivery
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.producer.poll(0.1)
            self.producer.poll(0)
        left = self.producer.flush(self.flush_timeout_s)
        if self.failures or left:
            first = self.failures[:3]
            raise DeliveryFailed(
                f"{len(self.failures)} output message(s) not delivered ({first}), "
                f"{left} still unacknowledged: stopping before the next snapshot so a "
                "restart from the last snapshot republishes them"
            )

    def close(self) -> None:
        self.producer.flush(self.flush_timeout_s)


class DeliveredSink(DynamicSink[KafkaSinkMessage]):
    """Bytewax sink over confluent-kafka that raises on any failed delivery."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        # flush waits at least as long as librdkafka keeps retrying a message
        self.flush_timeout_s = int(config.get("message.timeout.ms", 300_000)) / 1000 + 30

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeliveredPartition:
        return _DeliveredPartition(
            Producer({**self.config, "logger": client_logger()}), self.flush_timeout_s
        )


def wait_for_kafka(
    config: dict[str, Any], topics: Iterable[str], timeout_s: float
) -> tuple[AdminClient, Any]:
    """Return once the broker answers and every topic exists; else KafkaUnavailable. Returns
    the client that asked and the broker's answer (every topic's metadata), which the
    flow's source lists its partitions from and asks their offsets with, rather than
    connecting twice more (each connection a TLS and SASL handshake)."""
    admin = AdminClient({**config, "logger": client_logger()})
    deadline = time.monotonic() + timeout_s
    topics = sorted(topics)
    missing: list[str] = topics
    reason = ""
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        except KafkaException as e:
            reason = e.args[0].str()
            continue
        missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
        if not missing:
            return admin, md
        reason = f"topics {missing} do not exist"
        time.sleep(0.5)
    server = config.get("bootstrap.servers")
    if reason.startswith("topics"):
        raise KafkaUnavailable(
            f"Kafka at {server}: {reason} after {timeout_s:.0f} s; create them with "
            "`python -m dataflows.topics` (ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S sets the wait)"
        )
    raise KafkaUnavailable(
        f"Kafka at {server} did not answer within {timeout_s:.0f} s ({reason or 'no reply'}); "
        "check ENSEMBLE_KAFKA_BOOTSTRAP and the credentials (ENSEMBLE_KAFKA_STARTUP_TIMEOUT_S "
        "sets the wait)"
    )
