"""Bad input: each malformed record becomes a dead letter with its reason; nothing else
changes. The flow keeps going and every good record around the bad ones is processed
exactly as in a run without them."""

from __future__ import annotations

import math

import pytest

from dataflows.io import RawMessage
from schemas import codec
from tests.conftest import messages, run_records, small_settings

GOOD_TRADE = {
    "symbol": "BTC-PERP",
    "trade_id": "x",
    "px": 42_000.0,
    "qty": 0.1,
    "side": "buy",
    "buyer": "0xa",
    "seller": "0xb",
}
DAY = 86_400_000


def _trade(ts: int, **changes) -> RawMessage:
    rec = {**GOOD_TRADE, "ts_event_ms": ts, **changes}
    return RawMessage("trades", {k: v for k, v in rec.items() if v is not _DROP})


_DROP = object()


def _bad_records(ts: int) -> list[tuple[RawMessage, str]]:
    """(message, a fragment its dead-letter reason must contain)."""
    avro_trade = codec.encode(
        "trade", {**GOOD_TRADE, "ts_event_ms": ts, "strategy_id": "s", "schema_version": "v1"}
    )
    return [
        (_trade(ts, px=_DROP), "missing field 'px'"),
        (_trade(ts, px="42000"), "'px' must be a number"),
        (_trade(ts, qty=True), "'qty' must be a number"),
        (_trade(ts, px=math.nan), "'px' must be finite"),
        (_trade(ts, px=-5.0), "'px' must be > 0"),
        (_trade(ts, qty=0.0), "'qty' must be > 0"),
        (_trade(ts, qty=-0.5), "'qty' must be > 0"),
        (_trade(ts, side="long"), "'side' must be 'buy' or 'sell'"),
        (_trade(ts, symbol="DOGE-PERP"), "unknown symbol 'DOGE-PERP'"),
        (_trade(ts, ts_event_ms="yesterday"), "'ts_event_ms' must be an integer"),
        (_trade(ts - 3 * DAY), "late: event time"),
        (_trade(4_070_908_800_000), "in the future"),  # 2099
        (_trade(ts + 700 * DAY), "far out of order"),  # in the past, but years past the stream
        (
            RawMessage(
                "candles",
                {
                    "symbol": "ETH-PERP",
                    "ts_event_ms": ts - ts % 60_000,
                    "interval_ms": 60_000,
                    "open": 10.0,
                    "high": 9.0,
                    "low": 11.0,
                    "close": 10.0,
                    "volume": 1.0,
                },
            ),
            "candle is inconsistent",
        ),
        (
            RawMessage("funding", {"symbol": "BTC-PERP", "ts_event_ms": ts, "rate": "high"}),
            "'rate' must be a number",
        ),
        (
            RawMessage(
                "control",
                {
                    "symbol": "*",
                    "ts_event_ms": ts,
                    "command": "explode",
                    "operator": "ops",
                    "reason": "test",
                    "command_id": "c1",
                },
            ),
            "'command' must be one of",
        ),
        (
            RawMessage(
                "overlays",
                {
                    "symbol": "BTC-PERP",
                    "ts_event_ms": ts,
                    "timeframe": "1h",
                    "signal": 3.0,
                    "confidence": 0.5,
                },
            ),
            "'signal' must be in",
        ),
        (RawMessage("trades", b"\x00\xffnot avro at all"), "undecodable"),
        (RawMessage("trades", avro_trade[:-3]), "undecodable"),
        (RawMessage("trades", avro_trade + b"\x00\x00"), "trailing bytes"),
        (RawMessage("quotes", {"symbol": "BTC-PERP"}), "unknown input stream 'quotes'"),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    settings = small_settings(tmp_path_factory.mktemp("dl"))
    good = messages(settings)
    mixed: list[RawMessage] = []
    expected: list[str] = []
    step = len(good) // 30
    bad_iter = iter(range(10**6))
    for i, m in enumerate(good):
        mixed.append(m)
        if i and i % step == 0 and m.stream == "trades" and i > len(good) // 3:
            n = next(bad_iter)
            bads = _bad_records(m.payload["ts_event_ms"])
            if n < len(bads):
                msg, reason = bads[n]
                mixed.append(msg)
                expected.append(reason)
    assert len(expected) >= 18, "not all kinds of bad record were inserted"
    return run_records(settings, good), run_records(settings, mixed), expected


def test_each_bad_record_reaches_the_dead_letters_with_its_reason(runs):
    _, mixed, expected = runs
    reasons = [d["reason"] for d in mixed["dead_letters"]]
    assert len(reasons) == len(expected)
    for fragment in expected:
        assert any(fragment in r for r in reasons), f"no dead letter says {fragment!r}: {reasons}"


def test_dead_letters_keep_the_original_bytes(runs):
    _, mixed, _ = runs
    raw = [d["payload"] for d in mixed["dead_letters"]]
    assert b"\x00\xffnot avro at all" in raw
    assert all(isinstance(p, bytes) and p for p in raw)


def test_every_good_record_is_processed_as_if_the_bad_ones_were_absent(runs):
    good, mixed, _ = runs
    for stream in set(good) | set(mixed):
        if stream in ("dead_letters", "summary"):
            continue
        by_symbol = sorted(mixed[stream], key=lambda r: r["symbol"])  # stable: per-symbol order
        assert by_symbol == sorted(good[stream], key=lambda r: r["symbol"]), f"{stream} changed"


def test_dead_letters_encode_with_their_schema(runs):
    _, mixed, _ = runs
    for d in mixed["dead_letters"]:
        assert codec.decode("dead_letter", codec.encode("dead_letter", d))["reason"] == d["reason"]


def test_a_tombstone_and_schema_registry_framing_say_what_they_are():
    """A null value (Kafka's tombstone) or an empty message said only
    "undecodable: bytes do not decode as 'trade': EOFError: ", and Avro in the Schema
    Registry's framing (what a registry serializer sends) an error from deep in its bytes."""
    from operators.events import InvalidRecord, decode

    avro = codec.encode(
        "trade",
        {
            **GOOD_TRADE,
            "ts_event_ms": 1_704_067_200_000,
            "strategy_id": "s",
            "schema_version": "v1",
        },
    )
    symbols, now = frozenset({"BTC-PERP"}), 1_704_067_200_000
    with pytest.raises(InvalidRecord, match=r"^undecodable: empty payload \(a tombstone"):
        decode("trades", b"", symbols, now, 300_000)
    framed = b"\x00" + (42).to_bytes(4, "big") + avro
    with pytest.raises(
        InvalidRecord, match=r"^undecodable: .*Schema Registry framing: magic byte 0, schema id 42"
    ):
        decode("trades", framed, symbols, now, 300_000)
    with pytest.raises(InvalidRecord) as plain:
        decode("trades", b"\x07garbage", symbols, now, 300_000)
    assert "framing" not in str(plain.value)
