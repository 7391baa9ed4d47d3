"""Kafka end to end against the real broker: topics, Avro on the wire, dead letters."""

from __future__ import annotations

import math

import pytest
from bytewax.testing import run_main
from confluent_kafka.admin import AdminClient, ConfigResource

from dataflows.ensemble import build_flow
from dataflows.io import RawMessage
from dataflows.kafka_security import confluent_config, kafka_python_config
from dataflows.settings import Settings
from dataflows.topics import ALL_TOPICS, OUTPUT_TOPICS, provision
from marketdata.generator import generate
from marketdata.replay import encoded, publish
from schemas import codec
from tests.conftest import run_records, signed, small_settings
from tests.integration.kafka_io import flow_env, on_the_wire, read_topic

GOOD = {
    "symbol": "BTC-PERP",
    "trade_id": "bad",
    "px": 42_000.0,
    "qty": 0.1,
    "side": "buy",
    "buyer": None,
    "seller": None,
    "strategy_id": "ensemble_1_1",
    "schema_version": "v1",
}


def test_provisioning_creates_every_topic_with_partitions_retention_and_cleanup(
    kafka_bootstrap, prefix
):
    created, existing = provision(kafka_bootstrap, prefix)
    assert len(created) == len(ALL_TOPICS) and not existing
    assert provision(kafka_bootstrap, prefix) == ([], sorted(created)), "idempotent"
    admin = AdminClient(confluent_config(kafka_bootstrap))
    md = admin.list_topics(timeout=10)
    for t in ALL_TOPICS:
        assert len(md.topics[t.name(prefix)].partitions) == t.partitions
    futures = admin.describe_configs([ConfigResource("topic", t.name(prefix)) for t in ALL_TOPICS])
    for res, fut in futures.items():
        cfg = fut.result(timeout=10)
        topic = next(t for t in ALL_TOPICS if t.name(prefix) == res.name)
        assert cfg["retention.ms"].value == str(topic.retention_ms)
        assert cfg["cleanup.policy"].value == topic.cleanup


def _bad_messages(ts: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, the dead-letter reason fragment) for the trades topic."""
    avro = codec.encode("trade", {**GOOD, "ts_event_ms": ts})
    return [
        (b"BTC-PERP", b"\x07garbage\xff\xfe", "undecodable"),
        (b"BTC-PERP", avro[:-4], "undecodable"),
        (
            b"BTC-PERP",
            codec.encode("trade", {**GOOD, "ts_event_ms": ts, "px": -1.0}),
            "'px' must be > 0",
        ),
        (
            b"BTC-PERP",
            codec.encode("trade", {**GOOD, "ts_event_ms": ts, "qty": 0.0}),
            "'qty' must be > 0",
        ),
        (
            b"DOGE-PERP",
            codec.encode("trade", {**GOOD, "ts_event_ms": ts, "symbol": "DOGE-PERP"}),
            "unknown symbol",
        ),
        (
            b"BTC-PERP",
            codec.encode(
                "funding",
                {
                    "symbol": "BTC-PERP",
                    "ts_event_ms": ts,
                    "strategy_id": "s",
                    "schema_version": "v1",
                    "rate": 0.1,
                },
            ),
            "undecodable",
        ),
    ]


def _context_records(
    records: list[tuple[str, dict]],
    symbols: tuple[str, ...] = ("BTC-PERP", "ETH-PERP"),
    topic: str = "ensemble.control",
) -> list[tuple[str, dict]]:
    """External overlays (15m and 1h) and cohort snapshots every 5 minutes for `symbols`,
    and operator commands signed for the control topic `topic` (a BTC halt and resume, ETH
    shadow mode on and off) over the span of `records`, so every input topic of the flow
    carries messages."""
    t0, t1 = records[0][1]["ts_event_ms"], records[-1][1]["ts_event_ms"]
    out: list[tuple[str, dict]] = []
    for sym in symbols:
        for i, ts in enumerate(range(t0 - t0 % 300_000 + 300_000, t1, 300_000)):
            out.append(
                (
                    "cohorts",
                    {
                        "symbol": sym,
                        "ts_event_ms": ts + 7_000,
                        "s_top": math.sin(i / 9),
                        "s_bot": math.cos(i / 7),
                        "s_mood": 0.5 * math.sin(i / 5),
                        "source": "test",
                    },
                )
            )
            for tf, every in (("15m", 3), ("1h", 12)):
                if i % every == 0:
                    out.append(
                        (
                            "overlays",
                            {
                                "symbol": sym,
                                "ts_event_ms": ts + 11_000,
                                "timeframe": tf,
                                "signal": math.sin(i / 13),
                                "confidence": 0.7,
                                "source": "test",
                            },
                        )
                    )
    span = t1 - t0
    for n, (sym, cmd, at) in enumerate(
        (
            ("BTC-PERP", "halt", 0.55),
            ("BTC-PERP", "resume", 0.7),
            ("ETH-PERP", "shadow_on", 0.5),
            ("ETH-PERP", "shadow_off", 0.8),
        )
    ):
        out.append(
            (
                "control",
                signed(
                    {
                        "symbol": sym,
                        "ts_event_ms": t0 + int(span * at) + 1_234,
                        "command": cmd,
                        "operator": "ops",
                        "reason": "parity test",
                        "command_id": f"parity-{n}",
                    },
                    topic=topic,
                ),
            )
        )
    return out  # fmt: skip


def _available_ms(sr: tuple[str, dict]) -> int:
    stream, rec = sr
    return rec["ts_event_ms"] + (rec["interval_ms"] if stream == "candles" else 0)


@pytest.fixture(scope="module")
def kafka_run(kafka_bootstrap, tmp_path_factory):
    """Every input topic replayed onto Kafka: the generator's trades, candles and funding,
    external overlays, cohort snapshots and signed operator commands, with bad messages
    between good trades; the flow run from and to Kafka, its outputs read back; and the
    file run over the same records in event order.

    Each topic is read at its own rate; the market step aligns them by event time (every
    input partition's progress, the minimum taken: operators/watermark.py), so funding,
    overlays, cohorts and commands reach each bar exactly as in the file run.
    """
    import uuid

    from kafka import KafkaProducer

    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    # the file run reads with the same prefix: the commands are signed for its control topic
    settings = small_settings(tmp_path_factory.mktemp("files"), ENSEMBLE_TOPIC_PREFIX=prefix)
    records = list(generate(settings.generator))
    # in the order the file run reads them: by availability (a candle at its close; the
    # generator's funding before a candle closing at the same time)
    context = _context_records(records, topic=f"{prefix}.control")
    records = sorted([*records, *context], key=_available_ms)
    producer = KafkaProducer(
        **kafka_python_config(kafka_bootstrap, acks="all", max_in_flight_requests_per_connection=1)
    )
    expected: list[str] = []
    n_trades = 0
    for stream, key, value, ts in encoded(records, "ensemble_1_1"):
        producer.send(f"{prefix}.{stream}", key=key, value=value)
        n_trades += stream == "trades"
        if stream == "trades" and n_trades % 997 == 0 and n_trades > 10_000 and len(expected) < 6:
            k, v, reason = _bad_messages(ts)[len(expected)]
            producer.send(f"{prefix}.trades", key=k, value=v)
            expected.append(reason)
    producer.flush()
    producer.close()
    assert len(expected) == 6
    # partitions idle after 2 s (not 10): the run lasts longer than the start-up grace, so
    # the alignment itself is exercised, not only the end of input
    env = {**flow_env(kafka_bootstrap, prefix), "ENSEMBLE_SOURCE_IDLE_MS": "2000"}
    run_main(build_flow(Settings.from_env(env)))
    out = {
        t.stream: read_topic(kafka_bootstrap, t.name(prefix), codec.STREAM_SCHEMAS[t.stream])
        for t in OUTPUT_TOPICS
    }
    file_run = run_records(settings, [RawMessage(s, r) for s, r in records])
    return out, file_run, expected, prefix


def _strip(recs: list[dict]) -> list[dict]:
    """Per-symbol order without the Kafka coordinates."""
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]
    return sorted(clean, key=lambda r: (r["symbol"], r["ts_event_ms"]))


def test_kafka_run_makes_the_same_decisions_as_the_file_run(kafka_run):
    out, files, _, _ = kafka_run
    for stream in ("bars", "orders", "costs", "calibration"):
        assert out[stream], f"nothing on {stream}"
        wire = on_the_wire(stream, files[stream])
        assert _strip(out[stream]) == _strip(wire), f"{stream} differs from the file run"


def _symbol(recs: list[dict], symbol: str) -> list[dict]:
    return [r for r in _strip(recs) if r["symbol"] == symbol]


@pytest.mark.parametrize("symbol", ["BTC-PERP", "ETH-PERP"])
@pytest.mark.parametrize("stream", ["executions", "rejections", "signals", "health", "ensemble"])
def test_each_symbol_gets_every_record_of_the_file_run(kafka_run, stream, symbol):
    """Funding, overlays, cohorts and commands on their own topics, read at their own
    rates, give exactly the file run's records: for BTC-PERP (bars from trades) and
    ETH-PERP (bars from candles, where a funding record stamped at a bar's close used to
    reach that bar on Kafka and the next one in the file run: the file order now puts
    funding before the candle that closes the bar at the same time)."""
    out, files, _, _ = kafka_run
    wire = on_the_wire(stream, files[stream])
    assert _symbol(out[stream], symbol) == _symbol(wire, symbol)


def test_funding_overlays_cohorts_and_commands_reach_the_same_bars_as_in_the_file_run(kafka_run):
    """Issue 14 section 5: with funding on its own topic, 100 ETH decisions carried funding
    0 instead of the real rate in a Kafka run. Each context input is used, and as the file
    run used it."""
    out, files, _, _ = kafka_run
    audits = [r for r in _strip(out["repro"]) if r["event"] == "control"]
    assert [a["command"]["command"] for a in audits] == ["halt", "resume", "shadow_on",
                                                         "shadow_off"]  # fmt: skip
    assert audits == [r for r in _strip(files["repro"]) if r["event"] == "control"]
    sig = _strip(out["signals"])
    assert sum(1 for r in sig if (r["features"] or {}).get("funding_rate")) > 100
    assert any(row["ext_signal"] for r in out["ensemble"] for row in r["timeframes"])
    assert any(r["cohort"]["source"] == "external" for r in sig)  # the snapshots
    assert any(r["trading_state"] == "HALTED" for r in out["health"])


def test_outputs_are_keyed_by_symbol(kafka_run):
    out, _, _, _ = kafka_run
    for stream in ("bars", "orders", "signals"):
        assert all(r["_key"] == r["symbol"].encode() for r in out[stream])


def test_bad_messages_land_on_the_dead_letter_topic_with_reason_and_coordinates(kafka_run):
    out, _, expected, prefix = kafka_run
    dead = out["dead_letters"]
    assert len(dead) == len(expected)
    for fragment in expected:
        assert any(fragment in d["reason"] for d in dead), (fragment, [d["reason"] for d in dead])
    for d in dead:
        assert d["source_topic"] == f"{prefix}.trades"
        assert d["source_partition"] is not None and d["source_offset"] is not None
        assert d["payload"], "the original bytes are kept"
    assert any(d["payload"] == b"\x07garbage\xff\xfe" for d in dead)


def test_the_replay_producer_publishes_every_record_in_order_keyed_by_symbol(
    kafka_bootstrap, prefix, tmp_path
):
    provision(kafka_bootstrap, prefix)
    settings = small_settings(tmp_path)
    records = list(generate(settings.generator))[:5_000]
    n = publish(kafka_bootstrap, prefix, records, progress=False)
    assert n == len(records)
    trades = read_topic(kafka_bootstrap, f"{prefix}.trades", "trade")
    sent = [r for s, r in records if s == "trades"]
    assert len(trades) == len(sent)
    assert all(t["_key"] == t["symbol"].encode() for t in trades)
    got = sorted(trades, key=lambda t: (t["_partition"], t["_offset"]))
    assert [t["trade_id"] for t in got] == [r["trade_id"] for r in sent], "order kept per key"
