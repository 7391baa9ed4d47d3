"""Prometheus metrics: they agree with the emitted telemetry, and a running flow serves them
at /metrics through Bytewax's API server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.conftest import run_records, small_settings

ROOT = Path(__file__).resolve().parents[1]


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
def test_metrics_count_what_the_flow_emits(tmp_path):
    settings = small_settings(tmp_path)
    btc_5m_labels = {"symbol": "BTC-PERP", "timeframe": "5m", "complete": "true"}
    keys = {
        "bars": ("ensemble_bars_total", btc_5m_labels),
        "fills": ("ensemble_fills_total", {"symbol": "ETH-PERP"}),
        "lat": ("ensemble_decision_latency_seconds_count", {}),
        "conf": ("ensemble_model_confidence_count", {}),
    }  # fmt: skip
    out = run_records(settings)
    rejections = Counter((r["symbol"], r["reason"]) for r in out["rejections"])
    assert rejections
    before = {k: _value(n, **lab) for k, (n, lab) in keys.items()}
    rej_before = {
        k: _value("ensemble_rejections_total", symbol=k[0], reason=k[1]) for k in rejections
    }
    out = run_records(settings)  # the same run again: every counter grows by its records

    def grew(k: str) -> float:
        n, lab = keys[k]
        return _value(n, **lab) - before[k]

    btc_5m = [b for b in out["bars"] if b["symbol"] == "BTC-PERP" and b["timeframe"] == "5m"]
    assert grew("bars") == sum(b["complete"] for b in btc_5m)
    assert grew("fills") == sum(e["symbol"] == "ETH-PERP" for e in out["executions"])
    assert grew("lat") == len(out["signals"])
    assert grew("conf") == sum(
        s["model"] is not None and s["decision"]["reason"] != "warmup" for s in out["signals"]
    )
    for (sym, reason), n in rejections.items():
        got = (
            _value("ensemble_rejections_total", symbol=sym, reason=reason)
            - rej_before[(sym, reason)]
        )
        assert got == n, (sym, reason)
    last = [h for h in out["health"] if h["symbol"] == "BTC-PERP"][-1]
    assert _value("ensemble_equity_usd", symbol="BTC-PERP") == last["equity_usd"]
    assert _value("ensemble_position_qty", symbol="BTC-PERP") == last["position_qty"]
    state = last["trading_state"]
    assert _value("ensemble_trading_state", symbol="BTC-PERP", ensemble_trading_state=state) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_running_flow_serves_its_metrics_on_the_bytewax_api_server(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # where it writes dataflow.json
        "ENSEMBLE_OUT": str(tmp_path),
        "ENSEMBLE_DAYS": "10",
        "ENSEMBLE_OVERRIDES": json.dumps({"warmup_bars": 150}),
    }
    log = tmp_path / "stderr.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.ensemble"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        page, deadline = "", time.monotonic() + 120
        while "ensemble_decisions_total{" not in page:
            assert proc.poll() is None, f"the flow ended before it was scraped:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no ensemble metrics on /metrics"
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    page = resp.read().decode()
            except OSError:
                pass
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    for name in (
        'ensemble_input_messages_total{stream="trades"}',
        'ensemble_bars_total{complete="true",symbol="BTC-PERP",timeframe="5m"}',
        "ensemble_decision_latency_seconds_bucket",
        "ensemble_model_confidence_bucket",
        'ensemble_equity_usd{symbol="BTC-PERP"}',
        'ensemble_drawdown{symbol="BTC-PERP"}',
        'ensemble_trading_state{ensemble_trading_state="ACTIVE",symbol="BTC-PERP"}',
        "ensemble_strategy_status{",
        'ensemble_event_lag_seconds{symbol="BTC-PERP"}',
    ):
        assert name in page, f"{name} missing from /metrics"
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in page.splitlines()
        if line.startswith("ensemble_") and " " in line
    }
    assert values["ensemble_decision_latency_seconds_count"] > 0  # the buckets exist at zero
    assert values['ensemble_bars_total{complete="true",symbol="BTC-PERP",timeframe="5m"}'] > 0


def test_the_event_lag_grows_while_no_heartbeat_comes(monkeypatch):
    """`ensemble_event_lag_seconds` is the wall clock minus the last heartbeat's event
    time when scraped: a flow that stopped deciding shows a growing lag on the dashboard,
    not the small lag of its last heartbeat."""
    from dataflows import metrics

    now = {"t": 1_800_000_000.0}
    monkeypatch.setattr(metrics.time, "time", lambda: now["t"])
    health = {
        "symbol": "LAG-PERP",
        "trading_state": "ACTIVE",
        "strategy_status": "ok",
        "halt_reason": "",
        "ts_event_ms": int((now["t"] - 2.0) * 1000),
    }
    metrics.observe("health", health)
    assert _value("ensemble_event_lag_seconds", symbol="LAG-PERP") == 2.0
    now["t"] += 600  # ten minutes without a heartbeat: the flow is stuck
    assert _value("ensemble_event_lag_seconds", symbol="LAG-PERP") == 602.0
    metrics.observe("health", {**health, "ts_event_ms": int((now["t"] - 1.0) * 1000)})
    assert _value("ensemble_event_lag_seconds", symbol="LAG-PERP") == 1.0


@pytest.mark.slow
def test_an_account_wide_kill_switch_shows_on_the_kill_switch_metric(tmp_path):
    """The account's limits are kill-switches too (operators/reasons.py: only an operator's
    reset_kill_switch lifts them; the alerts consumer raises kill_switch for them): the
    Prometheus rule EnsembleKillSwitch and the dashboard read `ensemble_kill_switch`."""
    from operators.reasons import KILL_SWITCH_REASONS

    overrides = {"warmup_bars": 150, "account.max_drawdown": 0.00001}
    out = run_records(small_settings(tmp_path, ENSEMBLE_OVERRIDES=json.dumps(overrides)))
    last = {h["symbol"]: h for h in out["health"]}
    for sym, h in last.items():
        kill = h["halt_reason"].split(":")[0]
        assert h["trading_state"] == "HALTED" and kill == "account_drawdown_limit", h
        assert kill in KILL_SWITCH_REASONS
        assert _value("ensemble_kill_switch", symbol=sym, ensemble_kill_switch=kill) == 1, sym
        assert _value("ensemble_kill_switch", symbol=sym, ensemble_kill_switch="none") == 0, sym


def test_every_error_stage_is_exported_at_zero_before_its_first_error():
    """Prometheus's increase() sees no increase in a series that appears already at 1, so
    the rule EnsembleErrorEvent (increase(ensemble_errors_total[10m]) > 0) would miss a
    stage's first error after every start unless the series is there at 0 before it."""
    import re

    code = (ROOT / "dataflows" / "ensemble.py").read_text()
    stages = set(re.findall(r'_error\(\s*(?:self\.)?stamp,\s*"(\w+)"', code))
    assert stages >= {"market", "features", "predict", "strategy", "context_join"}, stages
    page = subprocess.run(  # a fresh process: nothing counted yet
        [sys.executable, "-c", "import dataflows.metrics, prometheus_client as p; "
         "print(p.generate_latest().decode())"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for stage in sorted(stages):
        assert f'ensemble_errors_total{{stage="{stage}"}} 0.0' in page, stage


def test_the_per_fill_series_of_every_traded_symbol_are_exported_at_zero_from_the_start(tmp_path):
    """EnsembleLargeSlippage and EnsembleLowConfidenceTrades take increase() of per-symbol
    histograms: a symbol's series born at its first fill or trade (count 1) shows no
    increase, so that first one after a start could never alert."""
    script = (
        "import prometheus_client as p\n"
        "from dataflows.ensemble import build_flow\n"
        "from tests.conftest import small_settings\n"
        f"build_flow(small_settings(__import__('pathlib').Path({str(tmp_path)!r})))\n"
        "print(p.generate_latest().decode())\n"
    )
    page = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for sym in ("BTC-PERP", "ETH-PERP"):
        for series in (
            f'ensemble_fill_slippage_bps_count{{symbol="{sym}"}} 0.0',
            f'ensemble_fill_slippage_bps_bucket{{le="10.0",symbol="{sym}"}} 0.0',
            f'ensemble_trade_side_probability_count{{symbol="{sym}"}} 0.0',
            f'ensemble_trade_side_probability_sum{{symbol="{sym}"}} 0.0',
            f'ensemble_fills_total{{symbol="{sym}"}} 0.0',
            f'ensemble_late_records_total{{symbol="{sym}"}} 0.0',
            f'ensemble_outlier_records_total{{symbol="{sym}"}} 0.0',
            f'ensemble_duplicate_trades_total{{symbol="{sym}"}} 0.0',
        ):
            assert series in page, series
