"""The ingestor's Kafka side: Avro records keyed by symbol on PREFIX.<stream>, dead
letters on PREFIX.dead_letters, through one idempotent producer.

Receive time travels as the Kafka timestamp and the `ts_init_ms` header (the input
schemas have no such field), so the event time stays the venue's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from dataflows.kafka_security import confluent_config
from dataflows.topics import MAX_MESSAGE_BYTES
from operators.events import PARSERS
from operators.telemetry import Stamp, dead_letter, wall_clock_ms
from schemas.codec import encode, with_defaults

log = logging.getLogger(__name__)
# librdkafka's default, said here: a record the broker has not taken within it (an outage
# that long) is given up; the ingestor reports its window as a GAP (`Publisher.take_lost`)
MESSAGE_TIMEOUT_MS = 300_000


class PublisherError(RuntimeError):
    """Kafka cannot take our records; the message says what to do."""


class RecordError(ValueError):
    """One record the Avro schema cannot take (a value out of range, text that is not
    UTF-8); the message is the dead-letter reason. Kafka is not involved."""


def producer_config(
    bootstrap: str,
    client_id: str = "ensemble-live",
    env: Mapping[str, str] | None = None,
    message_timeout_ms: int = MESSAGE_TIMEOUT_MS,
) -> dict[str, Any]:
    """Every producer setting in one place, with the environment's Kafka security
    (`dataflows/kafka_security.py`: the ingestor runs as the `ingestor` principal)."""
    try:
        return confluent_config(
            bootstrap,
            env,
            **{
                "client.id": client_id,
                "enable.idempotence": True,  # retries never duplicate nor reorder
                # A symbol's partition as the Java client and kafka-python (the replay)
                # choose it, murmur2 of the key: librdkafka's own default, CRC32, put
                # BTC, ETH and XRP-PERP all on trades partition 5 of 6, one reader for all.
                "partitioner": "murmur2_random",
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": MAX_MESSAGE_BYTES,
                "message.timeout.ms": message_timeout_ms,
            },
        )
    except ValueError as e:  # a bad ENSEMBLE_KAFKA_* value, named in the message
        raise PublisherError(str(e)) from None


class Publisher:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        strategy_id: str,
        env: Mapping[str, str] | None = None,
        message_timeout_ms: int = MESSAGE_TIMEOUT_MS,
    ) -> None:
        """`env`: where the Kafka security settings come from (default: os.environ)."""
        self.prefix = prefix
        self.strategy_id = strategy_id
        self.stamp = Stamp(strategy_id, clock=wall_clock_ms)
        config = producer_config(bootstrap, env=env, message_timeout_ms=message_timeout_ms)
        self.producer = Producer(config)
        self.delivered = 0
        self.failed = 0
        # (stream, symbol) -> [records, first and last receive time, the error]: records
        # Kafka never took, until the ingestor reports them (`take_lost`)
        self._lost: dict[tuple[str, str], list[Any]] = {}

    def check_topics(self, timeout_s: float = 15.0) -> None:
        """Stop the start when the broker is unreachable or a topic we write is missing."""
        streams = ("trades", "candles", "funding", "dead_letters")
        try:
            md = self.producer.list_topics(timeout=timeout_s)
        except KafkaException as e:
            raise PublisherError(f"Kafka unreachable: {e.args[0].str()}") from None
        missing = [f"{self.prefix}.{s}" for s in streams if f"{self.prefix}.{s}" not in md.topics]
        if missing:
            raise PublisherError(
                f"topics {missing} do not exist; create them with "
                f"`python -m dataflows.topics --bootstrap HOST:PORT --prefix {self.prefix}`"
            )

    def _on_delivery(self, err: KafkaError | None, msg: Any, recv_ms: int) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if err.fatal():
            log.error("Kafka delivery failed: %s", err)
            raise KafkaException(err)
        stream = (msg.topic() or "").removeprefix(f"{self.prefix}.")
        symbol = (msg.key() or b"").decode(errors="replace") or "*"
        if (stream, symbol) not in self._lost:  # the rest are counted into its GAP
            log.error("Kafka delivery failed for a %s record of %s: %s", stream, symbol, err)
        lost = self._lost.setdefault((stream, symbol), [0, recv_ms, recv_ms, err.str()])
        lost[0] += 1
        lost[1], lost[2] = min(lost[1], recv_ms), max(lost[2], recv_ms)

    def take_lost(self) -> list[tuple[str, str, int, int, int, str]]:
        """The records Kafka gave up on since the last call, per stream and symbol:
        (stream, symbol, how many, first and last receive time, the error)."""
        lost, self._lost = self._lost, {}
        return [(stream, sym, *figures) for (stream, sym), figures in lost.items()]

    def delivery_callback(self, recv_ms: int) -> Any:
        """The callback of the next message, received at `recv_ms` (a message Kafka gave
        up on carries no timestamp; the benchmark wraps it to time deliveries)."""
        return partial(self._on_delivery, recv_ms=recv_ms)

    def _produce(self, topic: str, key: bytes | None, value: bytes, recv_ms: int) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=value,
                    key=key,
                    timestamp=recv_ms,
                    headers={"ts_init_ms": str(recv_ms).encode()},
                    on_delivery=self.delivery_callback(recv_ms),
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)

    def publish(self, stream: str, record: dict[str, Any], recv_ms: int) -> None:
        schema = PARSERS[stream][0]
        full = with_defaults(schema, {"strategy_id": self.strategy_id, **record})
        try:
            value = encode(schema, full)
            key = record["symbol"].encode()
        except Exception as e:  # encoding is pure: whatever it raises is about this record
            raise RecordError(f"{stream} record cannot be encoded: {type(e).__name__}: {e}") from e
        self._produce(f"{self.prefix}.{stream}", key, value, recv_ms)

    def dead_letter(self, source_stream: str, raw: str | bytes, reason: str, recv_ms: int) -> None:
        payload = raw.encode() if isinstance(raw, str) else raw
        rec = dead_letter(self.stamp, source_stream, payload, reason)
        rec["ts_init_ms"] = recv_ms
        key = rec["symbol"].encode() if rec["symbol"] else None
        self._produce(f"{self.prefix}.dead_letters", key, encode("dead_letter", rec), recv_ms)

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Messages still undelivered after `timeout_s` (0 when all are on the broker)."""
        return self.producer.flush(timeout_s)
