"""Input validation: every parser accepts a good record and names what is wrong with a bad one."""

from __future__ import annotations

import pytest

from operators.events import (
    BUY,
    SELL,
    InvalidRecord,
    check_not_future,
    decode,
    parse_candle,
    parse_cohort,
    parse_control,
    parse_funding,
    parse_overlay,
    parse_trade,
)
from schemas.codec import encode

SYMBOLS = frozenset({"BTC-PERP"})
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z

GOOD = {
    "trade": (
        parse_trade,
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": T0 + 123,
            "px": 42_000.5,
            "qty": 0.01,
            "side": "buy",
            "trade_id": "t-1",
            "buyer": "0xabc",
            "seller": "0xdef",
        },
    ),
    "candle": (
        parse_candle,
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": T0,
            "interval_ms": 60_000,
            "open": 100.0,
            "high": 110.0,
            "low": 90.0,
            "close": 105.0,
            "volume": 3.5,
        },
    ),
    "funding": (parse_funding, {"symbol": "BTC-PERP", "ts_event_ms": T0, "rate": 0.0001}),
    "overlay": (
        parse_overlay,
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": T0,
            "timeframe": "1h",
            "signal": -0.4,
            "confidence": 0.7,
            "source": "desk",
        },
    ),
    "cohort": (
        parse_cohort,
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": T0,
            "s_top": 0.3,
            "s_bot": -0.2,
            "s_mood": 0.25,
            "source": "vendor",
        },
    ),
    "control": (
        parse_control,
        {
            "symbol": "BTC-PERP",
            "ts_event_ms": T0,
            "command": "halt",
            "operator": "alice",
            "reason": "drill",
            "command_id": "cmd-1",
        },
    ),
}

REQUIRED = {
    "trade": ["symbol", "ts_event_ms", "px", "qty", "side", "trade_id"],
    "candle": ["symbol", "ts_event_ms", "interval_ms", "open", "high", "low", "close", "volume"],
    "funding": ["symbol", "ts_event_ms", "rate"],
    "overlay": ["symbol", "ts_event_ms", "timeframe", "signal", "confidence"],
    "cohort": ["symbol", "ts_event_ms", "s_top", "s_bot", "s_mood"],
    "control": ["symbol", "ts_event_ms", "command", "operator", "reason", "command_id"],
}


def _parse(kind: str, **changes):
    parser, good = GOOD[kind]
    rec = dict(good)
    for k, v in changes.items():
        if v is _DROP:
            rec.pop(k)
        else:
            rec[k] = v
    return parser(rec, SYMBOLS)


_DROP = object()


def _rejects(kind: str, match: str, **changes) -> None:
    with pytest.raises(InvalidRecord, match=match):
        _parse(kind, **changes)


# good records


def test_good_trade_is_parsed_with_side_as_a_sign():
    t = _parse("trade")
    assert (t.symbol, t.ts_event_ms, t.px, t.qty, t.side) == (
        "BTC-PERP",
        T0 + 123,
        42_000.5,
        0.01,
        BUY,
    )
    assert (t.buyer, t.seller, t.trade_id) == ("0xabc", "0xdef", "t-1")
    assert _parse("trade", side="sell").side == SELL


def test_trade_without_addresses_is_accepted():
    t = _parse("trade", buyer=_DROP, seller=None)
    assert (t.buyer, t.seller) == (None, None)


def test_good_candle_funding_overlay_cohort_and_control_are_parsed():
    assert _parse("candle").close == 105.0
    assert _parse("funding").rate == 0.0001
    assert (_parse("overlay").timeframe, _parse("overlay").signal) == ("1h", -0.4)
    assert _parse("cohort").s_mood == 0.25
    assert _parse("control").command == "halt"


def test_integer_prices_are_accepted_as_numbers():
    assert _parse("trade", px=42_000).px == 42_000.0


def test_control_command_for_every_symbol_is_accepted():
    assert _parse("control", symbol="*").symbol == "*"


def test_overlay_and_cohort_without_source_default_to_external():
    assert _parse("overlay", source=_DROP).source == "external"
    assert _parse("cohort", source=None).source == "external"


# missing fields


@pytest.mark.parametrize(
    ("kind", "name"), [(k, f) for k, fields in REQUIRED.items() for f in fields]
)
def test_missing_field_is_rejected_naming_the_field(kind, name):
    _rejects(kind, f"missing field '{name}'", **{name: _DROP})


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_null_timestamp_is_rejected_as_missing(kind):
    _rejects(kind, "missing field 'ts_event_ms'", ts_event_ms=None)


# wrong types


@pytest.mark.parametrize(
    ("kind", "name", "value", "match"),
    [
        ("trade", "px", "42000", "field 'px' must be a number"),
        ("trade", "px", True, "field 'px' must be a number"),
        ("trade", "qty", False, "field 'qty' must be a number"),
        ("trade", "ts_event_ms", "1704067200000", "field 'ts_event_ms' must be an integer"),
        ("trade", "ts_event_ms", True, "field 'ts_event_ms' must be an integer"),
        ("trade", "ts_event_ms", float(T0), "field 'ts_event_ms' must be an integer"),
        ("trade", "side", 1, "field 'side' must be a non-empty string"),
        ("trade", "trade_id", 17, "field 'trade_id' must be a non-empty string"),
        ("trade", "buyer", 17, "field 'buyer' must be a string or null"),
        ("trade", "symbol", 1, "field 'symbol' must be a non-empty string"),
        ("candle", "interval_ms", 60_000.0, "field 'interval_ms' must be an integer"),
        ("candle", "volume", "3.5", "field 'volume' must be a number"),
        ("funding", "rate", True, "field 'rate' must be a number"),
        ("overlay", "confidence", "high", "field 'confidence' must be a number"),
        ("cohort", "s_top", [0.1], "field 's_top' must be a number"),
        ("control", "operator", "", "field 'operator' must be a non-empty string"),
    ],
)
def test_wrong_type_is_rejected_naming_the_field(kind, name, value, match):
    _rejects(kind, match, **{name: value})


# NaN and infinity


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("trade", "px"),
        ("trade", "qty"),
        ("candle", "open"),
        ("candle", "volume"),
        ("funding", "rate"),
        ("overlay", "signal"),
        ("overlay", "confidence"),
        ("cohort", "s_top"),
        ("cohort", "s_bot"),
        ("cohort", "s_mood"),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_number_is_rejected_naming_the_field(kind, name, bad):
    _rejects(kind, f"field '{name}' must be finite", **{name: bad})


# prices and sizes


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("trade", "px"),
        ("candle", "open"),
        ("candle", "high"),
        ("candle", "low"),
        ("candle", "close"),
    ],
)
@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_zero_or_negative_price_is_rejected_naming_the_field(kind, name, bad):
    _rejects(kind, f"field '{name}' must be > 0", **{name: bad})


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_zero_or_negative_trade_size_is_rejected(bad):
    _rejects("trade", "field 'qty' must be > 0", qty=bad)


def test_negative_candle_volume_is_rejected():
    _rejects("candle", "field 'volume' must be >= 0", volume=-1.0)


def test_zero_candle_volume_is_accepted():
    assert _parse("candle", volume=0.0).volume == 0.0


def test_inconsistent_candle_is_rejected():
    _rejects("candle", "candle is inconsistent", low=106.0)
    _rejects("candle", "candle is inconsistent", high=104.0)


def test_candle_open_off_its_interval_boundary_is_rejected():
    _rejects("candle", "not on a 60000 ms boundary", ts_event_ms=T0 + 1_000)


# ranges


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("funding", "rate", 0.06),
        ("funding", "rate", -0.06),
        ("overlay", "signal", 1.01),
        ("overlay", "confidence", -0.01),
        ("overlay", "confidence", 1.5),
        ("cohort", "s_top", -1.2),
        ("cohort", "s_mood", 2.0),
    ],
)
def test_value_out_of_its_range_is_rejected_naming_the_field(kind, name, value):
    _rejects(kind, f"field '{name}' must be in", **{name: value})


@pytest.mark.parametrize("ts", [0, 1_000_000_000, 5_000_000_000_000])
def test_timestamp_outside_2009_to_2100_is_rejected(ts):
    _rejects("trade", "ts_event_ms", ts_event_ms=ts)


# symbols and enums


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_unknown_symbol_is_rejected(kind):
    _rejects(kind, "unknown symbol 'ETH-PERP'", symbol="ETH-PERP")


@pytest.mark.parametrize("kind", ["trade", "candle", "funding", "overlay", "cohort"])
def test_wildcard_symbol_is_only_for_control_commands(kind):
    _rejects(kind, "unknown symbol", symbol="*")


@pytest.mark.parametrize(
    ("kind", "name", "value", "match"),
    [
        ("trade", "side", "long", "field 'side' must be 'buy' or 'sell'"),
        ("trade", "side", "BUY", "field 'side' must be 'buy' or 'sell'"),
        ("overlay", "timeframe", "5m", "field 'timeframe' must be one of"),
        ("control", "command", "liquidate", "field 'command' must be one of"),
        ("candle", "interval_ms", 180_000, "interval_ms"),
    ],
)
def test_bad_enum_value_is_rejected_naming_the_field(kind, name, value, match):
    _rejects(kind, match, **{name: value})


@pytest.mark.parametrize(
    "command", ["halt", "resume", "reset_kill_switch", "shadow_on", "shadow_off"]
)
def test_every_documented_control_command_is_accepted(command):
    assert _parse("control", command=command).command == command


# clock skew


def test_timestamp_beyond_now_plus_skew_is_refused():
    with pytest.raises(InvalidRecord, match="in the future"):
        check_not_future(T0 + 60_001, now_ms=T0, max_skew_ms=60_000)


def test_timestamp_at_now_plus_skew_is_accepted():
    check_not_future(T0 + 60_000, now_ms=T0, max_skew_ms=60_000)


def test_decode_refuses_a_future_record_even_when_it_is_valid():
    _, good = GOOD["trade"]
    with pytest.raises(InvalidRecord, match="in the future"):
        decode("trades", good, SYMBOLS, now_ms=T0 - 10 * 60_000, max_clock_skew_ms=60_000)


# decode


def test_decode_reads_avro_bytes_into_a_validated_trade():
    _, good = GOOD["trade"]
    t = decode("trades", encode("trade", good), SYMBOLS, now_ms=T0, max_clock_skew_ms=60_000)
    assert (t.px, t.qty, t.buyer) == (42_000.5, 0.01, "0xabc")


def test_decode_turns_garbage_bytes_into_an_undecodable_record():
    with pytest.raises(InvalidRecord, match="undecodable"):
        decode("trades", b"\x00\xff\x13", SYMBOLS, now_ms=T0, max_clock_skew_ms=60_000)


def test_decode_refuses_an_unknown_stream():
    with pytest.raises(InvalidRecord, match="unknown input stream 'orders'"):
        decode("orders", {}, SYMBOLS, now_ms=T0, max_clock_skew_ms=60_000)


def test_an_address_longer_than_128_characters_is_refused_with_its_length():
    from operators.events import InvalidRecord, parse_trade

    rec = {"symbol": "BTC-PERP", "ts_event_ms": 1_704_067_200_000, "trade_id": "1",
           "px": 1.0, "qty": 1.0, "side": "buy", "buyer": "0x" + "a" * 127}  # fmt: skip
    with pytest.raises(InvalidRecord, match="field 'buyer' is 129 characters long"):
        parse_trade(rec, frozenset({"BTC-PERP"}))
    assert parse_trade({**rec, "buyer": "0x" + "a" * 126}, frozenset({"BTC-PERP"})).buyer
