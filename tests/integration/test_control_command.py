"""The operator's command line reaches the flow through Kafka and is audited."""

from __future__ import annotations

import base64
import json

from bytewax.testing import run_main

from dataflows import control
from dataflows.ensemble import build_flow
from dataflows.settings import Settings
from dataflows.topics import provision
from marketdata.generator import DEFAULT_START_MS, generate
from schemas import codec
from tests.conftest import OPERATOR_KEYS, small_settings
from tests.integration.kafka_io import flow_env, principal_env, read_topic
from tests.integration.test_kafka_restart import _publish

BAR_MS = 300_000
HALT_AT = DEFAULT_START_MS + 250 * BAR_MS + 1_000
RESET_AT = DEFAULT_START_MS + 400 * BAR_MS + 1_000


def test_halt_and_reset_sent_with_the_command_line_are_applied_and_audited(
    kafka_bootstrap, prefix, tmp_path, capsys, monkeypatch
):
    settings = small_settings(tmp_path)
    provision(kafka_bootstrap, prefix)
    _publish(kafka_bootstrap, prefix, [(s, r) for s, r in generate(settings.generator)])
    key_file = tmp_path / "ops-oncall.key"
    key_file.write_text(base64.b64encode(OPERATOR_KEYS["ops-oncall"].private_bytes_raw()).decode())
    with monkeypatch.context() as m:  # as the operator's own Kafka principal and key
        m.setenv("ENSEMBLE_OPERATOR_KEY_FILE", str(key_file))
        for k, v in principal_env("operator").items():
            m.setenv(k, v)
        forged = control.command_record("reset_kill_switch", "*", "ops-oncall", "forged", HALT_AT)
        forged["signature"] = ""  # what anyone with network access could send before
        sent = {}
        for command, at in (("halt", HALT_AT), ("reset_kill_switch", RESET_AT)):
            argv = [command, "--bootstrap", kafka_bootstrap, "--prefix", prefix, "--at", str(at),
                    "--operator", "ops-oncall", "--reason", f"{command} drill"]  # fmt: skip
            assert control.main(argv) == 0
            out = capsys.readouterr().out
            assert f"sent {command} for *" in out
            sent[command] = out.split(" as ", 1)[1].split(" ", 1)[0]
        control.send(kafka_bootstrap, prefix, forged)
        # before the flow ran: no receipt yet, and the operator is told why there may be none
        receipt = ["receipt", sent["halt"], "--bootstrap", kafka_bootstrap, "--prefix", prefix]
        assert control.main(receipt) == 1
        assert "no receipt for" in capsys.readouterr().err
        assert control.main([*receipt[:-1], f"{prefix}-none"]) == 2  # a prefix with no topics
        assert f"cannot read {prefix}-none.repro" in capsys.readouterr().err

    # the replay's commands lie hours of event time past where the flow starts reading
    env = {**flow_env(kafka_bootstrap, prefix), "ENSEMBLE_COMMAND_WINDOW_MS": str(2 * 86_400_000)}
    run_main(build_flow(Settings.from_env(env)))
    capsys.readouterr()  # the run's summary

    repro = read_topic(kafka_bootstrap, f"{prefix}.repro", codec.STREAM_SCHEMAS["repro"])
    audits = [r for r in repro if r["event"] == "control"]
    assert sorted((a["symbol"], a["command"]["command"]) for a in audits) == [
        ("BTC-PERP", "halt"), ("BTC-PERP", "reset_kill_switch"),
        ("ETH-PERP", "halt"), ("ETH-PERP", "reset_kill_switch"),
    ]  # fmt: skip
    dead = read_topic(
        kafka_bootstrap, f"{prefix}.dead_letters", codec.STREAM_SCHEMAS["dead_letters"]
    )
    assert [d["reason"].split(":")[0] for d in dead] == ["command_unsigned"]
    for a in audits:
        assert a["command"]["signer"].startswith("ops-oncall/ed25519:")
        assert a["command"]["operator"] == "ops-oncall"
        assert a["command"]["reason"] == f"{a['command']['command']} drill"
        assert a["command"]["command_id"].startswith("cmd-")
        change = json.loads(a["change_json"])
        want = "HALTED" if a["command"]["command"] == "halt" else "ACTIVE"
        assert change["after"]["trading_state"] == want
    # the operator's own receipt of each, read as the operator principal (repro only), once
    # per symbol though a second run (as after a crash) publishes every receipt again
    run_main(build_flow(Settings.from_env(env)))
    capsys.readouterr()
    with monkeypatch.context() as m:
        for k, v in principal_env("operator").items():
            m.setenv(k, v)
        for command, want in (("halt", "ACTIVE -> HALTED"), ("reset_kill_switch", "-> ACTIVE")):
            argv = ["receipt", sent[command], "--bootstrap", kafka_bootstrap, "--prefix", prefix]
            assert control.main(argv) == 0
            lines = capsys.readouterr().out.splitlines()
            assert [line.split(" at ")[0] for line in lines] == [
                f"{command} for BTC-PERP", f"{command} for ETH-PERP"
            ]  # fmt: skip
            assert all("by ops-oncall (ops-oncall/ed25519:" in x and want in x for x in lines)
    health = read_topic(kafka_bootstrap, f"{prefix}.health", codec.STREAM_SCHEMAS["health"])
    btc = {h["ts_event_ms"]: h["trading_state"] for h in health if h["symbol"] == "BTC-PERP"}
    halted = [t for t, s in btc.items() if s == "HALTED"]
    assert halted and min(halted) > HALT_AT and max(halted) < RESET_AT + BAR_MS


def test_a_command_without_a_reason_is_not_sent(capsys):
    argv = ["halt", "--bootstrap", "127.0.0.1:1", "--operator", "ops", "--reason", " "]
    assert control.main(argv) == 2
    assert "an operator and a reason are required" in capsys.readouterr().err
