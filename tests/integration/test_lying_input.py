"""Input that passes the schema but lies, on the real broker (issue 14, section 4).

Every figure of the issue in one Kafka run: a price of 1e308, a price x1000, a size of
1e308, a duplicated trade, a trade 5 h ahead, a trade at now+290 s, and 1,123 copies of
later trades published with a null key on the other partitions, read ahead of the real
ones. The run's bars, orders, executions, rejections and signals equal the clean file
run's; only the lies are dead letters; no real trade is.
"""

from __future__ import annotations

import time
import uuid

import pytest
from bytewax.testing import run_main
from kafka import KafkaProducer

from dataflows.ensemble import build_flow
from dataflows.io import RawMessage
from dataflows.kafka_security import kafka_python_config
from dataflows.settings import Settings
from dataflows.topics import OUTPUT_TOPICS, provision
from marketdata.generator import generate
from marketdata.replay import encoded
from schemas import codec
from tests.conftest import run_records, small_settings
from tests.integration.kafka_io import flow_env, on_the_wire, read_topic

NULL_KEY_TRADES = 1_123


def _lies(rec: dict) -> list[tuple[dict, str]]:
    """(lying trade, its dead-letter reason fragment), made from a real trade."""
    lie = {**rec, "trade_id": "lie"}
    now_ms = time.time_ns() // 1_000_000
    return [
        ({**lie, "trade_id": "lie-1", "px": 1e308}, "outlier: price 1e+308 is absurd"),
        ({**lie, "trade_id": "lie-2", "px": rec["px"] * 1000}, "from the reference"),
        ({**lie, "trade_id": "lie-3", "qty": 1e308}, "outlier: size 1e+308 is absurd"),
        ({**lie, "trade_id": "lie-4", "ts_event_ms": rec["ts_event_ms"] + 5 * 3_600_000},
         "far out of order"),
        ({**lie, "trade_id": "lie-5", "ts_event_ms": now_ms + 290_000}, "far out of order"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lying_run(kafka_bootstrap, tmp_path_factory):
    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    settings = small_settings(tmp_path_factory.mktemp("files"))
    records = [(s, r) for s, r in generate(settings.generator) if s != "funding"]
    btc = [r for s, r in records if s == "trades" and r["symbol"] == "BTC-PERP"]
    at = btc[len(btc) * 3 // 5]
    lies = _lies(at)
    producer = KafkaProducer(
        **kafka_python_config(kafka_bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    )
    home = None
    ((_, _, at_value, _),) = encoded([("trades", at)], "ensemble_1_1")
    for stream, key, value, _ in encoded(records, "ensemble_1_1"):
        fut = producer.send(f"{prefix}.{stream}", key=key, value=value)
        if home is None and stream == "trades" and key == b"BTC-PERP":
            home = fut.get(timeout=30).partition
            # copies of the last trades, null key, on every other partition: read ahead
            n_parts = len(producer.partitions_for(f"{prefix}.trades"))
            others = [p for p in range(n_parts) if p != home]
            for i, (_, _, v, _) in enumerate(
                encoded([("trades", r) for r in btc[-NULL_KEY_TRADES:]], "ensemble_1_1")
            ):
                producer.send(f"{prefix}.trades", key=None, value=v, partition=others[i % 5])
        if stream == "trades" and value == at_value:
            producer.send(f"{prefix}.trades", key=key, value=value)  # the duplicated trade
            for _, _, v, _ in encoded([("trades", lie) for lie, _ in lies], "ensemble_1_1"):
                producer.send(f"{prefix}.trades", key=key, value=v)
    producer.flush()
    producer.close()
    # partitions idle after 2 s, so the minimum over partitions is exercised, not only the
    # end of input (the whole read may take less than the default 10 s start-up grace)
    env = {**flow_env(kafka_bootstrap, prefix), "ENSEMBLE_SOURCE_IDLE_MS": "2000"}
    run_main(build_flow(Settings.from_env(env)))
    out = {
        t.stream: read_topic(kafka_bootstrap, t.name(prefix), codec.STREAM_SCHEMAS[t.stream])
        for t in OUTPUT_TOPICS
    }
    clean = run_records(settings, [RawMessage(s, r) for s, r in records])
    return out, clean, [reason for _, reason in lies]


def _strip(recs: list[dict]) -> list[dict]:
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]
    return sorted(clean, key=lambda r: (r["symbol"], r["ts_event_ms"]))


def _rounded(v):
    """Floats to 9 significant digits: a bar's volume is a float sum, and copies read first
    from other partitions add the same trades in another order (its last digit may change,
    and the volume features computed from it)."""
    if isinstance(v, float):
        return float(f"{v:.9g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def test_lies_on_kafka_change_no_bar_or_decision_of_the_clean_run(lying_run):
    out, clean, _ = lying_run
    for stream in ("bars", "signals"):
        wire = on_the_wire(stream, clean[stream])
        assert _rounded(_strip(out[stream])) == _rounded(_strip(wire)), stream
    for stream in ("orders", "executions", "rejections"):
        assert out[stream], f"nothing on {stream}"
        assert _strip(out[stream]) == _strip(clean[stream]), f"{stream} differ from the clean run"
    assert out["errors"] == []


def test_only_the_lies_are_dead_letters_and_no_real_trade_is(lying_run):
    out, _, reasons = lying_run
    trades = [r for r in out["dead_letters"] if r["source_stream"] == "trades"]
    assert len(trades) == len(reasons), [r["reason"] for r in trades]
    for reason in reasons:
        assert any(reason in r["reason"] for r in trades), reason
    assert not [r for r in trades if r["reason"].startswith("late")]
