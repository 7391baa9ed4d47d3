"""Account-level risk across symbols: drawdown, daily loss and gross exposure limits on
all books together, with SPEC 6's halt (flatten, stay halted) and operator reset rules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from bytewax.testing import TestingSink, run_main

from dataflows.ensemble import AccountBook, StrategyLogic, build_flow
from dataflows.io import format_summary
from operators.account import AccountRisk, EventTimeAligner, ResumeError
from operators.config import ENSEMBLE_1_0
from operators.events import ControlCommand
from operators.strategy import on_close
from operators.telemetry import Stamp
from tests.conftest import small_settings
from tests.test_decision_core import Scenario, _one

BTC, ETH = "BTC-PERP", "ETH-PERP"
LONG_BAR = {"p_up": 0.60, "s_top": 0.5, "rv": 0.05}  # 4,000 USD long at px 100
SHORT_BAR = {"p_up": 0.40, "s_top": -0.5, "rv": 0.05}


def _pair(**overrides):
    account = AccountRisk.new([BTC, ETH], 10_000.0)
    btc = Scenario(ENSEMBLE_1_0, symbol=BTC, account=account, **overrides)
    eth = Scenario(ENSEMBLE_1_0, symbol=ETH, account=account, **overrides)
    for _ in range(60):  # the warm-up, both symbols marking in turn
        btc.bar()
        eth.bar()
    return account, btc, eth


def test_an_account_drawdown_halts_and_flattens_every_symbol_until_reset():
    # BTC loses 4.8% of its own book: under its own limits, 2.4% of the account's (limit 2%)
    account, btc, eth = _pair(**{"account.max_drawdown": 0.02})
    btc.bar(**LONG_BAR)
    eth.bar(**SHORT_BAR)
    btc.bar()
    eth.bar()  # both filled
    out = btc.bar(ret=-0.12)
    health = _one(out, "health")
    assert health["trading_state"] == "HALTED"
    assert health["halt_reason"].startswith("account_drawdown_limit")
    assert _one(out, "orders")["purpose"] == "kill_switch_flatten"
    out = eth.bar()  # ETH made no loss of its own; the account halts it at its next close
    assert _one(out, "health")["halt_reason"].startswith("account_drawdown_limit")
    assert _one(out, "orders")["purpose"] == "kill_switch_flatten"
    btc.bar()
    eth.bar()  # both flat now
    for _ in range(3):  # halted: entries refused, even after the equity stops falling
        assert _one(btc.bar(**LONG_BAR), "rejections")["reason"] == "trading_state_halted"
        assert _one(eth.bar(**LONG_BAR), "rejections")["reason"] == "trading_state_halted"
    out = btc.bar(**LONG_BAR, controls=("reset_kill_switch",))
    assert account.state.value == "ACTIVE"
    assert _one(out, "orders")["purpose"] == "entry"
    assert _one(eth.bar(**LONG_BAR), "rejections")["reason"] == "trading_state_halted"
    out = eth.bar(**LONG_BAR, controls=("reset_kill_switch",))
    assert _one(out, "orders")["purpose"] == "entry"


def test_an_account_daily_loss_over_its_limit_halts_every_symbol():
    account, btc, eth = _pair(**{"account.daily_loss_limit": 0.02})
    btc.bar(**LONG_BAR)
    btc.bar()
    out = btc.bar(ret=-0.12)
    assert _one(out, "health")["halt_reason"].startswith("account_daily_loss_limit")
    assert _one(eth.bar(), "health")["halt_reason"].startswith("account_daily_loss_limit")


def _close(*bars):
    """One close of the account: each (scenario, inputs) symbol's next bar, at one time."""
    done = on_close([(sc.strategy, sc.context(**inputs)) for sc, inputs in bars])
    assert all(exc is None for _, exc in done), done
    return [out for out, _ in done]


def test_no_entry_goes_out_at_the_close_where_another_symbol_halts_the_account():
    """BTC-PERP's bar is decided before ETH-PERP's at the same close (symbol order). Its
    entry must see the account halt that ETH-PERP's loss at that close causes: it used to
    go out, fill at the next open and be flattened a bar later, fees and slippage paid."""
    account, btc, eth = _pair(**{"account.daily_loss_limit": 0.02})
    _close((btc, {}), (eth, LONG_BAR))
    _close((btc, {}), (eth, {}))  # ETH filled: 4,000 USD long
    btc_out, eth_out = _close((btc, LONG_BAR), (eth, {"ret": -0.12}))
    assert account.state.value == "HALTED"
    assert account.halt_reason.startswith("account_daily_loss_limit")
    assert not [r for s, r in btc_out if s == "orders"], "an entry at the halting close"
    assert _one(btc_out, "rejections")["reason"] == "trading_state_halted"
    assert _one(btc_out, "health")["halt_reason"].startswith("account_daily_loss_limit")
    assert _one(eth_out, "orders")["purpose"] == "kill_switch_flatten"


def test_the_account_s_peak_sees_every_book_at_one_close():
    """BTC-PERP up 4,000 x 5% and ETH-PERP down as much at one close: the account's equity
    never rose, so its peak must not either (BTC's new mark with ETH's old one made a peak
    that never existed, and a drawdown measured from it)."""
    account, btc, eth = _pair()
    _close((btc, LONG_BAR), (eth, SHORT_BAR))
    _close((btc, {}), (eth, {}))  # both filled: BTC long, ETH short, the same size
    peak = account.peak_equity
    _close((btc, {"ret": 0.05}), (eth, {"ret": 0.05}))
    assert account.equity() < peak + 1.0  # the two moves cancel, fees aside
    assert account.peak_equity == pytest.approx(peak)


@pytest.mark.parametrize(
    ("setting", "limit", "shown"),
    [
        ("daily_loss_limit", 0.025, "limit 2.5%"),
        ("daily_loss_limit", 0.0004, "limit 0.04%"),
        ("max_drawdown", 0.015, "limit 1.5%"),
    ],
)
def test_an_account_halt_says_the_limit_as_it_is_set(setting, limit, shown):
    """The reason a quant reads states the limit in force (:.0% said 2% for 2.5%, 0% for
    0.04%), beside the loss it measured."""
    limits = {f"{book}.{name}": 0.5 for book in ("risk", "account")
              for name in ("daily_loss_limit", "max_drawdown")}  # fmt: skip
    account, btc, eth = _pair(**(limits | {f"account.{setting}": limit}))
    btc.bar(**LONG_BAR)
    btc.bar()
    reason = _one(btc.bar(ret=-0.2), "health")["halt_reason"]  # 800 USD: 4% of the account
    kind = "account_daily_loss_limit" if setting == "daily_loss_limit" else "account_drawdown"
    assert reason.startswith(kind), reason
    assert reason.endswith(f"({shown})"), reason


def test_an_account_limit_fired_under_an_operator_halt_takes_over_and_resume_cannot_lift_it():
    account, btc, eth = _pair(**{"account.daily_loss_limit": 0.02})
    eth.bar(controls=("halt",))  # an operator halts ETH first
    btc.bar(**LONG_BAR)
    btc.bar()
    btc.bar(ret=-0.12)  # the account's daily loss limit fires
    health = _one(eth.bar(), "health")
    assert health["halt_reason"].startswith("account_daily_loss_limit")
    out = eth.bar(controls=("resume",))
    assert json.loads(_one(out, "repro")["change_json"])["result"].startswith("ignored")


def test_a_symbol_added_at_a_restart_counts_in_the_day_s_start_and_the_daily_limit_holds(
    tmp_path,
):
    """Resumed from a snapshot of an account trading BTC alone, now trading ETH too: ETH's
    book joins the account at its initial equity, in the day's start as in its peak, as a
    fresh run has it. The day's start used to stay BTC's alone, so ETH's first mark
    looked like a 100% gain and the account's daily loss limit could not fire for the
    rest of that UTC day (the loss below is 2.4% of the 20,000 USD account; limit 2%)."""
    limit = {"account.daily_loss_limit": 0.02}
    before = AccountRisk.new([BTC], 10_000.0)  # the snapshot's account
    btc = Scenario(ENSEMBLE_1_0, symbol=BTC, account=before, **limit)
    for _ in range(60):
        btc.bar()
    overrides = json.dumps({"warmup_bars": 150, **limit})
    settings = small_settings(tmp_path, ENSEMBLE_OVERRIDES=overrides)  # BTC and ETH
    assert settings.symbols == {BTC, ETH}
    resumed = StrategyLogic(
        settings, Stamp("ensemble_1_1"), AccountBook(before, {BTC: btc.strategy.s})
    )
    account = resumed.book.account
    btc.strategy.account = account
    eth = Scenario(ENSEMBLE_1_0, symbol=ETH, account=account, **limit)
    eth.t = btc.t - 300_000  # ETH's first bar after the restart, on the same day
    eth.bar()
    assert account.equity() == 20_000.0
    btc.bar(**LONG_BAR)
    btc.bar()
    out = btc.bar(ret=-0.12)
    assert _one(out, "health")["halt_reason"].startswith("account_daily_loss_limit")


def test_an_entry_past_the_gross_exposure_limit_is_vetoed_and_exits_still_pass():
    # 20,000 USD of account equity at 0.3x: 6,000 USD of gross exposure in all
    account, btc, eth = _pair(**{"account.max_gross_leverage": 0.3})
    assert _one(btc.bar(**LONG_BAR), "orders")["notional_usd"] > 2_500
    btc.bar()
    rejection = _one(eth.bar(**LONG_BAR), "rejections")
    assert rejection["reason"] == "account_gross_exposure"
    assert account.gross_usd() <= 0.3 * account.equity()
    btc.bar()
    assert _one(btc.bar(), "orders")["purpose"] == "time_exit"  # the exit is not held back
    btc.bar()
    eth.bar()
    assert _one(eth.bar(**LONG_BAR), "orders")["purpose"] == "entry"


def test_in_the_flow_an_account_halt_reaches_a_symbol_that_never_traded(tmp_path):
    """The generator's ETH-PERP does not trade under 1.1; BTC-PERP's losses halt it too.
    The account sees bars in the order the flow processes them, so the rule is: once a
    halt is out, no symbol sends another entry."""
    overrides = {"warmup_bars": 150, "account.max_drawdown": 0.0002}
    settings = small_settings(tmp_path, ENSEMBLE_OVERRIDES=json.dumps(overrides))
    items: list[tuple[str, dict]] = []
    run_main(build_flow(settings, sink=TestingSink(items)))
    health = [r for s, r in items if s == "health"]
    halted = {h["symbol"] for h in health if h["halt_reason"].startswith("account_drawdown")}
    assert halted == {BTC, ETH}
    first_halt = {
        sym: min(h["ts_event_ms"] for h in health if h["symbol"] == sym and h["halt_reason"])
        for sym in (BTC, ETH)
    }
    # no symbol is halted at an event time before the losses that caused it
    assert first_halt[ETH] >= first_halt[BTC]
    assert not [r for s, r in items if s == "orders" and r["symbol"] == ETH]
    first = next(
        i for i, (s, r) in enumerate(items) if s == "health" and r["trading_state"] == "HALTED"
    )
    late = [r for s, r in items[first:] if s == "orders" and r["purpose"] in ("entry", "flip")]
    assert not late, "an entry after the account halt"
    assert [r for s, r in items if s == "orders" and r["purpose"] == "kill_switch_flatten"]
    # the run summary says where the account ended: its books together, and why it halted
    summaries = [r for s, r in items if s == "summary"]
    account = next(r["account"] for r in summaries if "account" in r)
    books = {r["symbol"]: r for r in summaries if "symbol" in r}
    assert account["equity"] == pytest.approx(sum(b["equity"] for b in books.values()))
    assert account["trading_state"] == "HALTED"
    assert account["halt_reason"].startswith("account_drawdown_limit")
    assert account["max_drawdown"] > 0.0002 and account["peak_equity"] > account["equity"]
    state = {"symbols": books, "account": account, "dead_letters": 0, "dead_letter_reasons": {}}
    line = next(x for x in format_summary(state, "out/").splitlines() if "account" in x)
    assert line.startswith(f"  account (2 symbols): equity {account['equity']:,.2f} USD")
    assert "state HALTED (account_drawdown_limit: account equity" in line


def _ctx(symbol: str, end_ms: int) -> SimpleNamespace:
    return SimpleNamespace(bar=SimpleNamespace(symbol=symbol, end_ms=end_ms))


def test_bars_of_all_symbols_reach_the_account_in_event_time_order():
    aligner = EventTimeAligner()
    out = []
    for sym, t in [(BTC, 1), (ETH, 1), (BTC, 2), (BTC, 3), (BTC, 4), (ETH, 2), (ETH, 3)]:
        out += [(c.bar.end_ms, c.bar.symbol) for c in aligner.add(_ctx(sym, t))]
    assert out == [(1, BTC), (1, ETH), (2, BTC), (2, ETH), (3, BTC), (3, ETH)]
    assert [(c.bar.end_ms, c.bar.symbol) for c in aligner.flush()] == [(4, BTC)]


def _cmd(symbol: str, ts: int, command_id: str) -> SimpleNamespace:
    return SimpleNamespace(symbol=symbol, ts_event_ms=ts, command_id=command_id)


def test_a_live_command_ahead_of_its_symbols_bars_waits_for_the_bar_it_belongs_to():
    """Live, a command applies as it arrives only if every bar of its symbol closing
    before its time has been decided; read from a backlog, it arrived hours of bars ahead
    of the strategy and was applied there (tests/integration/test_kafka_wall_clock.py)."""
    import pickle

    m5 = 300_000
    aligner = EventTimeAligner()
    assert aligner.command(_cmd(BTC, 7 * m5, "before any bar"))  # no bar yet: now
    aligner.add(_ctx(BTC, 1 * m5))
    assert aligner.command(_cmd(BTC, 2 * m5 - 1, "next bar"))  # its bar is the next one
    assert not aligner.command(_cmd(BTC, 5 * m5 + 1, "halt"))  # bars 2..5 still to come
    assert not aligner.command(_cmd(BTC, 3 * m5, "resume"))  # in arrival order, after it
    assert aligner.command(_cmd(ETH, 9 * m5, "other symbol"))  # ETH has no bar: now
    aligner.add(_ctx(ETH, 1 * m5))
    assert not aligner.command(_cmd(ETH, 3 * m5, "eth"))
    aligner = pickle.loads(pickle.dumps(aligner))  # kept in the snapshot
    assert aligner.due(BTC, 2 * m5) == []
    assert [c.command_id for c in aligner.due(BTC, 6 * m5)] == ["halt", "resume"]
    assert [c.command_id for c in aligner.flush_commands()] == ["eth"]
    old = EventTimeAligner()
    del old.__dict__["commands"]  # a snapshot from before commands were kept
    assert pickle.loads(pickle.dumps(old)).commands == []


def test_a_kept_live_command_applies_in_its_bar_after_the_fill_as_a_replay_does(tmp_path):
    """A command read from a backlog waits for the bar it belongs to; there it applies as a
    replay applies it (`controls_due`): after the bar's fill, marked at its close. Applied
    before the bar, a reset re-armed the limits from the equity before the fill, and the
    run on the wall clock differed from the replay."""
    account, btc, eth = _pair()
    books = {BTC: btc.strategy.s, ETH: eth.strategy.s}
    logic = StrategyLogic(
        small_settings(tmp_path), Stamp("ensemble_1_1"), AccountBook(account, books)
    )
    logic.strategies.update({BTC: btc.strategy, ETH: eth.strategy})

    def close(**btc_inputs):
        out = []
        for sc, inputs in ((btc, btc_inputs), (eth, {})):
            out += logic.on_item(sc.context(**inputs))[0]
        return [(e.stream, e.record) for e in out]

    close()
    halt = ControlCommand(BTC, btc.t + 300_000 + 1, "halt", "ops-oncall", "drill", "k-1")
    assert logic.on_item(halt) == ([], StrategyLogic.RETAIN)  # its bar is not the next one
    assert not [s for s, _ in close(**LONG_BAR) if s == "repro"]  # the entry, decided
    out = close()  # the bar the halt belongs to: the entry fills at its open
    streams = [s for s, r in out if r.get("symbol") == BTC]
    assert "executions" in streams and "repro" in streams
    assert streams.index("executions") < streams.index("repro")
    [audit] = [r for s, r in out if s == "repro"]
    assert audit["command"]["command_id"] == "k-1" and btc.strategy.s.risk.state.value == "HALTED"


def test_a_restart_that_drops_a_symbol_holding_a_position_is_refused_and_says_why(tmp_path):
    """Resumed under settings that trade BTC alone while ETH holds a short: nothing would
    read ETH's market again, so its position would sit in the account for ever, never
    marked, exited or flattened by a kill-switch. The resume is refused, naming ETH and
    what to do; a flat ETH is let go, as before."""
    account, btc, eth = _pair()
    eth.bar(**SHORT_BAR)
    eth.bar()  # filled: ETH is short
    assert eth.strategy.s.portfolio.qty < 0
    btc_only = small_settings(
        tmp_path, ENSEMBLE_SYMBOLS=BTC, ENSEMBLE_CANDLE_SYMBOLS="", ENSEMBLE_OVERRIDES="{}"
    )
    books = {BTC: btc.strategy.s, ETH: eth.strategy.s}
    with pytest.raises(ResumeError, match=r"holds ETH-PERP \(a position of -[0-9.]+\), which"):
        StrategyLogic(btc_only, Stamp("ensemble_1_1"), AccountBook(account, books))
    eth.strategy.s.portfolio.qty = 0.0  # flat: nothing left to manage
    StrategyLogic(btc_only, Stamp("ensemble_1_1"), AccountBook(account, books))
