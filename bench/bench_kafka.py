"""Kafka benchmarks (figures, not tests): `make bench-kafka`.

Needs the local broker (`make kafka-up`, or ENSEMBLE_TEST_KAFKA=host:port).

1. messages/s from the input topics to bars and decisions through the broker: the
   generator's trades and candles are published first (not timed), then the flow reads
   them from Kafka and writes every output topic (ENSEMBLE_KAFKA_TAIL=0), timed.
2. bar close → order intent through the broker: the market is published at a steady pace
   while the flow tails the topics in another process; for each order intent, the time
   from sending the trade that closed its bar (the first trade at or past the bar's end
   plus the allowed lateness) to the intent's Kafka timestamp (CreateTime, stamped by
   librdkafka when the flow produced it), in wall-clock milliseconds; and the time from
   the bar's end on the paced clock to that timestamp (it includes waiting for the
   closing trade).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bytewax.testing import run_main  # noqa: E402

from dataflows.ensemble import build_flow  # noqa: E402
from dataflows.kafka_security import confluent_config, kafka_python_config  # noqa: E402
from dataflows.settings import Settings  # noqa: E402
from dataflows.topics import provision  # noqa: E402
from marketdata.generator import GeneratorConfig, generate  # noqa: E402
from marketdata.replay import encoded  # noqa: E402


def _producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(**kafka_python_config(bootstrap, acks=1, linger_ms=5))


def throughput(bootstrap: str, days: float) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    provision(bootstrap, prefix)
    records = [(s, r) for s, r in generate(GeneratorConfig(days=days)) if s != "funding"]
    p = _producer(bootstrap)
    for stream, key, value, _ts in encoded(records, "ensemble_1_1"):
        p.send(f"{prefix}.{stream}", key=key, value=value)
    p.flush()
    p.close()
    env = {
        **os.environ,  # the Kafka security settings (deploy/kafka/with-broker.sh)
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_DAYS": str(days),
    }
    flow = build_flow(Settings.from_env(env))
    t0 = time.perf_counter()
    run_main(flow)
    secs = time.perf_counter() - t0
    trades = sum(1 for s, _ in records if s == "trades")
    print(
        f"1. through the broker: {len(records):,} input messages ({trades:,} trades, "
        f"{len(records) - trades:,} candles) → bars, decisions and all output topics in "
        f"{secs:.2f} s = {len(records) / secs:,.0f} messages/s"
    )


def latency(bootstrap: str, days: float, speed: float) -> None:
    from confluent_kafka import Consumer, TopicPartition

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    provision(bootstrap, prefix)
    env = {
        **os.environ,
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "1",
        "ENSEMBLE_DAYS": str(days),
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 100}),
    }
    flow = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)  # let the flow assign its partitions before the market starts
        lateness_ms = Settings.from_env(env).allowed_lateness_ms
        records = [(s, r) for s, r in generate(GeneratorConfig(days=days)) if s == "trades"]
        sent_at: list[tuple[int, float]] = []  # (event time, wall ms when sent)
        p = _producer(bootstrap)
        t_start, first = time.monotonic(), records[0][1]["ts_event_ms"]
        wall_start_ms = time.time() * 1000  # the paced clock: event `first` at this wall time
        for stream, key, value, ts in encoded(records, "ensemble_1_1"):
            delay = t_start + (ts - first) / 1000 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            p.send(f"{prefix}.{stream}", key=key, value=value)
            sent_at.append((ts, time.time() * 1000))
        p.flush()
        p.close()
        time.sleep(3)
        c = Consumer(
            confluent_config(bootstrap, **{"group.id": "bench", "enable.partition.eof": True})
        )
        c.assign([TopicPartition(f"{prefix}.orders", i, 0) for i in range(3)])
        lat, from_end, eof = [], [], 0
        while eof < 3:
            for m in c.consume(500, 2.0):
                if m.error():
                    eof += 1
                    continue
                bar_end = _bar_end(m.value())
                closer = next(w for ts, w in sent_at if ts >= bar_end + lateness_ms)
                lat.append(m.timestamp()[1] - closer)
                from_end.append(m.timestamp()[1] - (wall_start_ms + (bar_end - first) / speed))
        c.close()
    finally:
        flow.terminate()
        flow.wait(timeout=30)
    if not lat:
        print("2. no order intents were produced; no latency to report")
        return
    print(
        f"2. bar close → order intent through the broker ({speed:.0f}x real time, "
        f"n={len(lat)}): from the closing trade's send p50 {_pct(lat, 0.5):.0f} ms, p99 "
        f"{_pct(lat, 0.99):.0f} ms; from the bar's end time on the paced clock (allowed "
        f"lateness {lateness_ms} ms included) p50 {_pct(from_end, 0.5):.0f} ms, p99 "
        f"{_pct(from_end, 0.99):.0f} ms"
    )


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _bar_end(value: bytes) -> int:
    from schemas.codec import decode

    return decode("order_intent", value)["ts_event_ms"]


def main() -> None:
    bootstrap = os.environ.get("ENSEMBLE_TEST_KAFKA", "127.0.0.1:19092")
    print(f"broker {bootstrap}, {os.cpu_count()} cores, one Bytewax worker")
    throughput(bootstrap, days=6)
    latency(bootstrap, days=1, speed=1440)


if __name__ == "__main__":
    main()
