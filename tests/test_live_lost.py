"""Records the broker never takes: librdkafka gives them up after the producer's message
timeout (an outage that long), and they were only counted and logged, so the flow missed
a window of trades and nothing said which. The ingestor now reports the window as a GAP.
No broker here: the port is closed, so every record times out in librdkafka itself."""

from __future__ import annotations

import json
import time

from marketdata.live.hyperliquid import Hyperliquid
from marketdata.live.ingestor import Ingestor, IngestorConfig
from marketdata.live.producer import Publisher

T = 1_737_918_794_873


def _trades_frame(tid: int, ts_ms: int) -> str:
    trade = {"coin": "BTC", "side": "A", "px": "100000.0", "sz": "0.1", "time": ts_ms}
    trade.update({"tid": tid, "users": ["0xa", "0xb"], "hash": "0x1"})
    return json.dumps({"channel": "trades", "data": [trade]})


def test_records_kafka_never_took_are_reported_as_a_gap_with_their_window(caplog):
    cfg = IngestorConfig(venue="hyperliquid", symbols=("BTC-PERP",), bootstrap="127.0.0.1:1")
    publisher = Publisher("127.0.0.1:1", cfg.prefix, cfg.strategy_id, {}, message_timeout_ms=200)
    ing = Ingestor(cfg, Hyperliquid(), publisher)
    for i in range(3):
        ing.handle_frame(_trades_frame(i, T + i), (T + 10 + i) * 1_000_000)
    deadline = time.monotonic() + 20
    while publisher.failed < 3 and time.monotonic() < deadline:
        publisher.producer.poll(0.1)  # where librdkafka reports deliveries
    assert publisher.failed == 3 and not ing.gaps
    # one line for the window, not one per record (an outage gives up thousands)
    failed = [r for r in caplog.records if "Kafka delivery failed" in r.getMessage()]
    assert len(failed) == 1 and "for a trades record of BTC-PERP: " in failed[0].getMessage()
    ing.handle_frame(_trades_frame(3, T + 3), (T + 13) * 1_000_000)  # the feed goes on
    [gap] = ing.gaps
    assert (gap.stream, gap.symbol, gap.from_ms, gap.to_ms) == (
        "trades",
        "BTC-PERP",
        T + 10,
        T + 12,
    )
    assert "Kafka did not take 3 record(s)" in gap.reason
    assert publisher.flush(0) == 1  # the last is still waiting: a stop says so (exit 1)
