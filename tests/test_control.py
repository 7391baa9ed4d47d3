"""Operator commands travel through the flow in event-time order and are audited."""

from __future__ import annotations

from dataflows.io import RawMessage
from marketdata.generator import DEFAULT_START_MS
from tests.conftest import messages, run_records, signed, small_settings

HALT_AT = DEFAULT_START_MS + 250 * 300_000 + 90_000  # inside the 251st 5m bar
RESUME_AT = DEFAULT_START_MS + 400 * 300_000 + 10_000


def _command(ts: int, command: str, cid: str) -> RawMessage:
    return RawMessage(
        "control",
        signed(
            {
                "symbol": "*",
                "ts_event_ms": ts,
                "command": command,
                "operator": "alice",
                "reason": "drill",
                "command_id": cid,
            }
        ),
    )


def _with_commands(msgs: list[RawMessage]) -> list[RawMessage]:
    out: list[RawMessage] = []
    pending = [_command(HALT_AT, "halt", "c-1"), _command(RESUME_AT, "resume", "c-2")]
    for m in msgs:
        while pending and m.payload["ts_event_ms"] >= pending[0].payload["ts_event_ms"]:
            out.append(pending.pop(0))
        out.append(m)
    return out


def test_halt_stops_new_entries_until_resume_and_both_are_audited(tmp_path):
    settings = small_settings(tmp_path)
    out = run_records(settings, _with_commands(messages(settings)))
    halted_close = HALT_AT - HALT_AT % 300_000 + 300_000  # applied at the next 5m close
    resumed_close = RESUME_AT - RESUME_AT % 300_000 + 300_000
    in_halt = [o for o in out["orders"] if halted_close <= o["ts_event_ms"] < resumed_close]
    assert all(o["purpose"] == "kill_switch_flatten" for o in in_halt), in_halt
    assert any(
        o["purpose"] in ("entry", "flip")
        for o in out["orders"]
        if o["ts_event_ms"] >= resumed_close
    ), "trading did not resume"
    states = {(s["symbol"], s["ts_event_ms"]): s["trading_state"] for s in out["signals"]}
    for sym in ("BTC-PERP", "ETH-PERP"):
        assert states[(sym, halted_close - 300_000)] == "ACTIVE"
        assert states[(sym, halted_close)] == "HALTED"
        assert states[(sym, resumed_close)] == "ACTIVE"
    audits = [r for r in out["repro"] if r["event"] == "control"]
    assert sorted((a["symbol"], a["command"]["command"]) for a in audits) == [
        ("BTC-PERP", "halt"),
        ("BTC-PERP", "resume"),
        ("ETH-PERP", "halt"),
        ("ETH-PERP", "resume"),
    ]
    assert all(
        a["command"]["operator"] == "alice" and a["command"]["reason"] == "drill" for a in audits
    )
    vetoed = [r for r in out["rejections"] if r["reason"] == "trading_state_halted"]
    assert all(halted_close <= r["ts_event_ms"] < resumed_close for r in vetoed)
