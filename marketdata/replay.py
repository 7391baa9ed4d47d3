"""Publish market data onto the input topics: `python -m marketdata.replay`.

The generator (default) or market-data files (`--input` specs as in ENSEMBLE_INPUT) are
Avro-encoded with the schemas in `schemas/`, keyed by symbol, and produced with
kafka-python to PREFIX.trades, PREFIX.candles, PREFIX.funding, in event order, as fast
as possible (`--speed 0`) or at N x real time. Progress goes to stderr.

Messages carry the time they are sent as their Kafka timestamp, not the market's event
time (which is in the payload): the broker's time-based retention would otherwise delete
a replay of 2024 data within minutes of publishing it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer

from dataflows.environment import add_kafka_arguments, kafka_arguments
from dataflows.kafka_security import kafka_python_config
from marketdata.files import FileSpec, file_records
from marketdata.generator import GeneratorConfig, generate
from operators.events import PARSERS
from schemas.codec import encode, with_defaults


def encoded(
    records: Iterable[tuple[str, dict[str, Any]]], strategy_id: str
) -> Iterable[tuple[str, bytes, bytes, int]]:
    """(stream, key, Avro value, event time ms) for each record."""
    for stream, rec in records:
        schema = PARSERS[stream][0]
        full = with_defaults(schema, {"strategy_id": strategy_id, **rec})
        yield stream, rec["symbol"].encode(), encode(schema, full), rec["ts_event_ms"]


def publish(
    bootstrap: str,
    prefix: str,
    records: Iterable[tuple[str, dict[str, Any]]],
    speed: float = 0.0,
    total: int | None = None,
    strategy_id: str = "ensemble_1_1",
    progress: bool = True,
) -> int:
    """Produce every record; returns how many. speed 0 = as fast as possible."""
    producer = KafkaProducer(
        **kafka_python_config(
            bootstrap, acks="all", linger_ms=5, max_in_flight_requests_per_connection=1
        )
    )  # one request in flight keeps order on retry
    n, t_start, last_print = 0, time.monotonic(), 0.0
    first_ts: int | None = None
    try:
        for stream, key, value, ts in encoded(records, strategy_id):
            if speed > 0:
                first_ts = ts if first_ts is None else first_ts
                due = t_start + (ts - first_ts) / 1000.0 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.send(f"{prefix}.{stream}", key=key, value=value)
            n += 1
            now = time.monotonic()
            if progress and now - last_print > 0.5:
                last_print = now
                _progress(n, total, now - t_start)
        producer.flush()
    finally:
        producer.close()
    if progress:
        _progress(n, total, time.monotonic() - t_start)
        print(file=sys.stderr)
    return n


def _progress(n: int, total: int | None, secs: float) -> None:
    rate = n / secs if secs > 0 else 0.0
    if total:
        width = 30
        done = int(width * n / total)
        bar = "#" * done + "." * (width - done)
        msg = f"\r[{bar}] {n:,}/{total:,} messages, {rate:,.0f}/s"
    else:
        msg = f"\r{n:,} messages, {rate:,.0f}/s"
    print(msg, end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kafka_arguments(ap)
    ap.add_argument(
        "--input",
        action="append",
        help="file spec KIND:PATH[?symbol=..]; repeat for several (default: the generator)",
    )
    ap.add_argument("--days", type=float, default=GeneratorConfig.days)
    ap.add_argument("--seed", type=int, default=GeneratorConfig.seed)
    ap.add_argument(
        "--speed", type=float, default=0.0, help="N x real time; 0 = as fast as possible"
    )
    args = ap.parse_args(argv)
    kafka_arguments(ap, args)
    if args.input:
        records = list(file_records([FileSpec.parse(s) for s in args.input]))
    else:
        records = list(generate(GeneratorConfig(seed=args.seed, days=args.days)))
    n = publish(args.bootstrap, args.prefix, records, args.speed, total=len(records))
    print(f"published {n:,} messages to {args.prefix}.*", file=sys.stderr)


if __name__ == "__main__":
    main()
