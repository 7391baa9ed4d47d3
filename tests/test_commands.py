"""Operator commands: only signed, fresh, first-seen commands of this strategy change state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataflows.io import RawMessage
from marketdata.generator import DEFAULT_START_MS
from operators.commands import (
    CommandGate,
    CommandRefused,
    CommandReject,
    OperatorKeys,
    canonical_bytes,
    public_key_b64,
    verify,
)
from operators.config import CohortConfig, ConfigError
from operators.events import ControlCommand, Trade
from operators.market import Close, MarketState
from operators.watermark import InputPartitions
from tests.conftest import OPERATOR_KEYS, messages, read_batch, run_records, signed, small_settings
from tests.test_decision_core import (
    ENSEMBLE_1_0,
    NO_DAILY_LIMIT,
    Scenario,
    _into_a_drawdown_halt,
    _one,
)

BAR_MS = 300_000
HALT_AT = DEFAULT_START_MS + 250 * BAR_MS + 90_000
TOPIC = "ensemble.control"  # the default prefix's control topic, what a file run verifies with
KEYS = OperatorKeys.from_json(json.dumps({"alice": public_key_b64(OPERATOR_KEYS["alice"])}))


def _cmd(**kw) -> dict:
    base = {
        "symbol": "*",
        "ts_event_ms": HALT_AT,
        "command": "halt",
        "operator": "alice",
        "reason": "drill",
        "command_id": "c-1",
    }
    return {**base, **kw}


def _control(rec: dict) -> ControlCommand:
    fields = {k: rec[k] for k in ("symbol", "ts_event_ms", "command", "operator", "reason")}
    return ControlCommand(
        **fields,
        command_id=rec["command_id"],
        strategy_id=rec.get("strategy_id", "ensemble_1_1"),
        signature=rec.get("signature", ""),
    )


def test_a_signed_command_verifies_and_names_its_signer():
    cmd = verify(_control(signed(_cmd())), KEYS, "ensemble_1_1", TOPIC)
    assert cmd.signer.startswith("alice/ed25519:")


@pytest.mark.parametrize(
    "rec, reason",
    [
        (_cmd(), CommandReject.UNSIGNED),
        ({**signed(_cmd()), "reason": "changed after signing"}, CommandReject.BAD_SIGNATURE),
        (signed(_cmd(), Ed25519PrivateKey.generate()), CommandReject.BAD_SIGNATURE),
        ({**signed(_cmd()), "signature": "not base64!"}, CommandReject.BAD_SIGNATURE),
        (
            signed(_cmd(operator="mallory"), Ed25519PrivateKey.generate()),
            CommandReject.UNKNOWN_OPERATOR,
        ),
        (signed(_cmd(strategy_id="someone_else")), CommandReject.FOREIGN_STRATEGY),
    ],
)
def test_unsigned_badly_signed_unknown_and_foreign_commands_are_refused(rec, reason):
    with pytest.raises(CommandRefused) as e:
        verify(_control(rec), KEYS, "ensemble_1_1", TOPIC)
    assert e.value.reason is reason and str(e.value).startswith(reason.value)


def test_the_canonical_encoding_covers_every_field_that_changes_the_effect():
    base = canonical_bytes({**_cmd(), "strategy_id": "ensemble_1_1"}, TOPIC)
    for field, other in (("symbol", "BTC-PERP"), ("ts_event_ms", 1), ("command", "resume"),
                         ("operator", "bob"), ("reason", "x"), ("command_id", "c-2"),
                         ("strategy_id", "s")):  # fmt: skip
        changed = {**_cmd(), "strategy_id": "ensemble_1_1", field: other}
        assert canonical_bytes(changed, TOPIC) != base
    assert canonical_bytes({**_cmd(), "strategy_id": "ensemble_1_1"}, "staging.control") != base


def test_a_command_signed_for_another_deployments_topic_is_refused():
    """Staging and production may share a strategy_id and operator keys; a command an
    operator sent to staging's control topic, copied onto production's, must not verify."""
    staging = signed(_cmd(), topic="staging.control")
    assert verify(_control(staging), KEYS, "ensemble_1_1", "staging.control").signer
    with pytest.raises(CommandRefused) as e:
        verify(_control(staging), KEYS, "ensemble_1_1", "prod.control")
    assert e.value.reason is CommandReject.BAD_SIGNATURE and "'prod.control'" in str(e.value)


def test_a_file_run_verifies_commands_against_its_own_prefixs_control_topic(tmp_path):
    """With no Kafka topic to read from, the flow's ENSEMBLE_TOPIC_PREFIX names the topic."""
    settings = small_settings(tmp_path, ENSEMBLE_TOPIC_PREFIX="prod")
    msgs = messages(settings)
    at = next(i for i, m in enumerate(msgs) if m.payload["ts_event_ms"] >= HALT_AT)
    cmds = [
        RawMessage("control", signed(_cmd(command_id="s-1"), topic="staging.control")),
        RawMessage("control", signed(_cmd(command_id="p-1"), topic="prod.control")),
    ]
    out = run_records(settings, [*msgs[:at], *cmds, *msgs[at:]])
    dead = [d for d in out["dead_letters"] if d["source_stream"] == "control"]
    assert [d["reason"].split(":")[0] for d in dead] == ["command_bad_signature"]
    applied = [r["command"]["command_id"] for r in out["repro"] if r["event"] == "control"]
    assert applied and set(applied) == {"p-1"}


class Tick:
    part = None

    def __init__(self, ts_ms: int = HALT_AT - 60_000) -> None:
        self.ts_event_ms = ts_ms


def test_gate_holds_commands_until_the_flow_knows_its_time_then_refuses_replays_and_stale():
    gate = CommandGate(window_ms=900_000)
    c1 = _control(_cmd(symbol="BTC-PERP"))
    assert gate.on_event(c1) == []  # no market time yet: held

    out = gate.on_event(Tick())
    assert out[0] is c1 and isinstance(out[1], Tick)
    replay = gate.on_event(_control(_cmd(symbol="BTC-PERP", reason="again")))[0]
    assert isinstance(replay, CommandRefused) and replay.reason is CommandReject.REPLAYED
    old = gate.on_event(
        _control(_cmd(symbol="BTC-PERP", command_id="c-9", ts_event_ms=1230768000000))
    )
    assert isinstance(old[0], CommandRefused) and old[0].reason is CommandReject.STALE
    # a day ahead of the market (the control topic read ahead): held until the flow is there
    ahead = _control(_cmd(command_id="c-10", ts_event_ms=HALT_AT + 86_400_000))
    assert gate.on_event(ahead) == []
    assert gate.on_event(Tick(HALT_AT + 3_600_000))[0].ts_event_ms == HALT_AT + 3_600_000
    out = gate.on_event(Tick(HALT_AT + 86_400_000 - 600_000))
    assert out[0] is ahead and isinstance(out[1], Tick)


def test_the_flow_time_of_the_gate_is_the_slowest_active_partition_not_the_fastest():
    """Kafka: trades of one partition read hours ahead must not make a command stale."""
    gate = CommandGate(window_ms=900_000, idle_ms=10_000)
    fast, slow = Tick(HALT_AT + 5 * 3_600_000), Tick(HALT_AT - 60_000)
    fast.part, slow.part = "trades#1", "trades#0"
    gate.on_event(slow, 20_000)
    gate.on_event(fast, 20_000)
    (accepted,) = gate.on_event(_control(_cmd(symbol="BTC-PERP")), 20_001)
    assert isinstance(accepted, ControlCommand)


def test_a_held_command_is_not_stale_when_an_idle_partition_lets_the_time_jump_past_it():
    """Kafka, seen flaky under load: the control topic read ahead, its commands held; the
    funding partition holds the time back, then goes idle, and the time jumps hours past
    the commands to the trades read ahead. They were fresh when they arrived."""
    inputs = InputPartitions()
    for part in ("trades#0", "funding#0", "control#0"):
        read_batch(inputs, part, 1, True, 0)
    gate = CommandGate(window_ms=900_000, idle_ms=2_000)
    trades, funding = Tick(HALT_AT + 5 * 3_600_000), Tick(HALT_AT - 3_600_000)
    trades.part, funding.part = "trades#0", "funding#0"
    command = _control(_cmd(symbol="BTC-PERP"))
    command.part = "control#0"
    inputs.saw("control#0", command.ts_event_ms)
    for e in (funding, trades):
        inputs.saw(e.part, e.ts_event_ms)
        gate.on_event(e, 1_000, inputs)
    assert gate.on_event(command, 1_000, inputs) == []  # an hour ahead of the funding: held
    later = Tick(HALT_AT + 5 * 3_600_000 + 1_000)
    later.part = "trades#0"
    read_batch(inputs, "trades#0", 1, False, 5_000)  # funding and control now idle
    out = gate.on_event(later, 5_000, inputs)
    assert out[0] is command and out[1] is later


def test_the_market_step_closes_no_bar_past_a_command_on_its_way_from_the_commands_step():
    """Kafka, seen flaky under load: the commands step let a command through (its hold
    lifted), a market recheck ran before the command reached the market step and closed
    the bar past it, so the command (a resume, shadow off) took effect a bar late."""
    inputs = InputPartitions()
    read_batch(inputs, "trades#0", 1, False, 0)
    market = MarketState("BTC-PERP", False, 0, CohortConfig(), inputs=inputs)
    command = _control(_cmd(symbol="BTC-PERP", ts_event_ms=HALT_AT))
    command.part = "control#0"
    inputs.passed("BTC-PERP", command.ts_event_ms)  # the commands step let it through

    def trade(ts_ms: int, n: int) -> Trade:
        return Trade("BTC-PERP", ts_ms, 100.0, 1.0, 1, f"t{n}", part="trades#0")

    out: list[Any] = []
    start = HALT_AT - HALT_AT % BAR_MS
    market.on_events([trade(start + k * 20_000, k) for k in range(40)], out, 1_000)
    assert not any(isinstance(x, Close) for x in out)  # held at the command's time
    market.on_events([command, trade(start + 40 * 20_000, 40)], out, 1_000)
    closed = [x.bar.start_ms for x in out if isinstance(x, Close)]
    assert (
        closed
        and closed[0] == start
        and out.index(command) < out.index(next(x for x in out if isinstance(x, Close)))
    )


def _run_with(tmp_path, commands: list[dict]) -> dict:
    settings = small_settings(tmp_path)
    msgs = messages(settings)
    out: list[RawMessage] = []
    pending = sorted(commands, key=lambda c: c["ts_event_ms"])
    for m in msgs:
        while pending and m.payload["ts_event_ms"] >= max(pending[0]["ts_event_ms"], HALT_AT):
            out.append(RawMessage("control", pending.pop(0)))
        out.append(m)
    return run_records(settings, out)


def test_forged_commands_in_the_flow_are_dead_letters_and_never_change_state(tmp_path):
    mallory = Ed25519PrivateKey.generate()
    forged = [
        _cmd(command_id="f-1"),  # unsigned
        {**signed(_cmd(command_id="f-2")), "reason": "tampered"},
        signed(_cmd(operator="mallory", command_id="f-3"), mallory),
        signed(_cmd(command_id="f-4", strategy_id="other_strategy")),
        signed(_cmd(command_id="f-5", ts_event_ms=1230768000000)),  # stamped 2009-01-01
    ]
    out = _run_with(tmp_path, forged)
    assert not [r for r in out["repro"] if r["event"] == "control"], "no command was applied"
    assert {s["trading_state"] for s in out["signals"]} == {"ACTIVE"}
    reasons = sorted(d["reason"].split(":")[0] for d in out["dead_letters"])
    assert reasons == sorted(
        [
            "command_unsigned",
            "command_bad_signature",
            "command_unknown_operator",
            "command_foreign_strategy",
            "command_stale",
            "command_stale",
        ]
    )  # fmt: skip  (the 2009 reset is refused once per symbol)


def test_a_replayed_command_id_is_a_dead_letter_and_the_audit_keeps_the_signer(tmp_path):
    halt = signed(_cmd(command_id="c-1"))
    resume = signed(_cmd(command="resume", command_id="c-1", ts_event_ms=HALT_AT + 60_000))
    out = _run_with(tmp_path, [halt, resume])
    audits = [r for r in out["repro"] if r["event"] == "control"]
    assert sorted(a["command"]["command"] for a in audits) == ["halt", "halt"]
    assert all(a["command"]["signer"].startswith("alice/ed25519:") for a in audits)
    dead = [d for d in out["dead_letters"] if d["reason"].startswith("command_replayed")]
    assert len(dead) == 2  # one per symbol


def test_halt_then_resume_never_lifts_a_kill_switch_halt():
    sc = Scenario(ENSEMBLE_1_0, **NO_DAILY_LIMIT)
    _into_a_drawdown_halt(sc)
    sc.bar()
    sc.bar(controls=("halt",))
    out = sc.bar(p_up=0.60, s_top=0.5, rv=0.05, controls=("resume",))
    resume = json.loads(next(r for s, r in out if s == "repro")["change_json"])
    # the resume is refused outright (before, it was applied and the drawdown re-fired)
    assert resume["result"].startswith("ignored: halted by kill-switch 'drawdown_limit")
    assert resume["after"]["trading_state"] == "HALTED"
    health = _one(out, "health")
    assert health["trading_state"] == "HALTED" and health["halt_reason"].startswith("drawdown")


def test_bad_operator_keys_stop_the_start_naming_the_setting():
    with pytest.raises(ConfigError, match="ENSEMBLE_OPERATOR_KEYS_JSON"):
        small_settings(
            __import__("pathlib").Path("/tmp"), ENSEMBLE_OPERATOR_KEYS_JSON='{"a": "xx"}'
        )


def test_copies_of_a_held_command_are_refused_at_once_and_cannot_crowd_out_a_new_one():
    """Someone with the operator's Kafka credentials but no signing key can only replay
    signed commands. Copies of one held while the flow catches up were all held too, so
    MAX_HELD of them made the next real command (a halt) `command_too_many_held`."""
    from operators.commands import MAX_HELD

    gate = CommandGate(window_ms=900_000)
    gate.on_event(Tick())  # the flow's time: a minute before HALT_AT
    ahead = _cmd(symbol="BTC-PERP", command_id="c-ahead", ts_event_ms=HALT_AT + 3_600_000)
    assert gate.on_event(_control(ahead)) == []  # an hour ahead: held
    for _ in range(MAX_HELD):
        (copy,) = gate.on_event(_control(ahead))
        assert isinstance(copy, CommandRefused) and copy.reason is CommandReject.REPLAYED
    halt = _control(_cmd(symbol="BTC-PERP", command_id="c-halt", ts_event_ms=HALT_AT + 3_700_000))
    assert gate.on_event(halt) == []  # held, not refused
    out = gate.on_event(Tick(HALT_AT + 3_700_000))
    assert [c.command_id for c in out if isinstance(c, ControlCommand)] == ["c-ahead", "c-halt"]


@pytest.mark.parametrize(
    ("env", "flag", "signed_for"),
    [
        ({"ENSEMBLE_PRESET": "ensemble_1_0"}, [], "ensemble_1_0"),
        ({"STRATEGY_ID": "ensemble_1_0"}, [], "ensemble_1_0"),
        ({}, [], "ensemble_1_1"),
        ({"ENSEMBLE_PRESET": "ensemble_1_0"}, ["--strategy-id", "ensemble_1_1"], "ensemble_1_1"),
        ({"ENSEMBLE_OVERRIDES": '{"strategy_id": "ensemble_exp"}'}, [], "ensemble_exp"),
        ({}, ["--strategy-id", "ensemble_exp"], "ensemble_exp"),
    ],
)
def test_the_command_line_signs_for_the_preset_the_flow_runs(
    tmp_path, monkeypatch, env, flag, signed_for
):
    """The runbook's `python -m dataflows.control reset_kill_switch ...` signed every
    command for ensemble_1_1 whatever ENSEMBLE_PRESET said, so on a 1.0 flow the
    kill-switch reset was refused as `command_foreign_strategy`. It now takes the flow's
    own strategy_id (ENSEMBLE_PRESET or STRATEGY_ID, with ENSEMBLE_OVERRIDES, read as the
    flow reads them); --strategy-id still wins, whatever the id."""
    from dataflows import control

    key = tmp_path / "alice.key"
    control.keygen(key, "alice")
    for name in ("ENSEMBLE_PRESET", "STRATEGY_ID", "ENSEMBLE_OVERRIDES", "ENSEMBLE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENSEMBLE_OPERATOR_KEY_FILE", str(key))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sent = []
    monkeypatch.setattr(control, "send", lambda _b, _p, rec: sent.append(rec) or (0, 0))
    argv = ["reset_kill_switch", "--bootstrap", "127.0.0.1:9", "--operator", "alice"]
    assert control.main([*argv, "--reason", "reviewed", *flag]) == 0
    assert [r["strategy_id"] for r in sent] == [signed_for]
