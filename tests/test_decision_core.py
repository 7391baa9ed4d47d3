"""The seed's section 9.2 scenarios, each through the whole decision core.

A `Scenario` drives `operators.strategy.Strategy` bar by bar with hand-set inputs (model
probability, cohort signals, 1h overlay, volatility), exactly as the flow hands it a
`BarContext` after features and prediction, and reads what it emits: order intents,
executions, rejections with their typed reasons, signals with the decision and its
would-veto list, health with the trading state, and the audit trail.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from typing import Any

import pytest

from operators.account import AccountRisk
from operators.bars import Bar
from operators.config import ENSEMBLE_1_0, ENSEMBLE_1_1, ConfigError, StrategyConfig
from operators.events import ControlCommand, Funding
from operators.features import FEATURES, LOOKBACK_BARS
from operators.kpis import returns_of, sharpe
from operators.overlays import BarContext, CohortView, OverlayView
from operators.reasons import Reason
from operators.risk import TradingState
from operators.strategy import BarFailed, Strategy, new_state
from operators.telemetry import Stamp

SYMBOL = "BTC-PERP"
BAR_MS = 300_000
HOUR_MS = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
WARMUP = 60  # the smallest warm-up the configuration accepts
HORIZON_BARS = 3  # the label horizon in the model's manifest
MODEL_INFO = {"model_id": "test", "horizon_bars": HORIZON_BARS}


class Scenario:
    """One symbol's strategy, fed one 5m bar at a time."""

    def __init__(
        self,
        cfg: StrategyConfig,
        symbol: str = SYMBOL,
        account: AccountRisk | None = None,
        **overrides: Any,
    ) -> None:
        cfg = cfg.with_overrides({"warmup_bars": WARMUP, **overrides})
        self.symbol = symbol
        self.strategy = Strategy(
            cfg,
            new_state(cfg, symbol, seed=7),
            Stamp(cfg.strategy_id),
            MODEL_INFO,
            account=account,
        )
        self.t = T0
        self.px = 100.0
        self.log: list[tuple[str, dict[str, Any]]] = []

    def bar(self, **inputs: Any) -> list[tuple[str, dict[str, Any]]]:
        """Close the next bar (`context`) on its own; what the strategy emits."""
        out = self.strategy.on_bar(self.context(**inputs))
        self.log.extend(out)
        return out

    def context(
        self,
        *,
        ret: float = 0.0,
        p_up: float = 0.5,
        s_top: float = 0.0,
        s_bot: float = 0.0,
        trend_1h: float = 0.0,
        stale_1h: bool = False,
        rv: float = 0.5,
        rv_1h: float = 0.5,
        controls: tuple[str, ...] = (),
        funding: tuple[tuple[int, float], ...] = (),
        gap: bool = False,
        broken: bool = False,
    ) -> BarContext:
        """The next bar, closing at px * (1 + ret), with these inputs. A `gap` bar had no
        data: flat at the last close, no trades, not complete."""
        open_, self.px = self.px, self.px * (1.0 + ret)
        start = self.t
        self.t += BAR_MS
        if gap:
            open_ = self.px
        bar = Bar(self.symbol, "5m", start, self.t, open_, max(open_, self.px), min(open_, self.px),
                  self.px, 0.0 if gap else 10.0, 0 if gap else 20, not gap)  # fmt: skip
        hour_close = self.t - self.t % HOUR_MS
        age = self.t - hour_close + (3 * HOUR_MS if stale_1h else 0)
        overlays = {
            "15m": OverlayView("15m", 0.0, self.t, 0, False, False),
            "1h": OverlayView(
                "1h", 0.0 if stale_1h else trend_1h, self.t - age, age, stale_1h, False
            ),
        }
        features = dict.fromkeys(FEATURES, 0.0) | {"rv_annual": rv, "rv_1h_annual": rv_1h}
        if broken:  # a failure injected after the fill, in the decision
            del features["rv_1h_annual"]
        ctx = BarContext(
            bar=bar,
            cohort=CohortView(s_top, s_bot, (s_top + s_bot) / 2, "trades", 0, False),
            overlays=overlays,
            funding_rate=0.0,
            funding_due=[Funding(self.symbol, ts, rate) for ts, rate in funding],
            controls_due=[
                ControlCommand(self.symbol, self.t - 1, c, "ops-oncall", "scenario", f"c-{self.t}")
                for c in controls
            ],
            features=features,
            p_up=p_up,
            model_id="test",
        )
        self.last_ctx = ctx
        return ctx

    def warm_up(self) -> None:
        for _ in range(WARMUP):
            self.bar()

    def restart(self, cfg: StrategyConfig | None = None, **overrides: Any) -> None:
        """What Bytewax recovery does: pickle the per-key state, build a new strategy on it
        (with `cfg` and `overrides`, a restart under a changed configuration)."""
        old = self.strategy
        state = pickle.loads(pickle.dumps(old.s))
        if cfg is not None:
            cfg = cfg.with_overrides({"warmup_bars": WARMUP, **overrides})
        self.strategy = Strategy(
            cfg or old.base_cfg, state, old.stamp, old.model_info, resumed=True
        )


def _one(out: list[tuple[str, dict]], stream: str) -> dict[str, Any]:
    found = [r for s, r in out if s == stream]
    assert len(found) == 1, f"expected one {stream} record, got {found}"
    return found[0]


def _none(out: list[tuple[str, dict]], stream: str) -> None:
    assert not [r for s, r in out if s == stream], f"unexpected {stream}"


def _decision(out: list[tuple[str, dict]]) -> dict[str, Any]:
    return _one(out, "signals")["decision"]


# -- the no-trade zone ------------------------------------------------------------------
# Pros' signal 0.5 makes only the pros arm eligible: conf 0.53 is under every CONF_MIN.
LOW_CONF_COHORT_BAR = {"p_up": 0.53, "s_top": 0.5}


def test_cohort_arm_trade_at_conf_0_53_is_vetoed_low_conf_under_1_1():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    out = sc.bar(**LOW_CONF_COHORT_BAR)
    d = _decision(out)
    assert (d["chosen_arm"], d["action"], d["reason"]) == ("pros", "vetoed", "low_conf_veto")
    assert _one(out, "rejections")["reason"] == "low_conf_veto"
    _none(out, "orders")


def test_cohort_arm_trade_at_conf_0_53_is_taken_under_1_0():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    out = sc.bar(**LOW_CONF_COHORT_BAR)
    assert _decision(out)["chosen_arm"] == "pros"
    order = _one(out, "orders")
    assert (order["side"], order["arm"]) == ("buy", "pros")
    _none(out, "rejections")


@pytest.mark.parametrize(
    "how", ["guard in shadow mode", "operator shadow_on command"], ids=["switch", "command"]
)
def test_cohort_arm_trade_at_conf_0_53_in_shadow_mode_is_taken_and_the_would_veto_emitted(how):
    if how == "guard in shadow mode":
        sc = Scenario(ENSEMBLE_1_1, **{"gates.low_conf_veto": "shadow"})
        sc.warm_up()
        out = sc.bar(**LOW_CONF_COHORT_BAR)
    else:
        sc = Scenario(ENSEMBLE_1_1)
        sc.warm_up()
        out = sc.bar(**LOW_CONF_COHORT_BAR, controls=("shadow_on",))
        audit = _one(out, "repro")
        assert audit["command"]["command"] == "shadow_on"
        assert json.loads(audit["change_json"])["after"]["shadow"] is True
    order = _one(out, "orders")
    assert order["arm"] == "pros"
    d = _decision(out)
    assert any(w.startswith("low_conf_veto") for w in d["would_veto"]), d["would_veto"]
    _none(out, "rejections")


# -- the consensus gate -----------------------------------------------------------------
# Pros are short at -0.5 and the model has a view (conf 0.60 ≥ 0.55) but no arm of its own.
SHORT_BAR = {"p_up": 0.40, "s_top": -0.5}


def test_short_while_the_1h_trend_is_plus_1_percent_is_vetoed():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    out = sc.bar(**SHORT_BAR, trend_1h=0.01)
    d = _decision(out)
    assert (d["direction"], d["action"], d["reason"]) == (-1, "vetoed", "veto:1h_trend")
    assert _one(out, "rejections")["reason"] == "veto:1h_trend"
    _none(out, "orders")


def test_short_while_the_1h_trend_is_plus_0_1_percent_is_allowed():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    out = sc.bar(**SHORT_BAR, trend_1h=0.001)
    assert _one(out, "orders")["side"] == "sell"
    _none(out, "rejections")


def test_short_with_a_stale_1h_overlay_is_allowed_and_the_staleness_reported():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    out = sc.bar(**SHORT_BAR, trend_1h=0.01, stale_1h=True)
    assert _one(out, "orders")["side"] == "sell"
    _none(out, "rejections")
    one_hour = next(v for v in _one(out, "ensemble")["timeframes"] if v["timeframe"] == "1h")
    assert one_hour["stale"] is True
    assert one_hour["age_ms"] > 2 * HOUR_MS


# -- the vol guard ----------------------------------------------------------------------
@pytest.mark.parametrize(("rv", "scale"), [(1.6, 0.5), (5.0, 0.25), (0.5, 1.0)])
def test_vol_guard_scales_the_position_at_cap_0_8_and_min_scale_0_25(rv, scale):
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    out = sc.bar(p_up=0.60, s_top=0.5, rv=rv)
    d = _decision(out)
    assert d["vol_scale"] == pytest.approx(scale)
    assert d["target_position"] == pytest.approx(min(0.20 / rv * 0.5, 0.5) * scale)
    order = _one(out, "orders")
    assert order["notional_usd"] == pytest.approx(abs(d["target_position"]) * 5000.0)


# -- the drawdown kill-switch -----------------------------------------------------------
# The whole fall happens within a day, so the daily loss limit (5%) is moved out of the way
# to show the drawdown switch on its own; test_risk.py covers the daily limit.
NO_DAILY_LIMIT = {"risk.daily_loss_limit": 0.9, "account.daily_loss_limit": 0.9}


def _into_a_drawdown_halt(sc: Scenario) -> None:
    """Long 4000 USD, then a 27.75% fall within the holding period: 11% of equity lost."""
    sc.warm_up()
    sc.bar(p_up=0.60, s_top=0.5, rv=0.05)  # target clamped to pos_max 1.0: 5000 USD long
    sc.bar()  # filled at this bar's open
    for _ in range(2):
        out = sc.bar(ret=-0.15)
        if _one(out, "health")["trading_state"] == "HALTED":
            return
    raise AssertionError("the drawdown did not halt trading")


def test_a_drawdown_past_10_percent_halts_and_flattens():
    sc = Scenario(ENSEMBLE_1_0, **NO_DAILY_LIMIT)
    _into_a_drawdown_halt(sc)
    health = [r for s, r in sc.log if s == "health"]
    assert health[-1]["halt_reason"].startswith("drawdown_limit")
    assert health[-2]["drawdown"] <= 0.10 < health[-1]["drawdown"]
    flatten = [r for s, r in sc.log if s == "orders"][-1]
    assert flatten["purpose"] == "kill_switch_flatten"
    out = sc.bar()  # the flatten fills at the next open
    assert _one(out, "executions")["position_qty"] == 0.0


def test_after_a_drawdown_halt_nothing_but_a_reset_resumes_trading():
    sc = Scenario(ENSEMBLE_1_0, **NO_DAILY_LIMIT)
    _into_a_drawdown_halt(sc)
    sc.bar()
    for inputs in ({}, {"controls": ("resume",)}, {"controls": ("shadow_on",)}, {}):
        out = sc.bar(p_up=0.60, s_top=0.5, rv=0.05, **inputs)
        _none(out, "orders")
        assert _one(out, "rejections")["reason"] == "trading_state_halted"
        assert _one(out, "health")["trading_state"] == "HALTED"
    ignored = [r for s, r in sc.log if s == "repro" and (r["command"] or {}).get("command")]
    resume = next(r for r in ignored if r["command"]["command"] == "resume")
    assert json.loads(resume["change_json"])["result"].startswith("ignored")
    out = sc.bar(p_up=0.60, s_top=0.5, rv=0.05, controls=("shadow_off", "reset_kill_switch"))
    assert _one(out, "health")["trading_state"] == "ACTIVE"
    assert _one(out, "orders")["purpose"] == "entry"


def test_a_drawdown_halt_survives_a_restart():
    sc = Scenario(ENSEMBLE_1_0, **NO_DAILY_LIMIT)
    _into_a_drawdown_halt(sc)
    sc.bar()
    sc.restart()
    out = sc.bar(p_up=0.60, s_top=0.5, rv=0.05)
    resumed = json.loads(next(r for s, r in out if s == "repro")["change_json"])
    assert resumed["trading_state"] == "HALTED"
    assert resumed["halt_reason"].startswith("drawdown_limit")
    _none(out, "orders")
    assert _one(out, "health")["trading_state"] == "HALTED"
    out = sc.bar(p_up=0.60, s_top=0.5, rv=0.05, controls=("reset_kill_switch",))
    assert _one(out, "orders")["purpose"] == "entry"


def test_a_daily_loss_while_an_operator_halt_is_in_force_fires_the_kill_switch():
    """The book loses 6% of its day-start equity while an operator has it halted: the daily
    loss kill-switch still fires, so a plain resume the next UTC day does not lift it."""
    two_books = AccountRisk.new([SYMBOL, "ETH-PERP"], 10_000.0)  # the account loses only 3%
    sc = Scenario(ENSEMBLE_1_0, account=two_books)
    sc.warm_up()
    assert _one(sc.bar(s_top=0.5, rv=0.1), "orders")["purpose"] == "entry"  # long 50 @ 100
    out = sc.bar(ret=-0.12, controls=("halt",))  # filled at 100, closes at 88
    health = _one(out, "health")
    assert 0.05 < 1.0 - health["equity_usd"] / 10_000.0 < 0.10  # over the daily limit only
    assert health["halt_reason"].startswith("daily_loss_limit")
    sc.bar()  # the flatten fills
    while sc.t < T0 + 86_400_000 + BAR_MS:  # into the next UTC day
        sc.bar()
    out = sc.bar(s_top=0.5, rv=0.1, controls=("resume",))
    _none(out, "orders")
    assert _one(out, "health")["trading_state"] == "HALTED"
    out = sc.bar(s_top=0.5, rv=0.1, controls=("reset_kill_switch",))
    assert _one(out, "orders")["purpose"] == "entry"


# -- restart with an open position ------------------------------------------------------
def _trading_bars(n: int) -> list[dict[str, Any]]:
    """Bars on which the pros and the model take turns at long and short signals."""
    out = []
    for i in range(n):
        side = 1 if (i // 7) % 2 == 0 else -1
        out.append(
            {
                "ret": 0.004 * side * (1 if i % 3 else -1),
                "p_up": 0.5 + side * (0.2 if i % 5 == 0 else 0.03),
                "s_top": 0.4 * side,
                "s_bot": -0.3 * side,
                "rv": 0.3,
                "rv_1h": 0.3,
            }
        )
    return out


def _learned(state) -> bool:
    return any(st.n for st in state.bandit.stats.values())


def test_a_restart_with_an_open_position_keeps_position_posteriors_and_trading_state():
    bars = _trading_bars(80)
    straight, restarted = Scenario(ENSEMBLE_1_1), Scenario(ENSEMBLE_1_1)
    straight.warm_up()
    restarted.warm_up()
    split = None
    for i, inputs in enumerate(bars):
        straight.bar(**inputs)
        restarted.bar(**inputs)
        s = restarted.strategy.s
        if i > 30 and s.portfolio.qty != 0.0 and s.open_trade is not None and _learned(s):
            split = i
            break
    assert split is not None, "the scenario never held a position after the bandit learned"
    health_at_split = [r for s, r in straight.log if s == "health"][-1]
    before = pickle.dumps(restarted.strategy.s)
    restarted.restart()
    s = restarted.strategy.s
    assert pickle.dumps(s) == before
    assert s.portfolio.qty != 0.0

    outs_straight, outs_restarted = [], []
    for inputs in bars[split + 1 :]:
        outs_straight.extend(straight.bar(**inputs))
        outs_restarted.extend(restarted.bar(**inputs))
    resume = outs_restarted.pop(0)
    assert resume[0] == "repro" and resume[1]["event"] == "resume"
    restored = json.loads(resume[1]["change_json"])
    for name in ("position_qty", "cash_usd", "trading_state", "bandit"):
        assert restored[name] == health_at_split[name], name
    assert restored["position_qty"] != 0.0
    assert outs_restarted == outs_straight
    assert [r for s, r in outs_restarted if s in ("orders", "executions")], "nothing traded"


# -- configuration is never state ---------------------------------------------------------
def test_a_restart_under_a_changed_bandit_config_samples_with_the_new_one():
    """State from a run with model_optimism 0 and prior mean 0, resumed with 0.1 and 5 bps,
    behaves exactly like a run that had the new configuration from the start."""
    new = {"bandit.model_optimism": 0.1, "bandit.prior_mean_bps": 5.0}
    resumed = Scenario(ENSEMBLE_1_1, **{"bandit.model_optimism": 0.0})
    fresh = Scenario(ENSEMBLE_1_1, **new)
    resumed.warm_up()
    fresh.warm_up()
    resumed.restart(ENSEMBLE_1_1, **new)
    model_bar = {"p_up": 0.75, "s_top": 0.5, "rv": 0.3}
    got, want = resumed.bar(**model_bar), fresh.bar(**model_bar)
    audit = json.loads(_one(got, "repro")["config_json"])
    assert audit["bandit"]["model_optimism"] == 0.1
    assert _decision(got)["samples"] == _decision(want)["samples"]
    assert _one(got, "health")["bandit"] == _one(want, "health")["bandit"]
    assert _one(got, "health")["bandit"]["pros"]["mean_bps"] == 5.0


def test_the_pickled_strategy_state_holds_no_configuration():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    blob = pickle.dumps(sc.strategy.s)
    for name in ("BanditConfig", "RiskConfig", "StrategyConfig", "GateConfig"):
        assert name.encode() not in blob, f"{name} is pickled with the state"


# -- the holding period is the model's label horizon --------------------------------------
def _held_bars(sc: Scenario, n_bars: int) -> tuple[int, dict[str, Any]]:
    """Enter long, then feed quiet bars; the bars between entry fill and exit fill."""
    sc.warm_up()
    sc.bar(p_up=0.60, s_top=0.5, rv=0.3)
    for _ in range(n_bars):
        sc.bar()
    fills = [r for s, r in sc.log if s == "executions"]
    assert [f["purpose"] for f in fills] == ["entry", "time_exit"], fills
    return (fills[1]["ts_event_ms"] - fills[0]["ts_event_ms"]) // BAR_MS, fills[1]


def test_the_time_exit_holds_exactly_the_models_horizon_bars():
    held, exit_fill = _held_bars(Scenario(ENSEMBLE_1_0), 10)
    assert held == HORIZON_BARS
    assert exit_fill["position_qty"] == 0.0


def test_a_holding_period_other_than_the_models_horizon_stops_the_start():
    cfg = ENSEMBLE_1_0.with_overrides({"warmup_bars": WARMUP, "risk.max_hold_bars": 12})
    with pytest.raises(ConfigError, match="risk.max_hold_bars=12.*horizon_bars=3"):
        Strategy(cfg, new_state(cfg, SYMBOL, seed=7), Stamp(cfg.strategy_id), MODEL_INFO)


def test_the_audit_shows_the_holding_period_in_force():
    sc = Scenario(ENSEMBLE_1_0)
    out = sc.bar()
    assert json.loads(_one(out, "repro")["config_json"])["risk"]["max_hold_bars"] == HORIZON_BARS


# -- order identity ------------------------------------------------------------------------
LONG_BAR = {"p_up": 0.60, "s_top": 0.5, "rv": 0.3}


def test_an_exit_on_a_bar_whose_entry_was_vetoed_has_its_own_id_and_names_its_entry():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    entry = _one(sc.bar(**LONG_BAR), "orders")
    sc.bar()  # filled
    sc.bar()
    out = sc.bar(**LONG_BAR)  # the hold ends here, and a second long is doubling down
    rejection, exit_order = _one(out, "rejections"), _one(out, "orders")
    assert rejection["reason"] == "no_doubling_down"
    assert exit_order["purpose"] == "time_exit"
    assert exit_order["decision_id"] != rejection["decision_id"]
    assert exit_order["client_order_id"] != entry["client_order_id"]
    assert exit_order["entry_decision_id"] == entry["decision_id"]
    assert entry["entry_decision_id"] is None
    d = _decision(out)
    assert d["action"] == "exit" and d["exit"] == "time_exit"
    assert d["reason"] == "no_doubling_down"  # why no new entry
    fill = _one(sc.bar(), "executions")
    assert fill["decision_id"] == exit_order["decision_id"]
    assert fill["entry_decision_id"] == entry["decision_id"]


# -- funding --------------------------------------------------------------------------------
def test_funding_is_paid_on_the_notional_at_the_settlement_price():
    """A settlement on the hour falls on a 5m close: the price then is the bar's close, not
    its open five minutes earlier; one stamped a few ms past the hour (Binance's) falls
    just after the next bar's open, and pays at that open."""
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    _one(sc.bar(**LONG_BAR), "orders")
    qty = _one(sc.bar(), "executions")["position_qty"]  # long, filled at 100
    assert qty > 0
    on_the_close = sc.t + BAR_MS
    health = _one(sc.bar(ret=0.02, funding=((on_the_close, 0.001),)), "health")
    assert sc.last_ctx.bar.close == pytest.approx(102.0)
    paid = -qty * 102.0 * 0.001  # a long pays a positive rate
    assert health["funding_usd"] == pytest.approx(paid, rel=1e-12)
    just_after_the_open = sc.t + 5
    health = _one(sc.bar(ret=0.02, funding=((just_after_the_open, 0.001),)), "health")
    paid += -qty * 102.0 * 0.001  # this bar opened at the last close, 102
    assert health["funding_usd"] == pytest.approx(paid, rel=1e-12)
    exit_fill = _one(sc.bar(), "executions")  # the time exit: the trade's PnL holds both
    assert exit_fill["purpose"] == "time_exit"
    entry_px = 100.0 * 1.0001
    exit_px = sc.last_ctx.bar.open * 0.9999
    fees = qty * (entry_px + exit_px) * 5.0 / 1e4
    expected = qty * (exit_px - entry_px) - fees + paid
    assert exit_fill["trade_pnl_usd"] == pytest.approx(expected, rel=1e-9)


# -- small but wrong -------------------------------------------------------------------------
def test_zero_volatility_is_a_typed_no_trade_reason():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    d = _decision(sc.bar(p_up=0.60, s_top=0.5, rv=0.0))
    assert Reason(d["reason"]) is Reason.NO_VOLATILITY


def test_vol_scaled_slippage_uses_the_volatility_known_at_the_open_it_fills_at():
    """The fill is at the next bar's open; that bar's own volatility is not known yet."""
    fills = []
    for rv_of_fill_bar in (0.4, 4.0):
        sc = Scenario(ENSEMBLE_1_0, **{"execution.slippage_vol_scale": True})
        sc.warm_up()
        _one(sc.bar(s_top=0.5, rv=0.4), "orders")  # decided at the close, rv 0.4
        fills.append(_one(sc.bar(ret=0.02, rv=rv_of_fill_bar), "executions"))
    # slippage 1 bp x rv 0.4 / sigma_target 0.2 = 2 bps over the open of 100
    assert [f["slippage_bps"] for f in fills] == [pytest.approx(2.0)] * 2
    assert fills[0]["fill_px"] == fills[1]["fill_px"] == pytest.approx(100.0 * 1.0002)


def test_the_cooldown_counts_from_the_fill_not_the_decision():
    sc = Scenario(ENSEMBLE_1_0)  # cooldown_bars 1
    sc.warm_up()
    _one(sc.bar(**LONG_BAR), "orders")
    _one(sc.bar(), "executions")  # filled at this bar's open
    out = sc.bar(p_up=0.40, s_top=-0.5, rv=0.3)  # one bar after the fill: a flip is too soon
    assert _one(out, "rejections")["reason"] == "cooldown"
    assert _one(sc.bar(p_up=0.40, s_top=-0.5, rv=0.3), "orders")["purpose"] == "flip"


def test_trades_against_the_models_view_make_the_strategy_need_attention():
    """Pros long while the model gives 45% to up: the side taken had under 50% confidence."""
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    assert _one(sc.bar(), "health")["strategy_status"] == "ok"
    _one(sc.bar(p_up=0.45, s_top=0.5, rv=0.3), "orders")
    assert _one(sc.bar(), "health")["strategy_status"] == "needs_attention"


def test_with_flip_model_a_trade_the_flipped_model_backs_is_not_a_trade_against_it():
    """flip_model says the model's sign convention is the opposite of ours: its 30% for up
    is 70% for up here. The long it makes the model arms take is on the model's side, so
    the signals say p_up 0.70 (which the alerts, metrics and copilot read with the side)
    and the strategy does not need attention. Before, p_up stayed 0.30 and every trade of
    a flipped model read as taken at 30%: needs_attention and a low-confidence alert."""
    sc = Scenario(ENSEMBLE_1_0, flip_model=True)
    sc.warm_up()
    out = sc.bar(p_up=0.30, rv=0.3)
    order, model = _one(out, "orders"), _one(out, "signals")["model"]
    assert order["side"] == "buy" and order["arm"] in ("model_meta", "model_bma")
    assert (model["p_up"], model["p_down"]) == (pytest.approx(0.70), pytest.approx(0.30))
    assert model["s_model_meta"] == pytest.approx(0.40)
    assert (model["conf"], model["alpha"]) == (pytest.approx(0.70), pytest.approx(0.40))
    assert _one(sc.bar(), "health")["strategy_status"] == "ok"


def test_with_flip_model_the_calibration_record_scores_the_probability_the_signals_show():
    """The flow's calibration record and the backtest's (from the signals' p_up) score the
    same forecast: under flip_model, the flipped one. A rising market that the flipped
    model calls at 70% for up is a forecast of 0.70 that came true."""
    sc = Scenario(ENSEMBLE_1_0, flip_model=True)
    sc.warm_up()
    records = []
    for _ in range(24):
        out = sc.bar(ret=0.001, p_up=0.30)
        assert _one(out, "signals")["model"]["p_up"] == pytest.approx(0.70)
        records += [r for stream, r in out if stream == "calibration"]
    last = records[-1]
    assert [(b["mean_p"], b["freq_up"]) for b in last["bins"]] == [(pytest.approx(0.70), 1.0)]
    assert last["brier"] == pytest.approx(0.09)


def test_a_drawdown_past_half_its_limit_makes_the_strategy_need_attention():
    sc = Scenario(ENSEMBLE_1_0)  # max_drawdown 10%: attention past 5%
    s = sc.strategy.s
    s.risk.peak_equity = s.portfolio.equity(100.0) / (1 - 0.049)  # 4.9% below the peak
    assert _one(sc.bar(), "health")["strategy_status"] == "ok"
    s.risk.peak_equity = s.portfolio.equity(100.0) / (1 - 0.051)  # 5.1%: still trading
    health = _one(sc.bar(), "health")
    assert (health["strategy_status"], health["trading_state"]) == ("needs_attention", "ACTIVE")


def test_a_loss_streak_at_its_limit_needs_attention_and_one_more_halts():
    sc = Scenario(ENSEMBLE_1_0)  # max_consecutive_losses 5: more than 5 halts
    sc.strategy.s.risk.consecutive_losses = 4
    assert _one(sc.bar(), "health")["strategy_status"] == "ok"
    sc.strategy.s.risk.consecutive_losses = 5
    assert _one(sc.bar(), "health")["strategy_status"] == "needs_attention"
    sc.strategy.s.risk.consecutive_losses = 6
    health = _one(sc.bar(), "health")
    assert (health["strategy_status"], health["halt_reason"]) == ("halted", "consecutive_losses")


def test_the_health_sharpe_follows_the_daily_equity_through_flat_days_and_trades():
    """The 30-day Sharpe is kept between bars while no daily equity moves: it must still
    equal the one computed afresh from the daily equity at every bar."""
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    day_bars = 24 * HOUR_MS // BAR_MS
    sharpes = set()
    for i in range(4 * day_bars):
        trading = i % day_bars < 12  # a few trades at the start of each day, then flat
        out = sc.bar(ret=0.002 if i % 3 else -0.001, **(LONG_BAR if trading else {}))
        equity = [e for _, e in sc.strategy.s.daily_equity]
        assert _one(out, "health")["sharpe_30d"] == sharpe(returns_of(equity))
        sharpes.add(_one(out, "health")["sharpe_30d"])
    assert len(sharpes) > 2  # it moved: days passed with trades in them


def test_the_health_sharpe_is_over_the_last_30_daily_returns():
    """SPEC 9's rolling 30-day Sharpe: 36 days in, the days before the last 31 closes
    (30 returns) no longer count."""
    sc = Scenario(ENSEMBLE_1_0)
    day_bars = 24 * HOUR_MS // BAR_MS
    closes = []
    for day in range(36):
        for _ in range(day_bars):
            out = sc.bar(ret=0.0)
        # a flat market; the equity moves by hand, a different step each day
        sc.strategy.s.portfolio.cash += 10.0 * ((day * 7) % 5 - 2) + (5.0 if day < 6 else 0.0)
        closes.append(_one(out, "health")["equity_usd"])
    out = sc.bar()  # the first bar of day 37 marks the last change
    closes.append(_one(out, "health")["equity_usd"])
    got = _one(out, "health")["sharpe_30d"]
    assert got == pytest.approx(sharpe(returns_of(closes[-31:])), rel=1e-12)
    assert got != pytest.approx(sharpe(returns_of(closes)), rel=1e-6)


def test_every_trading_state_is_one_the_strategy_can_enter():
    sc = Scenario(ENSEMBLE_1_0)
    seen = {_one(sc.bar(), "health")["trading_state"]}
    seen.add(_one(sc.bar(controls=("halt",)), "health")["trading_state"])
    assert seen == {s.value for s in TradingState}


# -- gap bars ------------------------------------------------------------------------------
def test_no_entry_is_sized_from_features_whose_lookback_holds_a_gap_bar():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    sc.bar(gap=True)
    for _ in range(LOOKBACK_BARS - 1):
        out = sc.bar(**LONG_BAR)
        assert _one(out, "rejections")["reason"] == Reason.GAP_IN_LOOKBACK.value
        _none(out, "orders")
    assert _one(sc.bar(**LONG_BAR), "orders")["purpose"] == "entry"


def test_a_gap_bar_does_not_stop_the_time_exit_or_the_kill_switch():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    _one(sc.bar(**LONG_BAR), "orders")
    sc.bar()
    sc.bar(gap=True)
    assert _one(sc.bar(gap=True), "orders")["purpose"] == "time_exit"
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    _one(sc.bar(**LONG_BAR), "orders")
    sc.bar()
    out = sc.bar(gap=True, controls=("halt",))
    assert _one(out, "orders")["purpose"] == "kill_switch_flatten"


# -- a failure part-way through a bar ---------------------------------------------------------
def _as_the_flow(sc: Scenario, **inputs: Any) -> tuple[list[tuple[str, dict]], bool]:
    """What the flow's strategy step emits for one bar: on an exception, what the strategy
    hands back with it (the flow adds an error record)."""
    try:
        return sc.bar(**inputs), False
    except Exception as exc:
        partial = getattr(exc, "outputs", [])
        sc.log.extend(partial)
        return partial, True


def test_a_failure_after_a_fill_still_emits_the_fill():
    sc = Scenario(ENSEMBLE_1_0)
    sc.warm_up()
    order = _one(sc.bar(**LONG_BAR), "orders")
    out, failed = _as_the_flow(sc, **LONG_BAR, broken=True)
    assert failed
    assert _one(out, "executions")["decision_id"] == order["decision_id"]
    assert sc.strategy.s.portfolio.qty > 0


def test_with_failures_injected_every_intent_has_exactly_one_execution_or_rejection():
    sc = Scenario(ENSEMBLE_1_1)
    sc.warm_up()
    failures = 0
    for i, inputs in enumerate(_trading_bars(300)):
        _, failed = _as_the_flow(sc, **inputs, broken=i % 4 == 1)
        failures += failed
    assert failures > 50
    orders = [r["decision_id"] for s, r in sc.log if s == "orders"]
    assert len(orders) > 20
    answers = Counter(r["decision_id"] for s, r in sc.log if s in ("executions", "rejections"))
    pending = sc.strategy.s.pending
    open_ids = set() if pending is None else {pending.decision_id}
    assert {d: answers[d] for d in orders if d not in open_ids} == {
        d: 1 for d in orders if d not in open_ids
    }
    fills = [r for s, r in sc.log if s == "executions"]
    assert fills[-1]["position_qty"] == pytest.approx(sc.strategy.s.portfolio.qty)


def test_the_flows_strategy_step_emits_the_fill_and_the_error_of_a_failing_bar(tmp_path):
    """dataflows.ensemble.StrategyLogic, fed the contexts of a scenario: the bar that fails
    after its fill still sends the execution, followed by the error record."""
    from dataflows.ensemble import Emit, StrategyLogic
    from tests.conftest import small_settings

    settings = small_settings(
        tmp_path, STRATEGY_ID="ensemble_1_0", ENSEMBLE_OVERRIDES=json.dumps({"warmup_bars": 60})
    )
    logic = StrategyLogic(settings, Stamp("ensemble_1_0"), None)
    sc = Scenario(ENSEMBLE_1_0)
    sent: list[Emit] = []
    for inputs in [{}] * WARMUP + [LONG_BAR]:
        sc.bar(**inputs)
        sent += logic.on_item(sc.last_ctx)[0]
    assert [e.record["purpose"] for e in sent if e.stream == "orders"] == ["entry"]
    with pytest.raises(BarFailed):  # the scenario's own strategy fails the same way
        sc.bar(**LONG_BAR, broken=True)
    out = logic.on_item(sc.last_ctx)[0]
    assert [e.stream for e in out] == ["executions", "costs", "errors"]
    assert out[2].record["error_type"] == "KeyError"


def test_an_intent_the_next_bar_cannot_fill_is_rejected_as_stale():
    """The bar after the decision had no trades: nothing to fill against, so the intent is
    rejected (stale_intent) at once, not carried to a later bar at another price."""
    sc = Scenario(ENSEMBLE_1_0)
    for _ in range(60):
        sc.bar()
    order = _one(sc.bar(p_up=0.60, s_top=0.5, rv=0.05), "orders")
    out = sc.bar(gap=True)
    rejection = _one(out, "rejections")
    assert (rejection["reason"], rejection["decision_id"]) == ("stale_intent", order["decision_id"])
    assert not [r for s, r in out if s == "executions"]
    assert sc.strategy.s.portfolio.qty == 0 and sc.strategy.s.pending is None
