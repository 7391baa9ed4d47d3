"""The status line an operator reads while the flow runs (dataflows/progress.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dataflows import progress

T = 1_704_326_400_000  # 2024-01-04 00:00 UTC


def _beat(sym: str, state: str, reason: str = "", bars: int = 2_000) -> dict[str, Any]:
    return {"symbol": sym, "ts_event_ms": T, "bars": bars, "trading_state": state,
            "halt_reason": reason}  # fmt: skip


def _state(line: str, sym: str) -> str:
    """What the line says of `sym` after its decisions and fills (counted by the process's
    metrics, which other tests move)."""
    [part] = [p for p in line.split("; ") if p.startswith(sym + " ")]
    return part.split(" fills ", 1)[1]


@pytest.fixture(autouse=True)
def _heartbeats(monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEATS", {})


def test_a_halted_symbol_says_which_halt_without_its_free_text():
    """At 3 a.m. 'HALTED' alone sent the operator to the metrics or the alerts to learn
    whether a kill-switch or a colleague stopped it; an operator's reason stays out (free
    text: the health record carries it, scrubbed)."""
    progress.heartbeat(_beat("BTC-PERP", "HALTED", "consecutive_losses: 4 losing trades"))
    progress.heartbeat(_beat("ETH-PERP", "HALTED", "operator_halt: rolling the 3am deploy"))
    progress.heartbeat(_beat("SOL-PERP", "ACTIVE"))
    line = progress.Status(warmup_bars=1_000).line()
    assert _state(line, "BTC-PERP") == "HALTED (consecutive_losses)"
    assert _state(line, "ETH-PERP") == "HALTED (operator_halt)"
    assert _state(line, "SOL-PERP") == "ACTIVE"
    assert "rolling" not in line and "losing trades" not in line


def test_a_symbol_in_warm_up_says_how_far():
    progress.heartbeat(_beat("BTC-PERP", "ACTIVE", bars=575))
    assert _state(progress.Status(1_000).line(), "BTC-PERP") == "warm-up 575/1000"
