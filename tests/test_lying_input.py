"""Input that passes the schema but lies (issue 14, section 4): one lying trade in a real
run changes no bar, order or execution; it is dead-lettered with its reason and counted,
and no real trade is dead-lettered because of it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from dataflows.io import RawMessage, format_summary
from operators.bands import Bands
from operators.config import BandConfig, CohortConfig, ConfigError, StrategyConfig
from operators.events import Candle, Funding, Trade
from operators.market import Close, Late, MarketState
from operators.watermark import InputPartitions
from tests.conftest import messages, read_batch, run_records, small_settings

S = 1_000
M = 60_000
H = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _lie(m: RawMessage, **changes: Any) -> RawMessage:
    return RawMessage("trades", {**m.payload, "trade_id": "lie", **changes})


# (name, how the lie is made from a real trade, a fragment of its dead-letter reason)
LIES = [
    ("price 1e308", lambda m: [_lie(m, px=1e308)], "outlier: price 1e+308 is absurd"),
    ("price x1000", lambda m: [_lie(m, px=m.payload["px"] * 1000)], "from the reference"),
    ("size 1e308", lambda m: [_lie(m, qty=1e308)], "outlier: size 1e+308 is absurd"),
    ("duplicated trade", lambda m: [RawMessage("trades", dict(m.payload))], None),
    (
        "trade 5 h ahead",
        lambda m: [_lie(m, ts_event_ms=m.payload["ts_event_ms"] + 5 * H)],
        "far out of order",
    ),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    settings = small_settings(tmp_path_factory.mktemp("clean"))
    msgs = messages(settings)
    return settings, msgs, run_records(settings, msgs)


@pytest.mark.parametrize("name,make,reason", LIES, ids=[lie[0] for lie in LIES])
def test_one_lying_trade_changes_no_bar_order_or_execution(clean, tmp_path, name, make, reason):
    settings, msgs, want = clean
    trades = [i for i, m in enumerate(msgs) if m.stream == "trades"]
    at = trades[len(trades) * 3 // 5]  # after the warm-up, while the strategy trades
    lying = [*msgs[: at + 1], *make(msgs[at]), *msgs[at + 1 :]]
    got = run_records(dataclasses.replace(settings, out_dir=tmp_path), lying)
    assert want["orders"], "the clean run trades"
    for stream in ("bars", "orders", "executions", "rejections", "signals"):
        assert got[stream] == want[stream], f"{name}: {stream} differ from the clean run"
    assert got["errors"] == []
    dead = [r["reason"] for r in got["dead_letters"]]
    if reason is None:  # the copy is dropped and counted, not dead-lettered
        assert dead == []
        assert sum(r.get("duplicates", 0) for r in got["summary"]) == 1
    else:
        assert len(dead) == 1 and reason in dead[0], dead


def test_outliers_are_counted_in_the_summary_and_their_reason_names_the_setting(clean, tmp_path):
    settings, msgs, _ = clean
    at = next(i for i, m in enumerate(msgs) if m.stream == "trades" and i > len(msgs) // 2)
    lying = [*msgs[: at + 1], _lie(msgs[at], px=msgs[at].payload["px"] * 1000), *msgs[at + 1 :]]
    got = run_records(dataclasses.replace(settings, out_dir=tmp_path), lying)
    (dl,) = got["dead_letters"]
    assert "bands.max_price_deviation" in dl["reason"] and dl["source_stream"] == "trades"
    state = {"symbols": {}, "dead_letters": 1, "dead_letter_reasons": {"outlier": 1}}
    assert "dead letters: 1 (outlier 1)" in format_summary(state, tmp_path)


# -- the bands -----------------------------------------------------------------------------


class _Ref:
    """One partition's bands, trades a second apart."""

    def __init__(self) -> None:
        self.bands, self.ts = Bands(), T0

    def check_trade(self, px: float, qty: float, cfg: BandConfig) -> str | None:
        self.ts += S
        return self.bands.check_trade(None, self.ts, px, qty, cfg)

    @property
    def ref_px(self) -> float | None:
        return self.bands.refs[None].ref_px


def _reference(px: float = 100.0, qty: float = 0.02, n: int = 64) -> _Ref:
    ref = _Ref()
    for i in range(n):
        assert ref.check_trade(px * (1 + (i % 5 - 2) / 1000), qty, BandConfig()) is None
    return ref


def test_a_price_past_the_deviation_from_the_median_is_an_outlier_and_one_inside_is_not():
    ref = _reference()
    assert ref.check_trade(109.0, 0.02, BandConfig()) is None
    assert "11.0% from the reference" in ref.check_trade(111.0, 0.02, BandConfig())
    assert ref.check_trade(111.0, 0.02, BandConfig(max_price_deviation=0.2)) is None


def test_a_size_past_the_multiple_of_the_median_size_is_an_outlier():
    ref = _reference(qty=0.02)
    assert ref.check_trade(100.0, 0.02 * 3_000, BandConfig()) is None  # a real whale
    assert "times the reference" in ref.check_trade(100.0, 0.02 * 200_000, BandConfig())


def test_before_a_reference_exists_only_absurd_values_are_refused():
    ref = _Ref()
    assert ref.check_trade(100_000.0, 1.0, BandConfig()) is None
    assert "absurd" in ref.check_trade(1e308, 1.0, BandConfig())
    assert "absurd" in ref.check_trade(100.0, 1e308, BandConfig())
    assert "notional" in ref.check_trade(1e7, 1e6, BandConfig())


def test_a_real_level_shift_is_confirmed_by_the_trades_themselves():
    """A crash of 30 %: refused while a minority of recent trades is at the new level,
    accepted once most are (a real crash is many trades, a lie is one)."""
    ref = _reference(n=128)
    verdicts = [ref.check_trade(70.0, 0.02, BandConfig()) is None for _ in range(128)]
    assert not verdicts[0] and verdicts[-1]
    assert verdicts.index(True) <= 64 + 16  # a median of 128, refreshed every 16


def test_a_new_partition_is_judged_by_a_reference_near_in_event_time_only():
    bands = Bands()
    for i in range(64):
        bands.check_trade("trades#0", T0 + i * S, 100.0, 0.02, BandConfig())
    lie = bands.check_trade("trades#3", T0 + 70 * S, 100_000.0, 0.02, BandConfig())
    assert lie is not None and "from the reference" in lie
    # trades hours away on another partition (read ahead) are not judged by it
    assert bands.check_trade("trades#4", T0 + 5 * H, 140.0, 0.02, BandConfig()) is None


def test_one_outlier_does_not_move_the_reference():
    ref = _reference(n=128)
    assert ref.check_trade(100_000.0, 0.02, BandConfig()) is not None
    for _ in range(16):
        ref.check_trade(100.0, 0.02, BandConfig())
    assert ref.ref_px == pytest.approx(100.0, rel=1e-3)


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"bands.max_price_deviation": 0}, "bands.max_price_deviation=0"),
        ({"bands.max_price_deviation": math.nan}, "bands.max_price_deviation=nan"),
        ({"bands.max_size_multiple": 0.5}, "bands.max_size_multiple=0.5"),
    ],
)
def test_a_bad_band_setting_stops_the_start_naming_the_value(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        StrategyConfig().with_overrides(overrides)


def test_the_band_settings_come_from_the_overrides(tmp_path: Path):
    import json

    s = small_settings(tmp_path, ENSEMBLE_OVERRIDES=json.dumps({"bands.max_price_deviation": 0.05}))
    assert s.strategy.bands.max_price_deviation == 0.05


# -- the watermark ----------------------------------------------------------------------


def _t(ts_ms: int, px: float = 100.0, part: str | None = None, tid: str | None = None) -> Trade:
    t = Trade("BTC-PERP", ts_ms, px, 0.01, 1, tid or f"t{ts_ms}", venue="v")
    t.part = part
    return t


def _run(events: list[tuple[Trade, int]], idle_ms: int = 10_000) -> tuple[MarketState, list]:
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig(), source_idle_ms=idle_ms)
    out: list[Any] = []
    for e, now in events:
        st.on_event(e, out, now)
    st.flush(out)
    return st, out


def _bars(out: list[Any]) -> list[tuple[int, int, float]]:
    return [(c.bar.start_ms, c.bar.count, c.bar.close) for c in out if isinstance(c, Close)]


def test_one_trade_stamped_290_s_ahead_makes_no_real_trade_late():
    """Issue 14: one trade at now+290 s (inside the allowed clock skew) moved the watermark
    and dead-lettered every real trade for five minutes."""
    real = [_t(T0 + i * S) for i in range(900)]  # a trade a second for 15 minutes
    lie = _t(T0 + 30 * S + 290 * S, tid="lie")
    st, out = _run([(e, 0) for e in [*real[:31], lie, *real[31:]]])
    assert st.late_count == 0 and not [x for x in out if isinstance(x, Late)]
    clean = _bars(_run([(e, 0) for e in real])[1])
    got = _bars(out)
    assert [b[0] for b in got] == [b[0] for b in clean]
    assert sum(b[1] for b in got) == sum(b[1] for b in clean) + 1  # the lie sits in its own bar


def test_a_trade_hours_ahead_is_held_then_dead_lettered_when_its_partition_goes_on():
    real = [_t(T0 + i * S) for i in range(600)]
    st, out = _run([(e, 0) for e in [*real[:100], _t(T0 + 5 * H, tid="lie"), *real[100:]]])
    (late,) = [x for x in out if isinstance(x, Late)]
    assert late.event.trade_id == "lie" and "far out of order" in late.reason
    assert _bars(out) == _bars(_run([(e, 0) for e in real])[1])


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "batched"])
def test_a_trade_days_back_before_the_first_close_opens_no_bar_there(batched):
    """A trade stamped 30 days before its partition's trades, read before the symbol's first
    bar closed (nothing is late yet), opened the first bar there: 8,640 empty 5m windows
    became gap bars, each decided on (on Kafka, a trade from 2015 in the first batches gave
    946,655). It is a dead letter, as one that far ahead is."""
    real = [_t(T0 + i * S) for i in range(900)]
    lie = _t(T0 + 2 * M - 30 * 24 * H, tid="lie")
    events = [*real[:120], lie, *real[120:]]
    if batched:
        st = MarketState("BTC-PERP", False, 5_000, CohortConfig(), source_idle_ms=10_000)
        out: list[Any] = []
        for i in range(0, len(events), 50):
            st.on_events(events[i : i + 50], out, 0)
        st.flush(out)
    else:
        st, out = _run([(e, 0) for e in events])
    (late,) = [x for x in out if isinstance(x, Late)]
    assert late.event.trade_id == "lie"
    assert late.reason.startswith("far out of order") and "720.0 h before its input" in late.reason
    assert _bars(out) == _bars(_run([(e, 0) for e in real])[1])


def test_a_trade_days_back_after_bars_closed_stays_a_late_dead_letter():
    real = [_t(T0 + i * S) for i in range(900)]
    st, out = _run([(e, 0) for e in [*real[:600], _t(T0 - 30 * 24 * H, tid="lie"), *real[600:]]])
    (late,) = [x for x in out if isinstance(x, Late)]
    assert late.event.trade_id == "lie" and late.reason.startswith("late")


def test_a_minority_of_trades_read_ahead_on_other_partitions_closes_no_real_bar():
    """Issue 14: 1,123 null-key trades on other partitions, read ahead, made 41,995 of
    42,046 real trades late. Here copies of later trades arrive first on two other
    partitions; every real trade still folds in and the copies are dropped as duplicates."""
    real = [_t(T0 + i * S, 100 + i / 1000, part="trades#0") for i in range(3_600)]
    copies = [
        dataclasses.replace(e, part=f"trades#{1 + i % 2}") for i, e in enumerate(real[2_000:3_123])
    ]
    # wall clock: the copies are read in the first few ms, the real partition over 36 s
    arrivals = [(e, i // 100) for i, e in enumerate(copies)]
    arrivals += [(e, 1_000 + i * 10) for i, e in enumerate(real)]
    st, out = _run(arrivals)
    assert st.late_count == 0 and st.duplicate_count == 1_123
    clean = _run([(dataclasses.replace(e, part=None), 0) for e in real])[1]
    assert _bars(out) == _bars(clean)  # (volume may differ in its last digit: summing order)


def test_an_idle_partition_holds_nothing_back_and_a_quiet_start_waits_for_every_partition():
    real = [_t(T0 + i * S, part="trades#0") for i in range(900)]
    stale = _t(T0 - 2 * M, part="trades#1")  # one older trade on another partition, then silence
    # within the start-up grace (10 s) nothing closes: a partition may not have spoken yet
    _, out = _run([(e, 5_000) for e in real])
    assert _bars(out)[0][0] == T0 and len(_bars(out)) == 3  # only the end of input closed them
    # the stale partition holds bars back while it is active, not once it is idle
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig())
    held: list[Any] = []
    st.on_event(stale, held, 20_000)
    for e in real[:400]:
        st.on_event(e, held, 25_000)  # the stale partition spoke 5 s ago: active
    assert not [x for x in held if isinstance(x, Close)]
    for e in real[400:]:
        st.on_event(e, held, 40_000)  # 20 s of silence: idle
    assert _bars(held)[-1][0] == T0 + 5 * M  # closed up to the real partition's progress
    assert st.late_count == 0


def test_a_symbol_that_moves_partition_is_not_held_by_the_busy_one_it_left():
    """With the Kafka source's view: BTC-PERP's trades move from trades#3 to trades#4 (a
    producer changed partitioner, or partitions were added) while trades#3 goes on with
    another symbol's records. Its clock on trades#3 stopped at the move; it held every
    bar after it for as long as trades#3 stayed busy."""
    view = InputPartitions()
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig(), source_idle_ms=10_000, inputs=view)
    out: list[Any] = []
    moved_at = 300  # seconds of event time on trades#3, then on trades#4
    for i in range(1_800):  # one trade a second of event time, 0.1 s of wall time apart
        now, ts = 20_000 + i * 100, T0 + i * S
        part = "trades#3" if i < moved_at else "trades#4"
        for p in ("trades#3", "trades#4"):  # both read and caught up; #3 keeps its other symbol
            read_batch(
                view, p, 1 if p == part or p == "trades#3" else 0, caught_up=True, now_ms=now
            )
            view.saw(p, ts)
        st.on_event(_t(ts, part=part), out, now)
    # every bar up to the one the last trades are in, none late (before: none at all)
    assert [(start, count) for start, count, _ in _bars(out)] == [
        (T0 + k * 5 * M, 300) for k in range(5)
    ]
    assert st.late_count == 0


# -- a file run's one stream: funding beside candles ----------------------------------------
def _candle(ts_ms: int, interval_ms: int = 300_000) -> Candle:
    return Candle("BTC-PERP", ts_ms, interval_ms, 100.0, 101.0, 99.0, 100.5, 3.0)


def test_a_file_runs_first_candle_after_hours_of_funding_is_not_a_jump():
    """The research spans start their rates 8 h before their candles: the first candles
    were held as a jump past the funding and dead-lettered as far out of order (40 of
    them per span) once the next rate moved the stream on."""
    m = MarketState("BTC-PERP", True, 5_000, CohortConfig())
    out: list[Any] = []
    m.on_event(Funding("BTC-PERP", T0 - 4 * 3_600_000, 0.0001), out)
    for i in range(48):
        if i == 40:
            m.on_event(Funding("BTC-PERP", T0 + 4 * 3_600_000 - 1, 0.0001), out)
        m.on_event(_candle(T0 + i * 300_000), out)
    assert not [x for x in out if isinstance(x, Late)]
    assert len([x for x in out if isinstance(x, Close)]) == 48


def test_a_rate_at_a_bars_close_leaves_the_bar_open_for_its_last_candle():
    """Availability order puts a rate stamped at a bar's close before the 1m candle that
    closes the bar (issue 14 section 5); with no allowed lateness the rate must not close
    the bar without that candle."""
    m = MarketState("BTC-PERP", True, 0, CohortConfig())
    out: list[Any] = []
    for i in range(4):
        m.on_event(_candle(T0 + i * 60_000, 60_000), out)
    m.on_event(Funding("BTC-PERP", T0 + 300_000, 0.0001), out)
    m.on_event(_candle(T0 + 4 * 60_000, 60_000), out)
    assert not [x for x in out if isinstance(x, Late)]
    (close,) = [x for x in out if isinstance(x, Close)]
    assert close.bar.complete and close.bar.volume == 15.0
