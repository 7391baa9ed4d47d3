"""The whole dataflow on the embedded generator: outputs, schemas, audit, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas import codec
from tests.conftest import run_files, run_records, small_settings


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return run_records(small_settings(tmp_path_factory.mktemp("out")))


def test_a_run_emits_bars_signals_orders_executions_and_telemetry(outputs):
    for stream in (
        "bars",
        "signals",
        "ensemble",
        "health",
        "orders",
        "executions",
        "costs",
        "calibration",
        "repro",
    ):
        assert outputs[stream], f"no {stream} records"
    bars = Counter((b["symbol"], b["timeframe"]) for b in outputs["bars"])
    for sym in ("BTC-PERP", "ETH-PERP"):
        assert bars[(sym, "5m")] == 2 * 288
        assert bars[(sym, "15m")] == 2 * 96
        assert bars[(sym, "1h")] == 2 * 24
    signals = Counter(s["symbol"] for s in outputs["signals"])
    assert signals == {"BTC-PERP": 576, "ETH-PERP": 576}, "one signals event per 5m close"


def test_every_emitted_record_encodes_with_its_schema(outputs):
    for stream, records in outputs.items():
        if stream == "summary":
            continue
        name = codec.STREAM_SCHEMAS[stream]
        for rec in records:
            assert codec.decode(name, codec.encode(name, rec)) is not None


def test_every_intent_has_exactly_one_execution_or_rejection(outputs):
    intents = [o["decision_id"] for o in outputs["orders"]]
    assert len(intents) == len(set(intents)), "every order has its own id"
    coids = [o["client_order_id"] for o in outputs["orders"]]
    assert len(coids) == len(set(coids)), "every order has its own client order id"
    answers = Counter(e["decision_id"] for e in outputs["executions"])
    answers.update(r["decision_id"] for r in outputs["rejections"])  # every rejection counts
    assert {d: answers[d] for d in intents} == dict.fromkeys(intents, 1)
    assert {e["decision_id"] for e in outputs["executions"]} <= set(intents)


def test_every_exit_names_the_entry_it_closes_and_no_signal_says_vetoed_then(outputs):
    orders = {o["decision_id"]: o for o in outputs["orders"]}
    exits = [o for o in orders.values() if o["purpose"] in ("time_exit", "kill_switch_flatten")]
    assert exits
    for x in exits:
        entry = orders[x["entry_decision_id"]]
        assert entry["purpose"] in ("entry", "flip") and entry["symbol"] == x["symbol"]
        assert entry["ts_event_ms"] < x["ts_event_ms"]
    exit_bars = {(x["symbol"], x["ts_event_ms"]) for x in exits}
    for sig in outputs["signals"]:
        if (sig["symbol"], sig["ts_event_ms"]) in exit_bars:
            assert sig["decision"]["action"] == "exit", sig["decision"]
    fills = {e["decision_id"]: e for e in outputs["executions"]}
    for x in exits:
        if x["decision_id"] in fills:
            assert fills[x["decision_id"]]["entry_decision_id"] == x["entry_decision_id"]


def test_fills_happen_at_the_next_bars_open_never_the_decision_bar(outputs):
    opens = {
        (b["symbol"], b["start_ms"]): b["open"] for b in outputs["bars"] if b["timeframe"] == "5m"
    }
    intents = {o["decision_id"]: o for o in outputs["orders"]}
    assert outputs["executions"]
    for ex in outputs["executions"]:
        intent = intents[ex["decision_id"]]
        # the decision bar ends at the intent's time; the fill bar starts there
        assert ex["ts_event_ms"] == intent["ts_event_ms"]
        assert ex["ref_px"] == opens[(ex["symbol"], intent["ts_event_ms"])]
        slip = ex["slippage_bps"] / 1e4
        side = 1 if ex["side"] == "buy" else -1
        assert ex["fill_px"] == pytest.approx(ex["ref_px"] * (1 + side * slip), rel=1e-12)


def test_no_trade_happens_before_the_warm_up_ends(outputs):
    first_bar = min(b["end_ms"] for b in outputs["bars"] if b["timeframe"] == "5m")
    earliest_order = min(o["ts_event_ms"] for o in outputs["orders"])
    assert earliest_order >= first_bar + 150 * 300_000  # bars 1..150 warm up; 151 may trade


def test_a_run_starts_with_a_configuration_audit(outputs):
    starts = [r for r in outputs["repro"] if r["event"] == "start"]
    assert {r["symbol"] for r in starts} == {"BTC-PERP", "ETH-PERP"}
    assert all('"CONF_MIN": 0.65' in r["config_json"] for r in starts)


def test_two_runs_with_the_same_seed_write_byte_identical_files(tmp_path):
    a = run_files(small_settings(tmp_path / "a"))
    b = run_files(small_settings(tmp_path / "b"))
    assert set(a) >= {"bars.jsonl", "signals.jsonl", "orders.jsonl", "executions.jsonl"}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs"


def test_a_different_seed_gives_a_different_market(tmp_path):
    a = run_files(small_settings(tmp_path / "a"))
    b = run_files(small_settings(tmp_path / "b", ENSEMBLE_SEED="12"))
    assert a["bars.jsonl"] != b["bars.jsonl"]
