"""A crash mid-stream loses nothing and decides nothing differently.

The flow runs with Bytewax recovery; bytewax.testing.TestingSource.ABORT stops it in the
middle of the input like a crash, and a second execution resumes from the last snapshot.
Records emitted between that snapshot and the crash are emitted again (at-least-once):
they are exact copies with the same key (`record_key`: the decision id for decisions), so
after deduplication the output equals an uninterrupted run's. The resume is audited with
the state it brought back. The same holds for a SIGKILLed `python -m bytewax.run`
process (test_run_command.py) and through a real Kafka broker (integration tests).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows import progress
from dataflows.ensemble import build_flow
from dataflows.io import RawMessage
from dataflows.settings import Settings
from marketdata.generator import DEFAULT_START_MS
from operators.telemetry import record_key
from tests.conftest import messages, signed, small_settings

pytestmark = pytest.mark.slow

BAR_MS = 300_000
EPOCH = timedelta(milliseconds=1)  # snapshot about every input batch


def _run(
    settings: Settings,
    msgs: list[Any],
    recovery: Path | None = None,
    abort_at: int | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Run the flow over msgs, crashing once before msgs[abort_at] and resuming."""
    items: list[tuple[str, dict[str, Any]]] = []
    if abort_at is not None:
        msgs = msgs[:abort_at] + [TestingSource.ABORT()] + msgs[abort_at:]
    flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(msgs, 256))
    if recovery is None:
        run_main(flow)
        return items
    cfg = RecoveryConfig(str(recovery))
    run_main(flow, epoch_interval=EPOCH, recovery_config=cfg)  # stops at the ABORT
    assert not any(r.get("event") == "resume" for s, r in items if s == "repro")
    run_main(flow, epoch_interval=EPOCH, recovery_config=cfg)  # resumes from the snapshot
    return items


def _dedup(items: list[tuple[str, dict[str, Any]]]) -> dict[tuple, dict[str, Any]]:
    """Keep the first record per key; a later one with the same key must be identical."""
    seen: dict[tuple, dict[str, Any]] = {}
    for stream, rec in items:
        if stream == "summary":
            continue
        key = record_key(stream, rec)
        if key in seen:
            assert seen[key] == rec, f"{key} was published twice with different contents"
        else:
            seen[key] = rec
    return seen


def _recovery_dir(tmp_path: Path) -> Path:
    d = tmp_path / "recovery"
    d.mkdir()
    init_db_dir(d, 1)
    return d


def _index_at(msgs: list[RawMessage], ts_ms: int) -> int:
    return next(i for i, m in enumerate(msgs) if m.payload["ts_event_ms"] >= ts_ms)


def _resumes(items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for s, r in items if s == "repro" and r["event"] == "resume"]


def _health_before(ref: list[tuple[str, dict[str, Any]]], symbol: str, t: int) -> dict:
    return next(
        r for s, r in ref if s == "health" and r["symbol"] == symbol and r["ts_event_ms"] == t
    )


def _assert_resumed_state_is_the_uninterrupted_state(ref, resumes) -> None:
    """Each resume reports the state at the end of the bar before it, as the reference had it."""
    assert {r["symbol"] for r in resumes} == {"BTC-PERP", "ETH-PERP"}
    for r in resumes:
        restored = json.loads(r["change_json"])
        h = _health_before(ref, r["symbol"], r["ts_event_ms"] - BAR_MS)
        assert restored["bars"] == h["bars"]
        assert restored["position_qty"] == h["position_qty"]
        assert restored["cash_usd"] == h["cash_usd"]
        assert restored["trading_state"] == h["trading_state"]
        assert restored["halt_reason"] == h["halt_reason"]
        assert restored["bandit"] == h["bandit"]


def test_a_crash_mid_stream_then_resume_gives_the_uninterrupted_outputs(tmp_path):
    settings = small_settings(tmp_path / "out")
    msgs = messages(settings)
    ref = _run(settings, msgs)
    got = _run(settings, msgs, _recovery_dir(tmp_path), abort_at=len(msgs) * 2 // 3)

    assert len(got) > len(ref), "nothing was replayed: the crash did not happen mid-stream"
    want, have = _dedup(ref), _dedup(got)
    resumed = {k for k in have if k[0] == "repro" and k[4] == "resume"}
    assert len(resumed) == 2  # one audited resume per symbol
    assert {k: v for k, v in have.items() if k not in resumed} == want
    assert [r for s, r in got if s == "summary"] == [r for s, r in ref if s == "summary"]
    _assert_resumed_state_is_the_uninterrupted_state(ref, _resumes(got))


def test_a_halt_survives_a_crash_and_only_the_operator_lifts_it(tmp_path):
    """Halted 30 bars before the crash; still halted after it, until the reset command."""
    settings = small_settings(tmp_path / "out")
    halt_at = DEFAULT_START_MS + 250 * BAR_MS + 1_000
    reset_at = DEFAULT_START_MS + 400 * BAR_MS + 1_000
    msgs = messages(settings)
    for ts, command in ((halt_at, "halt"), (reset_at, "reset_kill_switch")):
        cmd = {
            "symbol": "*",
            "ts_event_ms": ts,
            "command": command,
            "operator": "ops-oncall",
            "reason": "restart drill",
            "command_id": f"drill-{command}",
        }
        msgs.insert(_index_at(msgs, ts), RawMessage("control", signed(cmd)))
    crash = _index_at(msgs, halt_at + 30 * BAR_MS)

    ref = _run(settings, msgs)
    got = _run(settings, msgs, _recovery_dir(tmp_path), abort_at=crash)

    resumes = _resumes(got)
    _assert_resumed_state_is_the_uninterrupted_state(ref, resumes)
    for r in resumes:
        assert halt_at < r["ts_event_ms"] < reset_at
        assert json.loads(r["change_json"])["trading_state"] == "HALTED"
    have = _dedup(got)
    halted_close = halt_at - halt_at % BAR_MS + BAR_MS
    reset_close = reset_at - reset_at % BAR_MS + BAR_MS
    entries = [r for k, r in have.items() if k[0] == "orders" and r["purpose"] in ("entry", "flip")]
    assert not [r for r in entries if halted_close <= r["ts_event_ms"] < reset_close]
    assert [r for r in entries if r["ts_event_ms"] >= reset_close], "trading never resumed"


def test_a_restart_with_a_changed_preset_runs_and_audits_the_new_configuration(tmp_path):
    """Crash under one bandit configuration, resume under another: the resume audit shows
    the new one and the posteriors the strategy reports are computed with it."""
    old = small_settings(tmp_path / "a")
    new_overrides = {"warmup_bars": 150, "bandit.prior_mean_bps": 7.0, "bandit.prior_weight": 2.0}
    new = small_settings(tmp_path / "b", ENSEMBLE_OVERRIDES=json.dumps(new_overrides))
    msgs = messages(old)
    crash = len(msgs) * 2 // 3
    recovery = RecoveryConfig(str(_recovery_dir(tmp_path)))
    items: list[tuple[str, dict[str, Any]]] = []
    first = msgs[:crash] + [TestingSource.ABORT()] + msgs[crash:]
    for settings in (old, new):
        flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(first, 256))
        run_main(flow, epoch_interval=EPOCH, recovery_config=recovery)
    resumes = _resumes(items)
    assert {r["symbol"] for r in resumes} == {"BTC-PERP", "ETH-PERP"}
    for r in resumes:
        audit = json.loads(r["config_json"])
        assert audit["bandit"]["prior_mean_bps"] == 7.0
        after = [
            h
            for s, h in items
            if s == "health" and h["symbol"] == r["symbol"] and h["ts_event_ms"] >= r["ts_event_ms"]
        ]
        assert after
        for h in after:
            for arm, post in h["bandit"].items():
                if post["n"] == 0:  # an arm without data reports the new prior
                    assert post["mean_bps"] == 7.0, (arm, post)


def test_a_symbol_dropped_at_a_restart_does_not_hold_back_the_others_decisions(tmp_path):
    """Crash trading BTC and ETH, resume trading BTC alone: BTC's bars are decided as they
    close. The resumed account still waited for ETH bars that would never come, so every
    BTC decision after the restart was held back (live: for ever; here: to the input's
    end), with no fill, no exit and no kill-switch meanwhile."""
    both = small_settings(tmp_path / "a")
    btc = small_settings(tmp_path / "b", ENSEMBLE_SYMBOLS="BTC-PERP", ENSEMBLE_CANDLE_SYMBOLS="")
    msgs = messages(both)
    crash = len(msgs) * 2 // 3
    recovery = RecoveryConfig(str(_recovery_dir(tmp_path)))
    first = msgs[:crash] + [TestingSource.ABORT()] + msgs[crash:]
    runs: list[list[tuple[str, dict[str, Any]]]] = []
    for settings in (both, btc):
        items: list[tuple[str, dict[str, Any]]] = []
        flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(first, 256))
        run_main(flow, epoch_interval=EPOCH, recovery_config=recovery)
        runs.append(items)
    after = runs[1]
    assert _resumes(after), "the second run did not resume"
    btc_bars = [
        i
        for i, (s, r) in enumerate(after)
        if s == "bars" and r["symbol"] == "BTC-PERP" and r["timeframe"] == "5m"
    ]
    signals = [i for i, (s, r) in enumerate(after) if s == "signals"]
    assert len(btc_bars) > 100 and len(signals) >= len(btc_bars) - 10
    # decided as the bars close: by the last bar, all but the last few have their signal
    decided_by_last_bar = sum(1 for i in signals if i < btc_bars[-1])
    assert decided_by_last_bar >= len(btc_bars) - 10, (
        f"{decided_by_last_bar} of {len(btc_bars)} BTC bars decided before the input ended"
    )


def test_a_restart_with_a_wider_command_window_judges_commands_by_it(tmp_path):
    """Settings are not state: the command window a restart is started with is the one
    commands are judged by. The commands step kept the window (and the source idle time)
    of the run that made the snapshot, so an operator who widened
    ENSEMBLE_COMMAND_WINDOW_MS and restarted still had a 30-minute-old halt refused as
    stale under the old 15 minutes, for the life of the recovery directory."""
    old = small_settings(tmp_path / "a")
    new = small_settings(tmp_path / "b", ENSEMBLE_COMMAND_WINDOW_MS="3600000")
    msgs = messages(old)
    crash = len(msgs) * 2 // 3
    at = crash + 100
    market_ms = msgs[at - 1].payload["ts_event_ms"]
    halt = {
        "symbol": "BTC-PERP",
        "ts_event_ms": market_ms - 30 * 60_000,  # 30 min behind the market
        "command": "halt",
        "operator": "ops-oncall",
        "reason": "halt sent late",
        "command_id": "late-halt",
    }
    msgs.insert(at, RawMessage("control", signed(halt)))
    recovery = RecoveryConfig(str(_recovery_dir(tmp_path)))
    first = msgs[:crash] + [TestingSource.ABORT()] + msgs[crash:]
    items: list[tuple[str, dict[str, Any]]] = []
    for settings in (old, new):
        flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(first, 256))
        run_main(flow, epoch_interval=EPOCH, recovery_config=recovery)
    assert _resumes(items), "the second run did not resume"
    refused = [
        r["reason"] for s, r in items if s == "dead_letters" and r["source_stream"] == "control"
    ]
    assert not refused, refused
    applied = [r for s, r in items if s == "repro" and r["event"] == "control"]
    assert [json.loads(r["change_json"])["after"]["trading_state"] for r in applied] == ["HALTED"]


class _StopAt:
    """The messages, with the operator's stop (SIGINT/SIGTERM: progress.STOP) set when the
    source reaches index `at`, as a signal arriving mid-run does."""

    def __init__(self, msgs: list[Any], at: int) -> None:
        self.msgs, self.at = msgs, at

    def __iter__(self):
        for i, m in enumerate(self.msgs):
            if i == self.at:
                progress.STOP.set()
            yield m


def test_a_command_held_ahead_of_the_market_survives_a_stop_and_is_applied_after_it(tmp_path):
    """SIGTERM (a rollout) while a command waits for the market to reach it: the restart
    applies it when the market gets there, as an uninterrupted run does. The stop used to
    judge held commands as at the end of the input: one further ahead than the window was
    refused as stale ("the input ended") and, its offset being past, never read again."""
    settings = small_settings(tmp_path / "out")
    msgs = messages(settings)
    stop = len(msgs) // 2
    market_ms = msgs[stop - 100].payload["ts_event_ms"]
    halt = {
        "symbol": "BTC-PERP",
        "ts_event_ms": market_ms + 20 * 60_000,  # ahead by more than the 15 min window
        "command": "halt",
        "operator": "ops-oncall",
        "reason": "halt before the restart",
        "command_id": "held-halt",
    }
    msgs.insert(stop - 100, RawMessage("control", signed(halt)))
    ref = _run(settings, msgs)
    want = [r for s, r in ref if s == "repro" and r["event"] == "control"]
    assert len(want) == 1

    recovery = RecoveryConfig(str(_recovery_dir(tmp_path)))
    items: list[tuple[str, dict[str, Any]]] = []
    try:
        flow = build_flow(
            settings, sink=TestingSink(items), source=TestingSource(_StopAt(msgs, stop), 256)
        )
        run_main(flow, epoch_interval=EPOCH, recovery_config=recovery)  # stopped mid-run
    finally:
        progress.STOP.clear()
    assert not [r for s, r in items if s == "repro" and r["event"] == "control"]
    flow = build_flow(settings, sink=TestingSink(items), source=TestingSource(msgs, 256))
    run_main(flow, epoch_interval=EPOCH, recovery_config=recovery)  # the restart
    assert _resumes(items), "the restart did not resume"
    refused = [
        r["reason"] for s, r in items if s == "dead_letters" and r["source_stream"] == "control"
    ]
    assert not refused, refused
    assert [r for s, r in items if s == "repro" and r["event"] == "control"] == want
