"""The trade-size cohort proxy (operators/size_proxy.py): the size classification and the
groups' skill use only earlier data; its arms exist only when it is on, are named as the
proxy, and become eligible in a flow on trades without addresses; with it off the presets'
outputs are byte-identical to what they were before it existed."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumers import copilot
from consumers.facts import Telemetry, why_facts
from models.size_proxy_eval import without_addresses
from operators.bandit import ThompsonBandit
from operators.bars import Bar
from operators.config import (
    ENSEMBLE_1_1,
    BanditConfig,
    CohortConfig,
    ConfigError,
    GateConfig,
    GuardMode,
    SizeProxyConfig,
)
from operators.gating import (
    PROXY_ARMS,
    Signals,
    direction_and_alpha,
    eligibility,
    low_conf_veto,
    model_view,
)
from operators.size_proxy import ProxyValues, SizeProxy, bin_floor_usd, bind, size_bin
from schemas import codec
from tests.conftest import messages, run_files, run_records, small_settings

M5 = 300_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % M5
ON = SizeProxyConfig(enabled=True, min_prints=10)


def _bar(i: int, close: float) -> Bar:
    start = T0 + i * M5
    return Bar("BTC-PERP", "5m", start, start + M5, close, close, close, close, 1.0, 1, True)


def _proxy(cfg: SizeProxyConfig = ON) -> SizeProxy:
    return SizeProxy(cfg, CohortConfig())


def _prints(p: SizeProxy, bar: int, notional_usd: float, side: int, n: int = 1) -> None:
    for j in range(n):
        p.add_trade(T0 + bar * M5 + 1_000 + j, 100.0, notional_usd / 100.0, side)


# -- size classification ---------------------------------------------------------------------
def test_a_prints_bin_holds_its_notional():
    for usd in (0.37, 100.0, 101.5, 63_000.0, 2.5e9):
        i = size_bin(usd)
        assert bin_floor_usd(i) <= usd * (1 + 1e-12) and usd < bin_floor_usd(i + 1)
    assert size_bin(0.0) == 0 and size_bin(1e15) == size_bin(1e12)


def test_prints_are_classified_by_earlier_bars_sizes_never_their_own():
    p = _proxy()
    _prints(p, 0, 100.0, +1, n=10)  # ten $100 prints: the size history
    v0 = p.close_bar(_bar(0, 100.0))
    assert v0.large_min_usd is None, "nothing is classified before min_prints earlier prints"
    # bar 1: huge prints that would move any quantile computed with them
    _prints(p, 1, 1e6, +1, n=50)
    _prints(p, 1, 10.0, -1)
    v1 = p.close_bar(_bar(1, 101.0))
    assert v1.large_min_usd == bin_floor_usd(size_bin(100.0)), "the threshold is bar 0's"
    assert p.prev_flow == {"large": 50 * 1e6, "small": -10.0}
    # bar 2 is classified with bar 1's sizes in the history: $100 is now small
    _prints(p, 2, 100.0, +1)
    p.close_bar(_bar(2, 101.0))
    assert p.prev_flow == {"large": 0.0, "small": 100.0}


def test_values_at_a_close_do_not_depend_on_prints_of_later_bars():
    """Prints of the next bar that arrive before this bar closes change nothing at its close."""
    rng = np.random.default_rng(3)
    a, b = _proxy(), _proxy()
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, 30)))
    for i in range(30):
        for usd, side in zip(rng.lognormal(6, 1.5, 40), rng.choice([-1, 1], 40), strict=True):
            a.add_trade(T0 + i * M5 + 7, 100.0, usd / 100.0, int(side))
            b.add_trade(T0 + i * M5 + 7, 100.0, usd / 100.0, int(side))
        b.add_trade(T0 + (i + 1) * M5 + 9, 100.0, rng.lognormal(12, 1) / 100.0, 1)  # next bar's
        va, vb = a.close_bar(_bar(i, closes[i])), b.close_bar(_bar(i, closes[i]))
        assert va == vb, f"close {i}"
        b.buckets.pop(T0 + (i + 1) * M5)  # b's later print is gone again: both see the same
    assert va.ready


# -- the groups' skill ------------------------------------------------------------------------
def _leader_market(leader: str, bars: int = 12) -> list[ProxyValues]:
    """Each bar the `leader` group buys or sells and the next bar moves its way; the other
    group trades against it."""
    p, out, px = _proxy(), [], 100.0
    _prints(p, 0, 100.0, +1, n=10)
    out.append(p.close_bar(_bar(0, px)))
    for i in range(1, bars):
        side = 1 if i % 3 else -1
        big, small = (side, -side) if leader == "large" else (-side, side)
        _prints(p, i, 50_000.0, big)
        _prints(p, i, 20.0, small, n=9)
        out.append(p.close_bar(_bar(i, px)))
        px *= 1 + 0.001 * side  # the move follows at the next close
    return out


def test_the_group_whose_flow_precedes_the_move_stands_in_for_the_pros():
    for leader in ("large", "small"):
        vals = _leader_market(leader)
        assert vals[-1].top_group == leader
        assert (vals[-1].skill_large > vals[-1].skill_small) == (leader == "large")


def test_a_groups_skill_at_close_t_uses_the_previous_bars_flow_and_t_s_return_only():
    p = _proxy()
    _prints(p, 0, 100.0, +1, n=10)
    p.close_bar(_bar(0, 100.0))
    _prints(p, 1, 50_000.0, +1)
    _prints(p, 1, 10.0, -1)  # under bar 0's $100 prints: small
    v1 = p.close_bar(_bar(1, 100.0))
    assert not v1.ready and v1.skill_large == 0.0, "bar 1's own flow has no return yet"
    v2 = p.close_bar(_bar(2, 101.0))
    assert v2.skill_large == pytest.approx(50_000.0 * 0.01)
    assert v2.skill_small == pytest.approx(-10.0 * 0.01)
    assert v2.top_group == "large"
    assert v2.s_top == pytest.approx(1.0) and v2.s_bot == pytest.approx(-1.0)


def test_the_settings_are_not_state_and_switching_off_drops_the_proxy():
    p = _leader_market("large")
    proxy = _proxy()
    proxy.close_bar(_bar(0, 100.0))
    restored = pickle.loads(pickle.dumps(proxy))
    assert not hasattr(restored, "cfg"), "the snapshot holds data only"
    rebound = bind(restored, SizeProxyConfig(enabled=True, min_prints=99), CohortConfig())
    assert rebound is restored and rebound.cfg.min_prints == 99
    assert bind(rebound, SizeProxyConfig(), CohortConfig()) is None
    assert p[-1].ready


def test_a_resumed_market_step_keeps_the_proxy_and_binds_the_running_settings():
    from operators.events import Trade
    from operators.market import Close, MarketState
    from operators.watermark import QUORUM

    m = MarketState("BTC-PERP", False, 5_000, CohortConfig(), size_proxy_cfg=ON)
    out: list[Any] = []
    for i in range(30):
        m.on_event(Trade("BTC-PERP", T0 + i * 60_000, 100.0 + i / 10, 1.0, 1, f"t{i}"), out)
    resumed = pickle.loads(pickle.dumps(m))
    assert resumed.size_proxy is not None and not hasattr(resumed.size_proxy, "cfg")
    resumed.configure(False, 5_000, CohortConfig(), m.max_jump_ms, ON)
    assert resumed.size_proxy.n_prints == m.size_proxy.n_prints > 0
    a, b = [], []
    for i in range(40, 40 + QUORUM):  # a quorum of trades moves the symbol's progress
        later = Trade("BTC-PERP", T0 + i * 60_000, 104.0, 1.0, 1, f"t{i}")
        m.on_event(later, a)
        resumed.on_event(later, b)
    closes_a = [x.size_proxy for x in a if isinstance(x, Close)]
    assert closes_a == [x.size_proxy for x in b if isinstance(x, Close)] and closes_a
    resumed.configure(False, 5_000, CohortConfig(), m.max_jump_ms, SizeProxyConfig())
    assert resumed.size_proxy is None, "switched off on resume: no proxy, no Close values"


# -- configuration ------------------------------------------------------------------------------
def test_a_bad_size_proxy_setting_stops_the_start_naming_it():
    with pytest.raises(ConfigError, match="size_proxy.enabled='maybe'"):
        ENSEMBLE_1_1.with_overrides({"size_proxy.enabled": "maybe"})
    with pytest.raises(ConfigError, match="size_proxy.large_quantile=1.5"):
        ENSEMBLE_1_1.with_overrides({"size_proxy.large_quantile": 1.5})
    with pytest.raises(ConfigError, match="size_proxy.min_prints=0"):
        ENSEMBLE_1_1.with_overrides({"size_proxy.min_prints": 0})


def test_the_audit_shows_the_proxy_only_when_it_is_on():
    assert "size_proxy" not in ENSEMBLE_1_1.as_dict()
    on = ENSEMBLE_1_1.with_overrides({"size_proxy.enabled": "on"})
    assert on.as_dict()["size_proxy"]["enabled"] is True


# -- arms -------------------------------------------------------------------------------------
def _signals(proxy: ProxyValues | None) -> Signals:
    return Signals(0.0, 0.0, 0.0, model_view(0.52), proxy)


def test_proxy_arms_exist_only_with_the_proxy_and_are_eligible_once_ranked():
    th = ENSEMBLE_1_1.thresholds
    assert set(eligibility(_signals(None), th, 0.65)) == {
        "pros",
        "amateurs",
        "model_meta",
        "model_bma",
    }
    unranked = ProxyValues(0.0, 0.0, 0.0, None, 120.0, 0.0, 0.0)
    e = eligibility(_signals(unranked), th, 0.65)
    assert e["pros_size_proxy"] is False and e["amateurs_size_proxy"] is False
    ranked = ProxyValues(-0.30, 0.05, -0.175, "large", 120.0, 3.0, -1.0)
    e = eligibility(_signals(ranked), th, 0.65)
    assert e["pros_size_proxy"] is True and e["amateurs_size_proxy"] is False
    assert direction_and_alpha("pros_size_proxy", _signals(ranked), th) == (-1, 0.30)


def test_the_no_trade_zone_holds_proxy_arms_like_cohort_arms():
    gates = GateConfig(low_conf_veto=GuardMode.ON)
    veto = low_conf_veto("pros_size_proxy", 0.52, gates)
    assert veto is not None and "pros_size_proxy" in veto.detail


def test_the_bandit_samples_proxy_arms_and_reports_them_only_when_asked():
    bandit, cfg = ThompsonBandit(), BanditConfig()
    rng = np.random.default_rng(1)
    arm, samples = bandit.select({"pros_size_proxy": True}, rng, cfg)
    assert arm == "pros_size_proxy" and set(samples) == {"pros_size_proxy"}
    bandit.update(arm, 12.0)
    assert "pros_size_proxy" not in bandit.as_dict(cfg)
    assert bandit.as_dict(cfg, ("pros", *PROXY_ARMS))["pros_size_proxy"]["n"] == 1.0


# -- the flow -----------------------------------------------------------------------------------
# sha256 over (name, sha256) of every output file of `small_settings` under each preset, as
# the code wrote them before the size proxy existed. Recomputed after merging issue 14's bands
# and per-partition progress (a deliberate change): every stream file was checked equal to the
# hardening2 branch's, which has no size proxy; summary.json gained `warmup_bars` (issue 15).
# Recomputed again when funding came first on a tie with the candle closing its bar (issue 14
# §5): only ETH-PERP's signals changed, in features.funding_rate and funding_change_8h.
# Recomputed when the JSON-lines sink moved to orjson (issue 16): every file parses to the
# same values as before, float for float; only small floats are written as 0.0000354...
# instead of 3.54e-05 (signals, ensemble, health).
# Recomputed when the model's dot products became exactly rounded (math.fsum), the same bits
# on every CPU: OpenBLAS's kernel follows the CPU, and these digests held on Intel machines
# only. Only the model's probabilities changed (signals.model, ensemble, health,
# calibration), by at most 9e-14 relative; bars, orders, executions and rejections did not.
# Recomputed when execution.stale_intent_bars (validated, never read) left the config: only
# repro.jsonl changed, its config dump one key shorter.
# Recomputed when a funding settlement on the hour was paid at the close of the bar ending
# then, not at its open: funding, cash, equity, drawdown and peak in health and executions,
# the closing fills' trade_pnl_usd and reward_bps, the bandit's posteriors (health) and so
# its samples (signals.decision.samples), and the summary's equity, funding and drawdown
# changed; bars, orders, rejections and every other decision field did not.
# Recomputed when the run summary gained the account's line (equity, peak, drawdown, state):
# only summary.json changed.
# If a deliberate change of the strategy alters them, recompute with _digest and say so in the
# commit.
PRESET_DIGESTS = {
    "ensemble_1_0": "ac217d9da62b675f19c288f18449fb0f270aec89de3772c36ddb5dfe100e7322",
    "ensemble_1_1": "a92a0eb92c7a1a9341f98d39636e05fb3712d9a206c4adc9d8fb7935085f6d8e",
}


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.mark.parametrize("preset", sorted(PRESET_DIGESTS))
def test_with_the_proxy_off_the_presets_outputs_are_byte_identical_to_before(tmp_path, preset):
    files = run_files(small_settings(tmp_path, STRATEGY_ID=preset))
    assert "size_proxy" not in files["signals.jsonl"].decode()
    assert _digest(files) == PRESET_DIGESTS[preset]


def _proxy_settings(out: Path, on: bool) -> Any:
    overrides = {"warmup_bars": 150, "size_proxy.enabled": on}
    return small_settings(out, STRATEGY_ID="ensemble_1_0", ENSEMBLE_OVERRIDES=json.dumps(overrides))


@pytest.fixture(scope="module")
def anonymous_runs(tmp_path_factory):
    on = _proxy_settings(tmp_path_factory.mktemp("on"), True)
    off = _proxy_settings(tmp_path_factory.mktemp("off"), False)
    msgs = without_addresses(messages(on))
    return run_records(on, msgs), run_records(off, msgs)


def test_without_addresses_only_the_proxy_arms_give_the_cohort_side_a_voice(anonymous_runs):
    on, off = anonymous_runs
    btc_off = [s for s in off["signals"] if s["symbol"] == "BTC-PERP"]
    assert all(s["cohort"]["source"] == "none" for s in btc_off), "no address cohorts"
    assert not any(s["decision"]["eligible"].get(a) for s in btc_off for a in ("pros", "amateurs"))
    assert all("size_proxy" not in s for s in btc_off)
    btc_on = [s for s in on["signals"] if s["symbol"] == "BTC-PERP"]
    ranked = [s for s in btc_on if s["size_proxy"]["top_group"] is not None]
    assert ranked, "the size groups were never ranked"
    eligible = [s for s in btc_on if s["decision"]["eligible"].get("pros_size_proxy")]
    assert eligible, "the proxy's pros arm never became eligible"
    assert {o["arm"] for o in on["orders"]} & set(PROXY_ARMS), "no proxy-arm order"
    assert set(PROXY_ARMS) <= set(on["health"][-1]["bandit"])
    assert not set(PROXY_ARMS) & set(off["health"][-1]["bandit"])
    for stream in ("signals", "health", "orders", "rejections"):
        name = codec.STREAM_SCHEMAS[stream]
        for rec in on[stream]:
            assert codec.decode(name, codec.encode(name, rec)) is not None


def test_the_copilot_names_a_proxy_arm_trade_as_the_size_proxy(tmp_path):
    settings = _proxy_settings(tmp_path, True)
    run_files(settings, without_addresses(messages(settings)))
    tel = Telemetry(copilot.records_from_dir(tmp_path))
    entry = next(
        o for o in tel.orders.values() if o["purpose"] == "entry" and o["arm"] in PROXY_ARMS
    )
    f = why_facts(tel, "why?", symbol=entry["symbol"], at=copilot.utc_text(entry["ts_event_ms"]))
    assert f["decision"]["chosen_arm"] == entry["arm"]
    assert f["size_proxy"]["top_group"] in ("large", "small")
    text = copilot.render_why(f)
    assert "of the trade-size proxy" in text and f"{f['size_proxy']['top_group']} prints" in text


def test_with_the_proxy_on_changing_inputs_after_t_changes_nothing_decided_up_to_t(tmp_path):
    """tests/test_lookahead.py's check, on trades without addresses with the proxy trading."""
    from tests.test_lookahead import T, _perturbed, _up_to_t

    settings = _proxy_settings(tmp_path, True)
    msgs = without_addresses(messages(settings))
    base = run_records(settings, msgs)
    other = run_records(settings, _perturbed(msgs))
    chosen = {s["decision"]["chosen_arm"] for s in _up_to_t(base, "signals")}
    assert chosen & set(PROXY_ARMS), "the proxy arms must decide before t for this to mean much"
    assert any(s["ts_event_ms"] > T for s in base["signals"])
    for stream in ("signals", "orders", "rejections", "ensemble", "health"):
        assert _up_to_t(other, stream) == _up_to_t(base, stream), f"{stream} up to t changed"
