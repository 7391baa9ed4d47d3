"""Live market data without a broker: the venue parsers (one for live frames and recorded
captures), the symbol map, the bounded dedup window, backoff, REST weight budgets and the
ingestor's settings."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from marketdata.files import FileSpec, load_trades
from marketdata.live.binance import Binance, BinanceParser
from marketdata.live.dedup import SeenWindow
from marketdata.live.frames import FrameError, capture_line, capture_lines
from marketdata.live.hyperliquid import Hyperliquid, HyperliquidParser
from marketdata.live.ingestor import ConfigError, IngestorConfig, backoff_s
from marketdata.live.ratelimit import WeightBudget
from marketdata.live.symbols import UnknownSymbol, ensemble_symbol, venue_symbol
from tests.venue_servers import BINANCE_CAPTURE, HL_CAPTURE, capture_or_skip

HOUR_MS = 3_600_000
HL_TRADE = {
    "coin": "BTC",
    "side": "A",
    "px": "105056.0",
    "sz": "0.5",
    "time": 1737918794873,
    "hash": "0x00",
    "tid": 42,
    "users": ["0xbuyer", "0xseller"],
}
AGG = {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 7, "p": "61800.3", "q": "0.2"}
AGG.update({"f": 10, "l": 12, "T": 1723161256322, "m": True})


def hl(channel: str, data: object) -> str:
    return json.dumps({"channel": channel, "data": data})


def bn(data: dict) -> str:
    return json.dumps({"stream": "btcusdt@x", "data": data})


# -- symbol map ----------------------------------------------------------------------------------
def test_one_symbol_map_names_each_market_on_each_venue():
    assert venue_symbol("BTC-PERP", "hyperliquid") == "BTC"
    assert venue_symbol("BTC-PERP", "binance") == "BTCUSDT"
    assert ensemble_symbol("binance", "btcusdt") == "BTC-PERP"
    assert ensemble_symbol("hyperliquid", "ETH") == "ETH-PERP"
    with pytest.raises(UnknownSymbol, match="DOGE"):
        ensemble_symbol("hyperliquid", "DOGE")


# -- Hyperliquid ---------------------------------------------------------------------------------
def test_hyperliquid_trade_keeps_both_addresses_and_the_aggressor_side():
    parsed = HyperliquidParser().parse(hl("trades", [HL_TRADE]), 0)
    (item,) = parsed.items
    assert parsed.kind == "trades" and item.stream == "trades"
    assert item.record == {
        "symbol": "BTC-PERP",
        "ts_event_ms": 1737918794873,
        "trade_id": "42",
        "px": 105056.0,
        "qty": 0.5,
        "side": "sell",  # A: the aggressor sold
        "buyer": "0xbuyer",
        "seller": "0xseller",
        "venue": "hyperliquid",  # the flow's duplicate check is by (venue, trade id)
    }
    assert item.dedup_key == ("trades", "BTC-PERP", "42")


def test_hyperliquid_candle_is_published_when_the_next_minute_starts_with_its_last_update():
    p = HyperliquidParser()
    c = {"t": 60_000, "T": 119_999, "s": "BTC", "i": "1m", "o": "1", "h": "2", "l": "1", "v": "3"}
    assert p.parse(hl("candle", {**c, "c": "1.5"}), 0).items == []
    assert p.parse(hl("candle", {**c, "c": "1.7", "v": "4"}), 0).items == []
    (closed,) = p.parse(hl("candle", {**c, "t": 120_000, "c": "1.8"}), 0).items
    assert closed.record["ts_event_ms"] == 60_000
    assert (closed.record["close"], closed.record["volume"]) == (1.7, 4.0)


def test_hyperliquid_funding_settles_the_last_rate_at_each_hour():
    p = HyperliquidParser()
    ctx = {"coin": "BTC", "ctx": {"funding": "0.0000125", "openInterest": "1"}}
    t0 = 10 * HOUR_MS + 5_000
    assert p.parse(hl("activeAssetCtx", ctx), t0).items == []
    later = {"coin": "BTC", "ctx": {"funding": "0.00002"}}
    assert p.parse(hl("activeAssetCtx", later), t0 + 60_000).items == []
    (f,) = p.parse(hl("activeAssetCtx", ctx), 11 * HOUR_MS + 1_000).items
    assert f.record == {"symbol": "BTC-PERP", "ts_event_ms": 11 * HOUR_MS, "rate": 0.00002}


def test_hyperliquid_control_and_book_frames_publish_nothing():
    p = HyperliquidParser()
    for channel in ("pong", "subscriptionResponse", "l2Book"):
        assert p.parse(hl(channel, {}), 0).items == []


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"channel":"trades","data":[{"coin":"BTC"', "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        ("[1, 2]", "not an object"),
        (hl("fills", []), "unknown hyperliquid channel 'fills'"),
        (hl("trades", [{**HL_TRADE, "px": "-1"}]), "'px' must be a finite number > 0"),
        (hl("trades", [{**HL_TRADE, "sz": "NaN"}]), "'sz' must be a finite number > 0"),
        (hl("trades", [{**HL_TRADE, "coin": "DOGE"}]), "unknown hyperliquid symbol 'DOGE'"),
        (hl("trades", [{**HL_TRADE, "side": "X"}]), "'side' must be B or A"),
        (hl("trades", [{k: v for k, v in HL_TRADE.items() if k != "tid"}]), "missing field 'tid'"),
        (hl("trades", [{**HL_TRADE, "users": ["0xa"]}]), "'users' must be [buyer, seller]"),
        (hl("trades", [{**HL_TRADE, "time": 2**63}]), "'time' is outside the signed 64-bit"),
        (hl("trades", {"coin": "BTC"}), "'data' must be a list"),
        (hl("error", "Invalid subscription"), "hyperliquid error frame"),
    ],
)
def test_hyperliquid_malformed_frames_raise_with_a_reason(frame, reason):
    with pytest.raises(FrameError) as e:
        HyperliquidParser().parse(frame, 0)
    assert reason in str(e.value)


def test_hyperliquid_subscribes_to_trades_candles_and_funding_per_coin():
    msgs = [json.loads(m) for m in Hyperliquid().subscribe_messages(["BTC-PERP", "ETH-PERP"])]
    subs = {(m["subscription"]["type"], m["subscription"]["coin"]) for m in msgs}
    assert all(m["method"] == "subscribe" for m in msgs)
    assert subs == {(t, c) for t in ("trades", "candle", "activeAssetCtx") for c in ("BTC", "ETH")}
    assert json.loads(Hyperliquid().keepalive_message()) == {"method": "ping"}


# -- Binance -------------------------------------------------------------------------------------
def test_binance_agg_trade_takes_the_aggressor_from_the_maker_flag():
    (item,) = BinanceParser().parse(bn(AGG), 0).items
    assert item.record["side"] == "sell" and item.record["trade_id"] == "7"
    (item,) = BinanceParser().parse(bn({**AGG, "m": False}), 0).items
    assert item.record["side"] == "buy" and item.record["ts_event_ms"] == 1723161256322


def test_binance_trade_frames_parse_and_non_market_trades_are_left_out():
    d = {"e": "trade", "E": 1, "T": 2_000_000_000_000, "s": "BTCUSDT", "t": 5, "p": "1", "q": "2"}
    (item,) = BinanceParser().parse(bn({**d, "X": "MARKET", "m": False}), 0).items
    assert (item.record["trade_id"], item.record["side"]) == ("5", "buy")
    assert BinanceParser().parse(bn({**d, "X": "INSURANCE_FUND", "m": False}), 0).items == []


def test_binance_publishes_closed_klines_only():
    k = {"t": 60_000, "T": 119_999, "s": "BTCUSDT", "i": "1m", "o": "1", "c": "2", "h": "3"}
    k.update({"l": "0.5", "v": "10", "n": 3})
    frame = {"e": "kline", "E": 1, "s": "BTCUSDT"}
    assert BinanceParser().parse(bn({**frame, "k": {**k, "x": False}}), 0).items == []
    (c,) = BinanceParser().parse(bn({**frame, "k": {**k, "x": True}}), 0).items
    assert c.record["ts_event_ms"] == 60_000 and c.record["interval_ms"] == 60_000
    assert (c.record["open"], c.record["high"], c.record["low"], c.record["close"]) == (
        1,
        3,
        0.5,
        2,
    )


def test_binance_funding_settles_the_rate_seen_when_the_next_funding_time_moves_on():
    p = BinanceParser()
    mark = {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1", "r": "0.0001"}
    assert p.parse(bn({**mark, "T": 8 * HOUR_MS}), 0).items == []
    assert p.parse(bn({**mark, "r": "0.00012", "T": 8 * HOUR_MS}), 0).items == []
    (f,) = p.parse(bn({**mark, "r": "0.00005", "T": 16 * HOUR_MS}), 0).items
    assert f.record == {"symbol": "BTC-PERP", "ts_event_ms": 8 * HOUR_MS, "rate": 0.00012}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (bn({**AGG, "m": "yes"}), "'m' must be true or false"),
        (bn({**AGG, "s": "DOGEUSDT"}), "unknown binance symbol 'DOGEUSDT'"),
        (bn({**AGG, "p": "abc"}), "'p' is not a number"),
        (bn({**AGG, "T": 2**63}), "'T' is outside the signed 64-bit range"),  # an Avro long
        (bn({**AGG, "a": -(2**63) - 1}), "'a' is outside the signed 64-bit range"),
        (bn({"e": "forceOrder"}), "unknown binance event 'forceOrder'"),
        ('{"stream":"btcusdt@aggTrade","data":{"e":"aggTr', "not JSON"),
        (json.dumps({"code": -1121, "msg": "Invalid symbol."}), "binance error frame"),
    ],
)
def test_binance_malformed_frames_raise_with_a_reason(frame, reason):
    with pytest.raises(FrameError) as e:
        BinanceParser().parse(frame, 0)
    assert reason in str(e.value)


def test_binance_combined_stream_url_names_agg_trade_kline_and_mark_price():
    url = Binance().ws_url("wss://fstream.binance.com", ["BTC-PERP"])
    assert url == (
        "wss://fstream.binance.com/stream?streams=btcusdt@aggTrade/btcusdt@kline_1m/"
        "btcusdt@markPrice@1s"
    )


# -- one parser for live frames and recorded files -----------------------------------------------
@pytest.mark.realdata
@pytest.mark.parametrize(("capture", "venue"), [(HL_CAPTURE, "hl"), (BINANCE_CAPTURE, "bn")])
def test_capture_files_are_read_by_the_live_parser(capture, venue):
    path = capture_or_skip(capture)
    parser = HyperliquidParser() if venue == "hl" else BinanceParser()
    live = [
        i.record
        for ns, frame in capture_lines(path)
        for i in parser.parse(frame, ns // 1_000_000).items
        if i.stream == "trades"
    ]
    df = load_trades(FileSpec.parse(f"trades:{path}"))
    from_file = df.to_dict("records")
    assert len(live) == len(from_file) > 0
    for a, b in zip(live, from_file, strict=True):
        assert (a["ts_event_ms"], a["trade_id"], a["px"], a["qty"], a["side"]) == (
            b["ts_ms"],
            b["trade_id"],
            b["px"],
            b["qty"],
            b["side"],
        )
        assert (a["buyer"], a["seller"]) == (b["buyer"], b["seller"])
    if venue == "hl":
        assert all(r["buyer"] and r["seller"] for r in live)


def test_a_recorded_agg_trade_capture_reads_as_trades(tmp_path: Path):
    """A recording of the live Binance feed (aggTrade, kline, markPrice) is a trades file."""
    path = tmp_path / "binance.jsonl.gz"
    frames = [bn(AGG), bn({**AGG, "a": 8, "T": AGG["T"] + 5, "m": False})]
    frames.append(bn({"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "r": "0.1", "T": 9}))
    with gzip.open(path, "wt") as f:
        for n, frame in enumerate(frames):
            f.write(capture_line(1_723_161_256_000_000_000 + n, frame))
    df = load_trades(FileSpec.parse(f"trades:{path}"))
    assert df["trade_id"].tolist() == ["7", "8"]
    assert df["side"].tolist() == ["sell", "buy"]


def test_capture_line_keeps_one_frame_per_line_even_for_a_malformed_frame(tmp_path: Path):
    path = tmp_path / "rec.jsonl"
    path.write_text(capture_line(5, '{"a":\n1}') + capture_line(6, b"\xff{"))
    assert [ns for ns, _ in capture_lines(path)] == [5, 6]


# -- shared machinery ----------------------------------------------------------------------------
def test_dedup_window_forgets_the_oldest_keys_beyond_its_capacity():
    seen = SeenWindow(3)
    assert [seen.add(k) for k in "abca"] == [True, True, True, False]
    assert seen.add("d") and len(seen) == 3
    assert seen.add("b"), "b was the oldest and is forgotten: memory stays bounded"
    assert not seen.add("a")


def test_backoff_grows_exponentially_up_to_its_cap_with_jitter():
    rng = random.Random(1)
    samples = [[backoff_s(a, 0.5, 8.0, rng) for _ in range(200)] for a in range(8)]
    for attempt, s in enumerate(samples):
        cap = min(8.0, 0.5 * 2**attempt)
        assert min(s) >= 0 and max(s) <= cap
        assert max(s) > 0.8 * cap, "full jitter spreads over the whole window"
    assert len({round(x, 6) for x in samples[3]}) > 150, "jittered, not fixed"


def test_weight_budget_delays_a_request_that_does_not_fit_and_trusts_the_venue_count():
    now = [0.0]
    budget = WeightBudget(60, clock=lambda: now[0])  # one weight per second
    assert budget.delay_for(50) == 0.0
    assert budget.delay_for(20) == pytest.approx(10.0)
    now[0] += 10.0
    assert budget.delay_for(20) == 0.0
    fresh = WeightBudget(60, clock=lambda: now[0])
    fresh.observe_used(59)  # the venue says the minute is nearly spent
    assert fresh.delay_for(5) == pytest.approx(4.0)


def test_bad_ingestor_settings_stop_the_start_naming_the_value():
    ok = {"venue": "binance", "symbols": ("BTC-PERP",), "bootstrap": "x:1"}
    with pytest.raises(ConfigError, match="venue='kraken'"):
        IngestorConfig(**{**ok, "venue": "kraken"})
    with pytest.raises(ConfigError, match="DOGE-PERP"):
        IngestorConfig(**{**ok, "symbols": ("DOGE-PERP",)})
    with pytest.raises(ConfigError, match="silence_timeout_s=0"):
        IngestorConfig(**ok, silence_timeout_s=0)
    with pytest.raises(ConfigError, match="dedup_window=0"):
        IngestorConfig(**ok, dedup_window=0)
    cmd = [sys.executable, "-m", "marketdata.live", "--venue", "hyperliquid"]
    cmd += ["--symbols", "BTC-PERP", "--bootstrap", "x:1", "--silence-timeout-s", "-1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "silence_timeout_s=-1.0 must be > 0" in done.stderr
