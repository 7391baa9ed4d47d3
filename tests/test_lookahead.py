"""No lookahead: a decision at bar close t uses only data with event time <= t.

freqtrade ships a lookahead analysis because multi-timeframe merges leak the future; ours
is this test. Every input after t is changed (prices, sizes, sides, funding) or removed,
the flow runs again, and everything decided up to t must come out identical.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dataflows.io import RawMessage
from marketdata.generator import DEFAULT_START_MS
from tests.conftest import messages, run_records, small_settings

T = DEFAULT_START_MS + 300 * 300_000  # the close of the 300th 5m bar, after the warm-up


def _after_t(m: RawMessage) -> bool:
    return m.payload["ts_event_ms"] >= T if m.stream != "funding" else m.payload["ts_event_ms"] > T


def _perturbed(msgs: list[RawMessage]) -> list[RawMessage]:
    rng = np.random.default_rng(99)
    out = []
    for m in msgs:
        if not _after_t(m):
            out.append(m)
            continue
        r = copy.deepcopy(m.payload)
        if m.stream == "trades":
            r["px"] = round(r["px"] * float(np.exp(rng.normal(0, 0.02))), 2)
            r["qty"] = round(r["qty"] * float(rng.uniform(0.1, 10)), 5) or 0.001
            r["side"] = "sell" if r["side"] == "buy" else "buy"
            r["buyer"], r["seller"] = r["seller"], r["buyer"]
        elif m.stream == "candles":
            k = float(np.exp(rng.normal(0, 0.02)))
            for f in ("open", "high", "low", "close"):
                r[f] = r[f] * k
            r["volume"] = r["volume"] * float(rng.uniform(0.1, 10))
        elif m.stream == "funding":
            r["rate"] = -r["rate"] * 5
        out.append(RawMessage(m.stream, r))
    return out


def _up_to_t(outputs: dict, stream: str, strict: bool = False) -> list[dict]:
    """Each symbol's records up to t, in emission order (symbols interleave freely)."""
    recs = [
        r for r in outputs[stream] if (r["ts_event_ms"] < T if strict else r["ts_event_ms"] <= T)
    ]
    return sorted(recs, key=lambda r: r["symbol"])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    settings = small_settings(tmp_path_factory.mktemp("base"))
    msgs = messages(settings)
    return settings, msgs, run_records(settings, msgs)


@pytest.mark.parametrize("change", ["perturb", "truncate"])
def test_changing_inputs_after_t_leaves_every_decision_up_to_t_unchanged(baseline, change):
    settings, msgs, base = baseline
    changed = _perturbed(msgs) if change == "perturb" else [m for m in msgs if not _after_t(m)]
    assert changed != msgs
    other = run_records(settings, changed)
    decided = [
        d
        for d in _up_to_t(base, "signals")
        if d["decision"]["action"] != "no_trade" or d["decision"]["chosen_arm"]
    ]
    assert decided, "the window up to t must contain real decisions for the test to mean much"
    if change == "truncate":  # an intent at t can no longer fill: rejected end_of_data at t
        other["rejections"] = [r for r in other["rejections"] if r["reason"] != "end_of_data"]
    for stream in ("signals", "orders", "rejections", "ensemble", "health", "calibration"):
        assert _up_to_t(other, stream) == _up_to_t(base, stream), f"{stream} up to t changed"
    assert _up_to_t(other, "executions", strict=True) == _up_to_t(base, "executions", strict=True)
    assert _up_to_t(other, "bars") == _up_to_t(base, "bars")
    if change == "perturb":  # and the change did reach the flow after t
        after = [s for s in other["signals"] if s["ts_event_ms"] > T]
        assert after != [s for s in base["signals"] if s["ts_event_ms"] > T]
