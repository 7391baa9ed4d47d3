"""Avro read as columns (schemas/columns.py) against fastavro (schemas/codec.decode).

The column reader may decline a batch (None), never decode it otherwise than fastavro:
on seeded records of every shape the trade schema allows and on the same bytes broken
(a byte changed, cut, added or inserted), whenever it answers, every row is fastavro's
decode of that message, to the bit of each float; and it answers for ordinary batches.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import numpy as np
import pytest

from schemas.codec import SchemaError, decode, encode, with_defaults
from schemas.columns import Texts, decode_columns, flat_fields


def _trade(rng: random.Random, k: int) -> dict[str, Any]:
    return {
        "symbol": rng.choice(["BTC-PERP", "ETH-PERP", ""]),
        "ts_event_ms": rng.choice(
            [1_700_000_000_000 + k, -1, 0, rng.randrange(-(2**62), 2**62), 2**62 - 1, -(2**62)]
        ),
        "trade_id": rng.choice(["", str(k), "x" * rng.randrange(300)]),
        "px": rng.choice([1.5, float("nan"), -0.0, float("inf"), rng.random() * 1e5, 5e-324]),
        "qty": rng.random(),
        "side": rng.choice(["buy", "sell", "b", "BUY"]),
        "buyer": rng.choice([None, "", "0x" + "ab" * 20]),
        "seller": rng.choice([None, "0xcd"]),
        "venue": rng.choice([None, "binance", "hyperliquid"]),
        "strategy_id": rng.choice(["ensemble_1_1", ""]),
    }


def _rows(cols: dict[str, Any], n: int) -> list[dict[str, Any]]:
    listed = {k: v.tolist() for k, v in cols.items()}
    return [{k: listed[k][i] for k in cols} for i in range(n)]


def _bits(rec: dict[str, Any]) -> dict[str, Any]:
    """Floats by their bits: NaN equals NaN, -0.0 differs from 0.0."""
    return {k: struct.pack("<d", v) if isinstance(v, float) else v for k, v in rec.items()}


def _fastavro(payloads: list[bytes]) -> list[dict[str, Any]] | None:
    try:
        return [decode("trade", p) for p in payloads]
    except SchemaError:
        return None


def _broken(rng: random.Random, payload: bytes) -> bytes:
    p = bytearray(payload)
    op = rng.random()
    if op < 0.3:
        p[rng.randrange(len(p))] = rng.randrange(256)
    elif op < 0.5:
        p = p[: rng.randrange(len(p))]
    elif op < 0.7:
        p.append(rng.randrange(256))
    else:
        at = rng.randrange(len(p) + 1)
        p[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
    return bytes(p)


def test_columns_are_fastavros_decode_or_nothing():
    rng = random.Random(31)
    answered = declined_decodable = 0
    for trial in range(2_500):
        payloads = [
            encode("trade", with_defaults("trade", _trade(rng, k)))
            for k in range(rng.randrange(1, 24))
        ]
        if trial % 2:
            i = rng.randrange(len(payloads))
            payloads[i] = _broken(rng, payloads[i])
        cols = decode_columns("trade", payloads)
        want = _fastavro(payloads)
        if cols is None:
            declined_decodable += want is not None
            continue
        assert want is not None, f"trial {trial}: fastavro refuses what the columns read"
        got = _rows(cols, len(payloads))
        assert [_bits(g) for g in got] == [_bits(w) for w in want], f"trial {trial}"
        answered += 1
    assert answered > 1_200  # every unbroken batch, and broken ones that still decode
    assert declined_decodable < 50  # the reader's own limits, not refusals of good bytes


def _plain(n: int) -> list[bytes]:
    rec = {"symbol": "BTC-PERP", "ts_event_ms": 1_700_000_000_000, "trade_id": "Q",
           "px": 42_000.5, "qty": 0.25, "side": "buy"}  # fmt: skip
    return [encode("trade", with_defaults("trade", rec)) for _ in range(n)]


@pytest.mark.parametrize(
    "change, fastavro_reads",
    [
        (lambda p: p + b"\x00", False),  # trailing bytes
        (lambda p: p[:-1], False),  # cut short
        (lambda p: p.replace(b"\x02Q", b"\x04\xc3\xa9"), True),  # trade_id "é": UTF-8
        (lambda p: p.replace(b"\x02Q", b"\x02\xff"), False),  # not UTF-8
        (lambda p: p.replace(b"\x02Q", b"\x01Q"), False),  # a negative length
        (lambda p: p[:-1] + b"\x04", False),  # venue: a union branch the schema lacks
    ],
)
def test_a_message_the_reader_leaves_to_fastavro_declines_the_batch(change, fastavro_reads):
    payloads = _plain(100)
    assert decode_columns("trade", payloads) is not None
    assert payloads[57].count(b"\x02Q") == 1  # the trade id's length and text, once
    payloads[57] = change(payloads[57])
    assert decode_columns("trade", payloads) is None
    assert (_fastavro(payloads) is not None) == fastavro_reads


def test_a_long_past_nine_varint_bytes_is_left_to_fastavro():
    far = encode("trade", with_defaults("trade", {**_trade(random.Random(1), 0),
                                                  "ts_event_ms": 2**62}))  # fmt: skip
    assert decode_columns("trade", [far]) is None
    assert decode("trade", far)["ts_event_ms"] == 2**62
    near = encode("trade", with_defaults("trade", {**_trade(random.Random(1), 0),
                                                   "ts_event_ms": 2**62 - 1}))  # fmt: skip
    cols = decode_columns("trade", [near])
    assert cols is not None and cols["ts_event_ms"].tolist() == [2**62 - 1]


def test_texts_compare_and_select_rows_without_making_strings():
    payloads = _plain(5)
    sell = {**decode("trade", payloads[2]), "side": "sell", "venue": "x"}
    payloads[2] = encode("trade", sell)
    cols = decode_columns("trade", payloads)
    assert cols is not None
    side, venue = cols["side"], cols["venue"]
    assert isinstance(side, Texts) and side.equal("buy").tolist() == [1, 1, 0, 1, 1]
    assert side.equal("sel").tolist() == [0] * 5 and side.equal("").tolist() == [0] * 5
    assert venue.equal(None).tolist() == [1, 1, 0, 1, 1] and not venue.all_null()
    assert venue.take(np.array([0, 1])).all_null() and venue.take(np.array([2])).tolist() == ["x"]
    assert side.first() == "buy" and venue.first() is None


def test_only_flat_schemas_are_read_as_columns():
    assert flat_fields("trade") == (
        ("symbol", "string"), ("ts_event_ms", "long"), ("strategy_id", "string"),
        ("schema_version", "string"), ("trade_id", "string"), ("px", "double"),
        ("qty", "double"), ("side", "string"), ("buyer", "nullable"), ("seller", "nullable"),
        ("venue", "nullable"),
    )  # fmt: skip
    assert flat_fields("bar") is None  # a bar holds a record: fastavro reads it
    assert decode_columns("bar", [b"\x00"]) is None and decode_columns("trade", []) is None


def test_the_count_of_bytes_outside_ascii_before_each_position_is_a_plain_count():
    from schemas.columns import _HighBytes

    rng = np.random.default_rng(16)
    for n in (8, 64, 4_096):
        raw = rng.integers(0, 256, n, dtype=np.uint8)
        raw[rng.random(n) < 0.7] &= 0x7F  # mostly ASCII, as trades are
        pos = np.arange(n)  # each byte of each word
        want = np.concatenate(([0], np.cumsum(raw >= 0x80)))[pos]
        assert (_HighBytes(raw).before(pos) == want).all()
