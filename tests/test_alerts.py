"""The alerts consumer: every SPEC 9 rule, configuration, dedup, rate limit, silencing, Slack.

Records are built here as the flow writes them (each one is checked against its Avro
schema), so the copilot and the Kafka tests reuse these builders. The webhook is a real
HTTP server on 127.0.0.1 speaking Slack's incoming-webhook protocol.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from consumers import alerts
from consumers.alerts import (
    Alert,
    AlertsConfig,
    AlertsConfigError,
    Notifier,
    Rules,
    Silence,
    load_config,
    run,
)
from consumers.slack import SlackWebhook, WebhookConfigError, check_url
from consumers.stream import Dedup, dedup_key
from operators.config import ENSEMBLE_1_1
from schemas import codec

SID = "ensemble_1_1"
T0 = 1_704_326_400_000  # 2024-01-04 00:00 UTC
MIN = 60_000


# -- records as the flow writes them --------------------------------------------------------
def _env(sym: str, ts: int) -> dict[str, Any]:
    return {
        "symbol": sym,
        "ts_event_ms": ts,
        "ts_init_ms": ts,
        "strategy_id": SID,
        "schema_version": "v1",
    }


def did(sym: str, ts: int) -> str:
    return f"{SID}:{sym}:{ts}"


def checked(schema: str, rec: dict[str, Any]) -> dict[str, Any]:
    codec.check(schema, rec)
    return rec


def health(sym: str = "BTC-PERP", ts: int = T0, **kw: Any) -> dict[str, Any]:
    rec = {
        **_env(sym, ts),
        "heartbeat_seq": 1,
        "bars": 1,
        "gap_bars": 0,
        "equity_usd": 10_000.0,
        "cash_usd": 10_000.0,
        "position_qty": 0.0,
        "position_notional_usd": 0.0,
        "unrealized_usd": 0.0,
        "realized_usd": 0.0,
        "fees_usd": 0.0,
        "funding_usd": 0.0,
        "drawdown": 0.0,
        "max_drawdown": 0.0,
        "peak_equity_usd": 10_000.0,
        "round_trips": 0,
        "wins": 0,
        "losses": 0,
        "win_rate": None,
        "avg_conf": None,
        "sharpe_30d": None,
        "consecutive_losses": 0,
        "trading_state": "ACTIVE",
        "halt_reason": "",
        "strategy_status": "ok",
        "bandit": {"pros": {"n": 1.0, "mean_bps": 2.0, "sd_bps": 40.0}},
    }
    rec.update(kw)
    return checked("health", rec)


def signals(
    sym: str = "BTC-PERP",
    ts: int = T0,
    *,
    action: str = "no_trade",
    reason: str = "no_eligible_arm",
    arm: str | None = None,
    direction: int = 0,
    p_up: float | None = 0.55,
    s_top: float = 0.0,
    s_bot: float = 0.0,
    eligible: dict[str, bool] | None = None,
    samples: dict[str, float] | None = None,
    conf_min: float | None = 0.65,
    target: float | None = None,
    would_veto: list[str] | None = None,
    features: dict[str, float] | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    model = None
    if p_up is not None:
        model = {
            "p_up": p_up,
            "p_down": 1 - p_up,
            "conf": max(p_up, 1 - p_up),
            "alpha": abs(2 * p_up - 1),
            "s_model_meta": 2 * p_up - 1,
            "s_model_bma": 2 * p_up - 1,
            "model_id": "test-model",
        }
    feats = features if features is not None else {"rv_annual": 0.5, "rv_1h_annual": 0.4}
    rec = {
        **_env(sym, ts),
        "bar": {
            "open": 42_000.0,
            "high": 42_100.0,
            "low": 41_900.0,
            "close": 42_050.0,
            "volume": 3.0,
            "count": 50 if complete else 0,
            "complete": complete,
        },
        "features": feats,
        "model": model,
        "cohort": {
            "s_top": s_top,
            "s_bot": s_bot,
            "s_mood": (s_top - s_bot) / 2,
            "source": "trades",
            "age_ms": 0,
            "stale": False,
        },
        "decision": {
            "decision_id": did(sym, ts),
            "action": action,
            "reason": reason,
            "chosen_arm": arm,
            "eligible": eligible or {},
            "samples": samples or {},
            "direction": direction,
            "alpha": abs(s_top) if arm == "pros" else 0.0,
            "conf_min": conf_min,
            "target_position": target,
            "vol_scale": 1.0 if target is not None else None,
            "would_veto": would_veto or [],
            "exit": None,
        },
        "trading_state": "ACTIVE",
        "shadow": False,
    }
    return checked("signals", rec)


def order(
    sym: str,
    ts: int,
    side: str,
    purpose: str = "entry",
    arm: str | None = "pros",
    qty: float = 0.1,
    px: float = 42_000.0,
    position_before: float = 0.0,
) -> dict[str, Any]:
    return checked(
        "order_intent",
        {
            **_env(sym, ts),
            "decision_id": did(sym, ts),
            "client_order_id": "ens-" + str(ts),
            "side": side,
            "qty": qty,
            "ref_px": px,
            "notional_usd": qty * px,
            "purpose": purpose,
            "arm": arm,
            "target_position": (0.0 if purpose not in ("entry", "flip") else 0.84)
            * (1 if side == "buy" else -1),
            "position_qty": position_before,
            "fill_rule": "next_bar_open",
            "dry_run": True,
        },
    )


def execution(
    sym: str,
    ts: int,
    side: str,
    purpose: str = "entry",
    qty: float = 0.1,
    fill_px: float = 42_004.2,
    ref_px: float = 42_000.0,
    slippage_bps: float = 1.0,
    position_qty: float | None = None,
    trade_pnl_usd: float | None = None,
) -> dict[str, Any]:
    if position_qty is None:
        position_qty = 0.0 if trade_pnl_usd is not None else (qty if side == "buy" else -qty)
    return checked(
        "execution",
        {
            **_env(sym, ts),
            "decision_id": did(sym, ts),
            "client_order_id": "ens-" + str(ts),
            "status": "filled",
            "side": side,
            "qty": qty,
            "fill_px": fill_px,
            "ref_px": ref_px,
            "slippage_bps": slippage_bps,
            "fee_usd": qty * fill_px * 5e-4,
            "notional_usd": qty * fill_px,
            "purpose": purpose,
            "position_qty": position_qty,
            "avg_px": 0.0 if position_qty == 0 else fill_px,
            "cash_usd": 10_000.0,
            "equity_usd": 10_000.0,
            "realized_usd": 0.0,
            "trade_pnl_usd": trade_pnl_usd,
            "reward_bps": None if trade_pnl_usd is None else trade_pnl_usd / 4.2,
            "dry_run": True,
        },
    )


def costs(sym: str, ts: int, fee_usd: float = 2.1) -> dict[str, Any]:
    return checked(
        "costs",
        {
            **_env(sym, ts),
            "decision_id": did(sym, ts),
            "fee_usd": fee_usd,
            "fee_bps": 5.0,
            "slippage_bps": 1.0,
            "slippage_usd": 0.42,
            "notional_usd": 4200.0,
        },
    )


def rejection(
    sym: str, ts: int, reason: str, detail: str = "", stage: str = "gate", arm: str = "pros"
) -> dict[str, Any]:
    return checked(
        "rejection",
        {
            **_env(sym, ts),
            "decision_id": did(sym, ts),
            "stage": stage,
            "reason": reason,
            "detail": detail or reason,
            "arm": arm,
            "direction": -1,
            "trading_state": "ACTIVE",
        },
    )


def ensemble(sym: str, ts: int, trend_15m: float, trend_1h: float, direction: int = 0) -> dict:
    def view(tf: str, trend: float) -> dict[str, Any]:
        return {
            "timeframe": tf,
            "signal": 0.0,
            "trend": trend,
            "age_ms": 0,
            "stale": False,
            "missing": False,
            "ext_signal": 0.0,
            "ext_confidence": 0.0,
            "ext_stale": False,
        }

    return checked(
        "ensemble",
        {
            **_env(sym, ts),
            "timeframes": [view("5m", 0.0), view("15m", trend_15m), view("1h", trend_1h)],
            "combined": {
                "direction": direction,
                "chosen_arm": None,
                "agreeing_overlays": 1,
                "usable_overlays": 2,
                "action": "trade" if direction else "no_trade",
            },
        },
    )


def repro(
    sym: str, ts: int, event: str = "start", command: str | None = None, config: dict | None = None
) -> dict[str, Any]:
    cmd = None
    if command is not None:
        cmd = {
            "command": command,
            "operator": "alice@example.com",
            "reason": "checked the losses",
            "command_id": f"cmd-{ts}",
            "ts_command_ms": ts,
        }
    return checked(
        "repro",
        {
            **_env(sym, ts),
            "event": event,
            "config_json": json.dumps(config or ENSEMBLE_1_1.as_dict(), sort_keys=True),
            "model_id": "test-model",
            "model_sha256": "0" * 64,
            "command": cmd,
            "change_json": "{}",
        },
    )


def error(sym: str, ts: int, message: str = "model server hiccup", stage: str = "predict") -> dict:
    return checked(
        "error",
        {
            **_env(sym, ts),
            "stage": stage,
            "error_type": "RuntimeError",
            "message": message,
            "context_json": json.dumps({"traceback": "..."}),
        },
    )


# -- a Slack webhook on 127.0.0.1 -------------------------------------------------------------
class WebhookServer:
    """Records every POST; answers from `script` (status, headers, body) then 200 "ok"."""

    def __init__(self, script: list[tuple[int, dict[str, str], str]] | None = None) -> None:
        self.posts: list[dict[str, Any]] = []
        self.script = list(script or [])
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.posts.append(
                    {
                        "path": self.path,
                        "content_type": self.headers["Content-Type"],
                        "json": json.loads(body),
                    }
                )
                status, headers, text = server.script.pop(0) if server.script else (200, {}, "ok")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/T000/B000/s3cr3tXYZ"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def texts(self) -> list[str]:
        return [p["json"]["text"] for p in self.posts]

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def webhook(script: list[tuple[int, dict[str, str], str]] | None = None) -> Iterator[WebhookServer]:
    with WebhookServer(script) as server:
        yield server


class FakeSlack:
    name = "slack"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def send(self, text: str, critical: bool = False) -> Any:
        self.texts.append(text)
        return type("R", (), {"ok": True})()


class ListReader:
    """A reader over fixed batches of (stream, record); its position is the number of
    batches read, `committed` the last position committed."""

    def __init__(self, batches: list[list[tuple[str, dict[str, Any]]]]) -> None:
        self.batches = list(batches)
        self.read = 0
        self.commits = 0
        self.committed = 0

    def poll(self, timeout_s: float) -> tuple[list, int]:
        if not self.batches:
            return [], 0
        b = self.batches.pop(0)
        self.read += 1
        return list(b), len(b)

    def positions(self) -> int:
        return self.read

    def commit(self, positions: int | None = None) -> None:
        self.commits += 1
        self.committed = self.read if positions is None else positions


class Clock:
    def __init__(self, t: float = 1_000.0, step: float = 1.0) -> None:
        self.t, self.step = t, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def rules_for(**cfg: Any) -> Rules:
    return Rules(AlertsConfig(**cfg), now_s=0.0)


def fire(rules: Rules, stream: str, rec: dict[str, Any], now: float = 1.0) -> list[Alert]:
    return rules.on_record(stream, rec, now)


# -- configuration ---------------------------------------------------------------------------
def test_defaults_follow_the_spec_thresholds():
    cfg = load_config({})
    assert cfg == AlertsConfig()
    assert cfg.heartbeat_timeout_s == 600.0  # 2 intervals of the 5m bar
    assert cfg.low_conf_threshold == 0.5 and cfg.start == "latest"


def test_environment_sets_every_threshold():
    cfg = load_config(
        {
            "ENSEMBLE_ALERTS_DRAWDOWN_BREACH": "0.08",
            "ENSEMBLE_ALERTS_CONSECUTIVE_LOSSES": "4",
            "ENSEMBLE_ALERTS_SLIPPAGE_BPS": "7.5",
            "ENSEMBLE_ALERTS_HEARTBEAT_INTERVAL_S": "60",
            "ENSEMBLE_ALERTS_SYMBOLS": "BTC-PERP, ETH-PERP",
            "ENSEMBLE_ALERTS_DISABLED_RULES": "error_event",
            "ENSEMBLE_ALERTS_SILENCE": (
                "large_slippage:ETH-PERP,heartbeat_missing@2030-01-01T00:00Z"
            ),
            "ENSEMBLE_ALERTS_START": "earliest",
        }
    )
    assert cfg.drawdown_breach == 0.08 and cfg.consecutive_losses == 4
    assert cfg.slippage_bps == 7.5 and cfg.heartbeat_timeout_s == 120.0
    assert cfg.symbols == ("BTC-PERP", "ETH-PERP")
    assert not cfg.enabled("error_event") and cfg.enabled("kill_switch")
    assert cfg.silence == (
        Silence("large_slippage", "ETH-PERP", None),
        Silence("heartbeat_missing", "*", 1_893_456_000.0),
    )


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("ENSEMBLE_ALERTS_DRAWDOWN_BREACH", "1.5", "(0, 1)"),
        ("ENSEMBLE_ALERTS_DRAWDOWN_BREACH", "five", "(0, 1)"),
        ("ENSEMBLE_ALERTS_CONSECUTIVE_LOSSES", "2.5", "integer"),
        ("ENSEMBLE_ALERTS_SLIPPAGE_BPS", "nan", "bps"),
        ("ENSEMBLE_ALERTS_HEARTBEAT_MISSED_INTERVALS", "0.5", ">= 1"),
        ("ENSEMBLE_ALERTS_START", "middle", "earliest or latest"),
        ("ENSEMBLE_ALERTS_DISABLED_RULES", "kill_switch,nosuch", "rules from"),
        ("ENSEMBLE_ALERTS_SILENCE", "nosuch:BTC-PERP", "unknown rule 'nosuch'"),
        ("ENSEMBLE_ALERTS_SILENCE", "error_event@tomorrow", "until"),
        ("ENSEMBLE_ALERTS_RATE_LIMIT_MAX", "0", ">= 1"),
    ],
)
def test_a_bad_value_stops_the_start_naming_variable_and_value(var, value, fragment):
    with pytest.raises(AlertsConfigError) as e:
        load_config({var: value})
    msg = str(e.value)
    assert var in msg and repr(value) in msg and fragment in msg


def test_an_unknown_variable_is_an_error_not_a_silent_typo():
    with pytest.raises(AlertsConfigError, match="ENSEMBLE_ALERTS_DRAWDOWN_BRAECH"):
        load_config({"ENSEMBLE_ALERTS_DRAWDOWN_BRAECH": "0.05"})


def test_a_json_file_sets_values_and_the_environment_overrides_it(tmp_path):
    path = tmp_path / "alerts.json"
    path.write_text(
        json.dumps(
            {
                "slippage_bps": 20,
                "consecutive_losses": 2,
                "silence": [{"rule": "error_event", "symbol": "ETH-PERP", "until": "2030-01-01"}],
            }
        )
    )
    cfg = load_config({"ENSEMBLE_ALERTS_SLIPPAGE_BPS": "15"}, path)
    assert cfg.slippage_bps == 15.0 and cfg.consecutive_losses == 2
    assert cfg.silence == (Silence("error_event", "ETH-PERP", 1_893_456_000.0),)
    path.write_text(json.dumps({"slippage": 20}))
    with pytest.raises(AlertsConfigError, match=r"unknown setting\(s\) \['slippage'\]"):
        load_config({}, path)
    path.write_text(json.dumps({"consecutive_losses": -1}))
    with pytest.raises(AlertsConfigError, match="consecutive_losses=-1"):
        load_config({}, path)
    path.write_text("{not json")
    with pytest.raises(AlertsConfigError, match="not valid JSON"):
        load_config({}, path)
    with pytest.raises(AlertsConfigError, match="cannot read"):
        load_config({}, tmp_path / "absent.json")


def test_main_refuses_to_start_on_a_bad_value(capsys):
    code = alerts.main(["--bootstrap", "127.0.0.1:1"], env={"ENSEMBLE_ALERTS_SLIPPAGE_BPS": "-3"})
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "ENSEMBLE_ALERTS_SLIPPAGE_BPS='-3'" in err


def test_a_bad_webhook_url_stops_the_start_without_printing_the_url(capsys):
    url = "http://hooks.example.com/services/T1/B1/s3cr3t"
    code = alerts.main(["--bootstrap", "127.0.0.1:1"], env={"SLACK_WEBHOOK_URL": url})
    err = capsys.readouterr().err
    assert code == 2 and "SLACK_WEBHOOK_URL must be an https:// URL" in err
    assert "s3cr3t" not in err and "hooks.example.com" not in err
    assert check_url("https://hooks.slack.com/services/T/B/x") and check_url("http://127.0.0.1:9/x")
    with pytest.raises(WebhookConfigError):
        check_url("ftp://hooks.slack.com/x")


# -- the rules -------------------------------------------------------------------------------
def test_kill_switch_alerts_once_when_it_fires_and_resolves_when_reset():
    r = rules_for(disabled_rules=("drawdown_breach",))
    assert fire(r, "health", health(ts=T0)) == []
    halted = dict(
        trading_state="HALTED",
        halt_reason="drawdown_limit",
        drawdown=0.104,
        max_drawdown=0.104,
        equity_usd=8_960.0,
        strategy_status="halted",
    )
    [a] = fire(r, "health", health(ts=T0 + 5 * MIN, **halted))
    assert (a.rule, a.severity, a.symbol) == ("kill_switch", "critical", "BTC-PERP")
    assert "kill-switch fired: drawdown_limit at 2024-01-04 00:05 UTC" in a.text
    assert "8,960.00 USD" in a.text and "reset_kill_switch" in a.text
    assert fire(r, "health", health(ts=T0 + 10 * MIN, **halted)) == [], "still halted: quiet"
    [back] = fire(r, "health", health(ts=T0 + 20 * MIN))
    assert back.severity == "resolved" and "ACTIVE again" in back.text


def test_an_account_limit_halt_is_a_kill_switch_alert():
    r = rules_for(disabled_rules=("drawdown_breach",))
    fire(r, "health", health(ts=T0))
    reason = "account_drawdown_limit: account equity 17,900.00 USD is 10.50% below its peak"
    [a] = fire(r, "health", health(ts=T0 + 5 * MIN, trading_state="HALTED", halt_reason=reason))
    assert (a.rule, a.severity) == ("kill_switch", "critical")


def test_an_operator_halt_is_not_a_kill_switch_alert():
    r = rules_for()
    fire(r, "health", health(ts=T0))
    out = fire(
        r, "health", health(ts=T0 + 5 * MIN, trading_state="HALTED", halt_reason="operator_halt: x")
    )
    assert out == []


def test_a_kill_switch_that_fires_under_an_operator_halt_is_a_kill_switch_alert():
    r = rules_for(disabled_rules=("drawdown_breach",))
    fire(r, "health", health(ts=T0))
    operator = dict(trading_state="HALTED", halt_reason="operator_halt: x")
    assert fire(r, "health", health(ts=T0 + 5 * MIN, **operator)) == []
    killed = dict(trading_state="HALTED", halt_reason="daily_loss_limit", consecutive_losses=1)
    [a] = fire(r, "health", health(ts=T0 + 10 * MIN, **killed))
    assert (a.rule, a.severity) == ("kill_switch", "critical")
    assert "kill-switch fired: daily_loss_limit" in a.text
    assert "1 losing trade in a row" in a.text  # not "1 losing trades"
    assert fire(r, "health", health(ts=T0 + 15 * MIN, **killed)) == [], "still halted: quiet"


def test_a_symbol_found_halted_at_start_is_reported():
    [a] = fire(
        rules_for(),
        "health",
        health(trading_state="HALTED", halt_reason="consecutive_losses", consecutive_losses=6),
    )
    assert a.rule == "kill_switch" and "is HALTED by the kill-switch consecutive_losses" in a.text


def test_drawdown_breach_fires_on_crossing_and_rearms_below_the_threshold():
    r = rules_for(drawdown_breach=0.05)
    assert fire(r, "health", health(drawdown=0.049)) == []
    [a] = fire(r, "health", health(ts=T0 + 5 * MIN, drawdown=0.05, peak_equity_usd=10_500.0))
    assert a.rule == "drawdown_breach" and "5.00%" in a.text and "10,500.00 USD" in a.text
    assert fire(r, "health", health(ts=T0 + 10 * MIN, drawdown=0.07)) == []
    assert fire(r, "health", health(ts=T0 + 15 * MIN, drawdown=0.01)) == []
    assert [x.rule for x in fire(r, "health", health(ts=T0 + 20 * MIN, drawdown=0.06))] == [
        "drawdown_breach"
    ]


def test_every_error_event_is_an_alert_with_stage_type_and_a_bounded_message():
    r = rules_for()
    [a] = fire(r, "errors", error("ETH-PERP", T0, "x" * 1000, stage="features"))
    assert a.rule == "error_event" and a.symbol == "ETH-PERP"
    assert "stage features" in a.text and "RuntimeError" in a.text
    assert len(a.text) < 500


def test_a_secret_inside_an_error_message_is_masked():
    r = rules_for()
    msg = 'auth failed: api_key=sk-live-123, token: "abc def" password=hunter2; key count 3'
    [a] = fire(r, "errors", error("BTC-PERP", T0, msg))
    for secret in ("sk-live-123", "abc def", "hunter2"):
        assert secret not in a.text
    assert "api_key=<REDACTED>" in a.text and "password=<REDACTED>" in a.text
    assert "key count 3" in a.text, "only name=value pairs are masked"


def test_slack_text_escapes_what_slack_would_read_as_markup():
    a = Alert("error_event", "warning", "BTC-PERP", "api_key=<REDACTED> & x > 1", "f")
    text = alerts.slack_text(a, 0)
    assert text == (":warning: *WARNING* `error_event` api_key=&lt;REDACTED&gt; &amp; x &gt; 1")


def test_heartbeat_missing_by_wall_clock_fires_once_and_resolves():
    r = Rules(AlertsConfig(heartbeat_interval_s=300, heartbeat_missed_intervals=2), now_s=0.0)
    r.on_record("health", health(), now_s=10.0)
    assert r.tick(10.0 + 600.0) == [], "exactly 2 intervals is not yet more than 2"
    [a] = r.tick(10.0 + 601.0)
    assert (a.rule, a.severity, a.symbol) == ("heartbeat_missing", "critical", "BTC-PERP")
    assert "more than 2 x 300 s" in a.text and "2024-01-04 00:00 UTC" in a.text
    assert r.tick(10.0 + 2_000.0) == [], "one alert per outage"
    [back] = r.on_record("health", health(ts=T0 + 5 * MIN), now_s=2_100.0)
    assert back.severity == "resolved" and back.rule == "heartbeat_missing"
    assert r.tick(2_100.0 + 500.0) == []


def test_heartbeat_of_an_expected_symbol_that_never_beats_and_of_a_silent_flow():
    r = Rules(AlertsConfig(heartbeat_interval_s=1, symbols=("ETH-PERP",)), now_s=0.0)
    [a] = r.tick(2.5)
    assert a.symbol == "ETH-PERP" and "none received since the alerts consumer started" in a.text
    r = Rules(AlertsConfig(heartbeat_interval_s=1), now_s=0.0)
    [a] = r.tick(2.5)
    assert a.symbol == "*" and "any symbol" in a.text
    [back] = r.on_record("health", health(), now_s=3.0)
    assert back.severity == "resolved" and back.symbol == "*"
    assert r.tick(4.0) == [] and [x.symbol for x in r.tick(5.5)] == ["BTC-PERP"]


def test_n_consecutive_losses_alert_and_a_win_resets_the_run():
    r = rules_for(consecutive_losses=3)

    def close(ts: int, pnl: float) -> list[Alert]:
        return fire(
            r, "executions", execution("BTC-PERP", ts, "buy", "time_exit", trade_pnl_usd=pnl)
        )

    assert close(T0, -5.0) == [] and close(T0 + MIN, -6.0) == []
    [a] = close(T0 + 2 * MIN, -7.0)
    assert a.rule == "consecutive_losses" and "3 losing trades in a row" in a.text
    assert "-18.00 USD" in a.text
    assert [x.text.split(" losing")[0][-1] for x in close(T0 + 3 * MIN, -1.0)] == ["4"]
    assert close(T0 + 4 * MIN, +2.0) == []
    assert close(T0 + 5 * MIN, -1.0) == [] and close(T0 + 6 * MIN, -1.0) == []


def test_a_trade_while_recent_confidence_is_below_50_percent_alerts():
    r = rules_for(low_conf_window_trades=2, low_conf_threshold=0.5)

    def trade(ts: int, p_up: float, direction: int) -> list[Alert]:
        rec = signals(
            ts=ts, action="trade", reason="entry", arm="pros", direction=direction, p_up=p_up
        )
        return fire(r, "signals", rec)

    assert fire(r, "signals", signals(p_up=0.40)) == [], "no trade, no alert"
    assert trade(T0, 0.60, +1) == []  # long at p_up 0.60: 60% for the side traded
    [a] = trade(T0 + MIN, 0.62, +1 * -1)  # short at p_up 0.62: 38%; mean (60+38)/2 = 49%
    assert a.rule == "low_confidence_trade" and "49.0% < 50%" in a.text
    assert "this one 38.0%" in a.text and "went short" in a.text
    assert trade(T0 + 2 * MIN, 0.70, +1) == []  # mean of (38, 70) = 54%


def test_large_slippage_alerts_above_the_threshold_only():
    r = rules_for(slippage_bps=10.0)
    assert fire(r, "executions", execution("BTC-PERP", T0, "buy", slippage_bps=9.9)) == []
    [a] = fire(
        r,
        "executions",
        execution("BTC-PERP", T0 + MIN, "buy", fill_px=42_063.0, slippage_bps=15.0),
    )
    assert a.rule == "large_slippage" and "15.0 bps (> 10 bps)" in a.text
    assert "6.30 USD" in a.text and a.fingerprint == did("BTC-PERP", T0 + MIN)


def test_a_round_trip_with_zero_pnl_does_not_end_a_loss_run():
    # the flow's risk state (kpis.is_win) counts a zero as a loss: so does the alert
    r = rules_for(consecutive_losses=3)

    def close(ts: int, pnl: float) -> list[Alert]:
        ex = execution("BTC-PERP", ts, "sell", "time_exit", trade_pnl_usd=pnl)
        return fire(r, "executions", ex)

    assert close(T0, -5.0) == [] and close(T0 + MIN, 0.0) == []
    [a] = close(T0 + 2 * MIN, -1.0)
    assert a.rule == "consecutive_losses" and "3 losing trades in a row" in a.text


def test_a_disabled_rule_raises_nothing():
    r = rules_for(disabled_rules=("large_slippage",))
    assert fire(r, "executions", execution("BTC-PERP", T0, "buy", slippage_bps=50.0)) == []


# -- dedup of records: at-least-once delivery ------------------------------------------------
def test_a_republished_decision_is_dropped_by_its_decision_id():
    d = Dedup()
    ex = execution("BTC-PERP", T0, "buy")
    assert d.first("executions", ex) and not d.first("executions", dict(ex))
    assert d.first("orders", order("BTC-PERP", T0, "buy")), "same id, other stream"
    sig = signals(ts=T0)
    assert d.first("signals", sig) and not d.first("signals", json.loads(json.dumps(sig)))
    h = health(ts=T0)
    assert d.first("health", h) and not d.first("health", {**h, "ts_init_ms": T0 + 1})
    assert d.first("health", health(ts=T0 + 5 * MIN))
    assert dedup_key("rejections", rejection("BTC-PERP", T0, "low_conf_veto")) != dedup_key(
        "rejections", rejection("BTC-PERP", T0, "stale_intent", stage="execution")
    )
    small = Dedup(max_keys=2)
    for ts in (1, 2, 3):
        small.first("health", health(ts=T0 + ts))
    assert small.first("health", health(ts=T0 + 1)), "the oldest key is forgotten"


def test_duplicates_do_not_double_count_losses_or_repeat_an_alert():
    losses = [
        execution("BTC-PERP", T0 + i * MIN, "buy", "time_exit", trade_pnl_usd=-1.0)
        for i in range(2)
    ]
    slip = execution("BTC-PERP", T0 + 9 * MIN, "sell", slippage_bps=30.0, fill_px=41_874.0)
    batches = [
        [("executions", losses[0]), ("executions", losses[1])],
        [("executions", dict(losses[1])), ("executions", slip)],  # republished after a restart
        [("executions", dict(slip))],
    ]
    slack = FakeSlack()
    cfg = AlertsConfig(consecutive_losses=3)
    reader = ListReader(batches)
    stats = run(reader, Rules(cfg, 0.0), Notifier(cfg, slack), max_messages=5, clock=Clock(t=0.0))
    assert stats.duplicates == 2 and stats.records == 3 and stats.messages == 5
    assert len(slack.texts) == 1 and "large_slippage" in slack.texts[0], slack.texts
    assert reader.commits == 3, "offsets are committed after each handled batch"


def test_after_a_restart_the_rebuilt_memory_keeps_republished_decisions_quiet():
    cfg = AlertsConfig(consecutive_losses=2, slippage_bps=10.0)
    loss1 = execution("BTC-PERP", T0, "buy", "time_exit", trade_pnl_usd=-1.0, slippage_bps=20.0)
    halted = health(ts=T0 + MIN, trading_state="HALTED", halt_reason="drawdown_limit")
    handled_before = [("executions", loss1), ("health", halted)]
    rules, dedup = Rules(cfg, 0.0), Dedup()
    assert alerts.rebuild(rules, dedup, handled_before + [("health", dict(halted))], 0.0) == 2
    loss2 = execution("BTC-PERP", T0 + 2 * MIN, "buy", "time_exit", trade_pnl_usd=-2.0)
    slack = FakeSlack()
    republished = [("executions", dict(loss1)), ("health", dict(halted)), ("executions", loss2)]
    stats = run(
        ListReader([republished]),
        rules,
        Notifier(cfg, slack),
        max_messages=3,
        clock=Clock(0.0),
        dedup=dedup,
    )
    assert stats.duplicates == 2
    [text] = slack.texts  # no second slippage or kill-switch alert; the loss run went on
    assert "`consecutive_losses`" in text and "2 losing trades in a row" in text


# -- the notifier: dedup, rate limit, silencing, the log --------------------------------------
def _alert(fp: str = "a", rule: str = "error_event", sym: str = "BTC-PERP", sev: str = "warning"):
    return Alert(rule, sev, sym, f"something happened ({fp})", fp, T0)


def test_the_same_alert_within_the_dedup_window_is_sent_once():
    slack = FakeSlack()
    n = Notifier(AlertsConfig(dedup_window_s=60), slack)
    assert n.handle(_alert("x"), 0.0) == "sent"
    assert n.handle(_alert("x"), 59.0) == "duplicate"
    assert n.handle(_alert("y"), 59.0) == "sent"
    assert n.handle(_alert("x"), 61.0) == "sent"
    assert len(slack.texts) == 3


def test_rate_limit_per_rule_and_symbol_then_a_count_of_what_was_held_back():
    slack = FakeSlack()
    n = Notifier(AlertsConfig(rate_limit_max=2, rate_limit_window_s=100), slack)
    assert [n.handle(_alert(str(i)), float(i)) for i in range(4)] == [
        "sent",
        "sent",
        "rate-limited",
        "rate-limited",
    ]
    assert n.handle(_alert("eth", sym="ETH-PERP"), 4.0) == "sent", "per symbol"
    assert n.handle(_alert("other", rule="large_slippage"), 4.0) == "sent", "per rule"
    resolved = _alert("r", rule="error_event", sev="resolved")
    assert n.handle(resolved, 5.0) == "sent", "a resolution is never held back"
    assert n.handle(_alert("late"), 101.0) == "sent"
    assert "(+2 more error_event alert(s) rate-limited)" in slack.texts[-1]


def test_silenced_alerts_skip_slack_but_stay_in_the_log(caplog):
    slack = FakeSlack()
    cfg = AlertsConfig(
        silence=(
            Silence("large_slippage", "*", None),
            Silence("*", "ETH-PERP", 2_000.0),
        )
    )
    wall = Clock(t=1_999.0, step=0.0)  # silences end by the wall clock
    n = Notifier(cfg, slack, wall_clock=wall)
    with caplog.at_level(logging.INFO, logger="ensemble.alerts"):
        assert n.handle(_alert("1", rule="large_slippage"), 0.0) == "silenced"
        assert n.handle(_alert("2", sym="ETH-PERP"), 1.0) == "silenced"
        wall.t = 2_000.0
        assert n.handle(_alert("3", sym="ETH-PERP"), 2.0) == "sent", "the silence expired"
        assert n.handle(_alert("4"), 3.0) == "sent"
    assert len(slack.texts) == 2
    logged = [r.getMessage() for r in caplog.records]
    assert any("something happened (1)" in m and "[slack: silenced]" in m for m in logged)
    assert any("something happened (4)" in m and "[slack: sent]" in m for m in logged)


def test_a_flow_that_dies_during_a_silence_is_reported_when_the_silence_ends():
    until = 10_000.0
    cfg = AlertsConfig(silence=(Silence("*", "BTC-PERP", until),))
    halted = health(ts=T0, trading_state="HALTED", halt_reason="consecutive_losses")
    slack = FakeSlack()
    clock = Clock(t=until - 3_600, step=60.0)  # the wall clock, and the monotonic one
    run(
        ListReader([[("health", halted)]]),  # the kill-switch fires, then the flow dies
        Rules(cfg, until - 3_600),
        Notifier(cfg, slack, wall_clock=clock),
        until_idle_s=2 * 3_600,
        clock=clock,
    )
    # both were silenced when raised; both still hold when the silence ends
    heartbeat, kill = sorted(slack.texts, key=lambda t: "kill_switch" in t)
    assert "`heartbeat_missing`" in heartbeat and "BTC-PERP" in heartbeat
    assert "`kill_switch`" in kill and "still HALTED" in kill


def test_a_state_that_ended_during_a_silence_is_not_raised_again():
    until = 10_000.0
    cfg = AlertsConfig(silence=(Silence("*", "*", until),))
    halted = health(ts=T0, trading_state="HALTED", halt_reason="consecutive_losses")
    reset = health(ts=T0 + 5 * MIN)  # ACTIVE again, and beating
    slack = FakeSlack()
    notifier = Notifier(cfg, slack, wall_clock=Clock(t=until - 100, step=0.0))
    rules = Rules(cfg, 0.0)
    run(ListReader([[("health", halted)], [("health", reset)]]), rules, notifier, max_messages=2)
    notifier.wall_clock = Clock(t=until + 1, step=0.0)
    # the silence ends with the flow beating: nothing to say
    run(ListReader([[("health", health(ts=T0 + 10 * MIN))]]), rules, notifier, max_messages=1)
    assert slack.texts == []


def test_a_stepped_wall_clock_neither_delays_nor_fakes_a_missing_heartbeat():
    # NTP steps the wall clock; heartbeat ages are elapsed time (monotonic), while a
    # silence still ends at its time of day
    wall = Clock(t=1_900_000_000.0, step=0.0)
    cfg = AlertsConfig(silence=(Silence("*", "ETH-PERP", wall.t + 60),))

    class SteppingReader(ListReader):
        def poll(self, timeout_s: float) -> tuple[list, int]:
            wall.t += 3_600.0 if self.read == 1 else 0.0  # stepped an hour forward, once
            return super().poll(timeout_s)

    slack = FakeSlack()
    rules, notifier = Rules(cfg, 0.0), Notifier(cfg, slack, wall_clock=wall)
    beating = SteppingReader([[("health", health(ts=T0))], [("health", health(ts=T0 + 5 * MIN))]])
    run(beating, rules, notifier, until_idle_s=540, clock=Clock(t=0.0, step=60.0))
    assert slack.texts == [], "an hour on the wall clock is not an hour without a heartbeat"
    assert notifier.handle(_alert("eth", sym="ETH-PERP"), 0.0) == "sent", "the silence ended"

    wall.t -= 7_200.0  # and stepped back two hours: the next missing heartbeat is on time
    run(ListReader([]), rules, notifier, until_idle_s=300, clock=Clock(t=600.0, step=60.0))
    assert [t for t in slack.texts if "heartbeat_missing" in t], slack.texts


def test_the_consumer_measures_ages_on_the_monotonic_clock_and_silences_on_the_wall_clock():
    assert inspect.signature(run).parameters["clock"].default is time.monotonic
    assert Notifier(AlertsConfig(), None).wall_clock is time.time


def test_without_a_webhook_alerts_go_to_the_log(caplog):
    n = Notifier(AlertsConfig(), None)
    with caplog.at_level(logging.WARNING, logger="ensemble.alerts"):
        assert n.handle(_alert("z"), 0.0) == "not configured"
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and "ALERT warning error_event BTC-PERP" in rec.message


def test_a_changed_config_file_is_picked_up_and_a_bad_edit_is_ignored(tmp_path, caplog):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"slippage_bps": 10}))
    w = alerts.ConfigWatcher(str(path), {})
    assert w.changed(10.0) is None
    path.write_text(json.dumps({"slippage_bps": 10, "silence": ["large_slippage"]}))
    os.utime(path, (1, 1))
    cfg = w.changed(20.0)
    assert cfg is not None and cfg.silence == (Silence("large_slippage", "*", None),)
    path.write_text(json.dumps({"slippage_bps": "lots"}))
    os.utime(path, (2, 2))
    with caplog.at_level(logging.ERROR, logger="ensemble.alerts"):
        assert w.changed(30.0) is None
    assert "config change ignored" in caplog.text and "slippage_bps='lots'" in caplog.text


def test_a_republished_health_event_still_counts_as_a_heartbeat():
    slack = FakeSlack()
    cfg = AlertsConfig(heartbeat_interval_s=2.0, heartbeat_missed_intervals=2)
    h = health()
    # the flow restarted and republishes: only duplicates arrive, one every 2 s
    reader = ListReader([[("health", h)]] + [[], [("health", dict(h))]] * 5)
    stats = run(reader, Rules(cfg, 0.0), Notifier(cfg, slack), max_messages=6, clock=Clock(0.0))
    assert stats.duplicates == 5 and slack.texts == []


def test_the_loop_stops_when_idle_and_runs_the_heartbeat_timer():
    slack = FakeSlack()
    cfg = AlertsConfig(heartbeat_interval_s=2.0, heartbeat_missed_intervals=2)
    clock = Clock(t=0.0, step=1.0)
    reader = ListReader([[("health", health())]])
    stats = run(reader, Rules(cfg, 0.0), Notifier(cfg, slack), until_idle_s=8.0, clock=clock)
    assert stats.records == 1
    assert len(slack.texts) == 1 and "heartbeat_missing" in slack.texts[0]


# -- the Slack webhook over HTTP ---------------------------------------------------------------
def test_slack_webhook_posts_json_text():
    with webhook() as hook:
        result = SlackWebhook(hook.url).send("hello *ops*")
    assert result.ok and result.status == 200 and result.attempts == 1
    [post] = hook.posts
    assert post["json"] == {"text": "hello *ops*"}
    assert post["content_type"].startswith("application/json")
    assert post["path"] == "/services/T000/B000/s3cr3tXYZ"


def test_slack_429_is_retried_after_retry_after():
    slept: list[float] = []
    with webhook([(429, {"Retry-After": "3"}, "rate_limited")]) as hook:
        result = SlackWebhook(hook.url, sleep=slept.append).send("x")
    assert result.ok and result.attempts == 2 and slept == [3.0]
    assert hook.texts == ["x", "x"]


def test_a_critical_alert_waits_at_most_five_minutes_of_any_retry_after():
    """A critical alert is retried until delivered, and every alert waits behind it: a
    Retry-After of a day (or "inf", or "nan") must not hold them all for a day."""
    slept: list[float] = []
    answers = [(429, {"Retry-After": v}, "rate_limited") for v in ("86400", "inf", "nan")]
    with webhook(answers) as hook:
        result = SlackWebhook(hook.url, sleep=slept.append).send("kill-switch", critical=True)
    assert result.ok and result.attempts == 4
    assert slept == [300.0, 300.0, 4.0]  # capped, capped, no usable value: the 3rd backoff


def test_slack_5xx_is_retried_with_backoff_and_4xx_is_not(caplog):
    slept: list[float] = []
    with webhook([(503, {}, "down"), (500, {}, "oops")]) as hook:
        assert SlackWebhook(hook.url, sleep=slept.append).send("x").ok
    assert slept == [1.0, 2.0] and len(hook.posts) == 3
    with caplog.at_level(logging.WARNING), webhook([(400, {}, "invalid_payload")]) as hook:
        sink = SlackWebhook(hook.url, sleep=slept.append)
        result = sink.send("x")
    assert not result.ok and result.status == 400 and result.attempts == 1
    assert "invalid_payload" in result.error and sink.failed == 1
    assert "s3cr3tXYZ" not in caplog.text and "127.0.0.1" not in caplog.text


def test_slack_gives_up_within_its_budget_and_never_logs_the_url(caplog):
    with webhook() as hook:
        url = hook.url
    slept: list[float] = []
    with caplog.at_level(logging.DEBUG):
        sink = SlackWebhook(url, sleep=slept.append, max_attempts=3, timeout_s=2)
        result = sink.send("x")
        with webhook([(429, {"Retry-After": "120"}, "rate_limited")]) as hook:
            late = SlackWebhook(hook.url, sleep=slept.append, budget_s=60).send("y")
    assert not result.ok and result.status is None and result.attempts == 3
    assert not late.ok and "exceed 60 s" in late.error and len(hook.posts) == 1
    assert "s3cr3tXYZ" not in caplog.text and "s3cr3tXYZ" not in repr(sink)
    assert "not delivered" in caplog.text


def test_the_local_webhook_stand_in_prints_what_it_receives(capsys):
    from consumers.slack import stand_in

    httpd = stand_in()
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/services/T/B/x"
        assert SlackWebhook(url).send("hello ops").ok
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "[webhook] hello ops" in capsys.readouterr().out
    with pytest.raises(ValueError, match="loopback"):
        stand_in("0.0.0.0")


def test_scrub_masks_secret_values_bearer_tokens_and_url_paths_in_free_text():
    from consumers.alerts import scrub

    text = (
        "post to https://hooks.slack.com/services/T0/B0/XYZ failed; "
        "Authorization: Bearer sk-live-123; api_key=abc"
    )
    clean = scrub(text)
    for secret in ("T0/B0/XYZ", "sk-live-123", "abc"):
        assert secret not in clean
    assert "https://hooks.slack.com/" in clean  # the host stays, for diagnosis


# -- issue 15 §4: delivery off the reading thread, heartbeats judged on what was read ---------
class BlockedSlack:
    """A sink that holds every post until released (Slack down), then answers ok."""

    name = "slack"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.texts: list[str] = []

    def send(self, text: str, critical: bool = False) -> Any:
        self.started.set()
        self.release.wait(30)
        self.texts.append(text)
        return type("R", (), {"ok": self.release.is_set()})()


def test_an_alert_is_logged_at_once_and_posted_from_a_queue(caplog):
    from consumers.delivery import QueuedSink

    slack = BlockedSlack()
    sink = QueuedSink(slack, max_alerts=2)
    n = Notifier(AlertsConfig(rate_limit_max=10), sink)
    with caplog.at_level(logging.WARNING, logger="ensemble.alerts"):
        outcomes = [n.handle(_alert("0"), 0.0)]
        assert slack.started.wait(5)  # the first post is in flight, Slack does not answer
        outcomes += [n.handle(_alert(str(i)), float(i)) for i in range(1, 4)]
        logged = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
    # all four were logged while Slack had answered nothing
    assert outcomes == ["queued"] * 4 and len(logged) == 4 and slack.texts == []
    assert all("[slack: queued]" in m for m in logged)
    # one post in flight, two waiting (the bound), the oldest waiting one dropped
    assert sink.dropped == 1 and "queue full" in caplog.text
    slack.release.set()
    assert sink.close(timeout_s=5) == 0
    assert [t.rsplit("(", 1)[1] for t in slack.texts] == ["0)", "2)", "3)"]
    assert sink.delivered == 3


def test_a_full_queue_drops_a_waiting_warning_before_a_critical_alert():
    from consumers.delivery import QueuedSink

    slack = BlockedSlack()
    sink = QueuedSink(slack, max_alerts=2)
    sink.send("0")
    assert slack.started.wait(5)  # in flight; Slack does not answer
    sink.send("kill", critical=True)
    sink.send("w1")
    sink.send("w2")  # the queue is full: w1 goes, the critical one stays
    slack.release.set()
    assert sink.close(timeout_s=5) == 0
    assert slack.texts == ["0", "kill", "w2"] and sink.dropped == 1


def test_alerts_left_in_the_queue_at_stop_are_reported(caplog):
    from consumers.delivery import QueuedSink

    slack = BlockedSlack()
    sink = QueuedSink(slack)
    sink.send("a")
    sink.send("b")
    assert slack.started.wait(5)
    with caplog.at_level(logging.ERROR, logger="ensemble.alerts"):
        assert sink.close(timeout_s=0.2) == 2
    assert "2 alert(s) not delivered at stop" in caplog.text
    slack.release.set()


def test_a_critical_alert_is_retried_past_the_budget_until_slack_is_back():
    outage = [(503, {"Retry-After": "0"}, "service_unavailable")] * 8
    with webhook(outage) as hook:
        warning = SlackWebhook(hook.url, max_attempts=3, sleep=lambda s: None).send("w")
        assert not warning.ok and warning.attempts == 3, "a warning is given up"
        critical = SlackWebhook(hook.url, max_attempts=3, sleep=lambda s: None)
        result = critical.send("kill", critical=True)
    assert result.ok and result.attempts == 6 and hook.texts[-1] == "kill"


def test_a_kill_switch_raised_while_slack_is_down_reaches_slack_after_a_restart():
    from consumers.delivery import QueuedSink

    def queued(url: str) -> QueuedSink:
        hook = SlackWebhook(url)
        sink = QueuedSink(hook)
        hook.sleep = sink.stopping.wait
        return sink

    cfg = AlertsConfig()
    halted = health(ts=T0 + 5 * MIN, trading_state="HALTED", halt_reason="drawdown_limit")
    topic = [[("health", health(ts=T0))], [("health", halted)]]
    outage = [(503, {"Retry-After": "0.05"}, "service_unavailable")] * 2000
    with webhook(outage) as hook:
        sink = queued(hook.url)
        reader = ListReader(topic)
        run(reader, Rules(cfg, 0.0), Notifier(cfg, sink), max_messages=2, clock=Clock(t=0.0))
        assert reader.read == 2, "reading goes on while Slack is down"
        assert reader.committed == 1, "the kill-switch's record waits for its delivery"
        assert sink.close(timeout_s=0.3) == 1  # the pod is restarted during the outage
        sink._thread.join(5)
        tried = len(hook.posts)
        assert tried >= 1 and all("kill_switch" in t for t in hook.texts)
        hook.script.clear()  # Slack is back

        # the restart: rebuild from the committed records, read on from the committed offset
        rules, dedup = Rules(cfg, 100.0), Dedup()
        alerts.rebuild(rules, dedup, [r for b in topic[: reader.committed] for r in b], 100.0)
        sink = queued(hook.url)
        again = ListReader(topic[reader.committed :])
        notifier = Notifier(cfg, sink)
        run(again, rules, notifier, max_messages=1, clock=Clock(t=100.0), dedup=dedup)
        assert sink.close(timeout_s=10) == 0
        delivered = hook.texts[tried:]
    assert len(delivered) == 1 and "`kill_switch`" in delivered[0], delivered
    assert notifier.settled() == notifier.last_ticket


class SlowSlack:
    """A queued sink that Slack empties only as far as the test says (`done`), answering
    `settled` as QueuedSink does."""

    name = "slack"

    def __init__(self) -> None:
        self.tickets = self.done = 0

    def send(self, text: str, critical: bool = False) -> Any:
        from consumers.delivery import Queued

        self.tickets += 1
        return Queued(self.tickets)

    def settled(self) -> int:
        return self.done


def test_each_batch_is_committed_once_the_alerts_raised_up_to_it_are_delivered():
    """Slack slower than the alerts: with a new alert in every batch its queue never
    emptied, and nothing was committed for as long as that lasted. A batch now waits only
    for the alerts raised up to it."""
    from consumers.alerts import Commits

    cfg = AlertsConfig()
    slack, commits = SlowSlack(), Commits()
    syms = ["BTC-PERP", "ETH-PERP"] * 2  # under the rate limit of a rule and symbol
    reader = ListReader(
        [[("errors", error(sym, T0 + i * MIN, f"e{i}"))] for i, sym in enumerate(syms)]
    )
    notifier = Notifier(cfg, slack)
    run(reader, Rules(cfg, 1_000.0), notifier, max_messages=4, clock=Clock(), commits=commits)
    assert slack.tickets == 4 and reader.committed == 0
    slack.done = 2  # Slack took the first two: their batches
    commits.commit_settled(reader, notifier.settled())
    assert reader.committed == 2
    slack.done = 4
    commits.commit_settled(reader, notifier.settled())
    assert reader.committed == 4


def test_a_critical_alert_dropped_or_left_at_stop_holds_its_records_back():
    """A full queue drops its oldest warning; if all that wait are critical, the oldest
    critical goes, and counting it settled let its records be committed: a restart never
    raised it again. So did closing with alerts still waiting."""
    from consumers.delivery import QueuedSink

    class Down:
        name = "slack"

        def __init__(self) -> None:
            self.release = threading.Event()

        def send(self, text: str, critical: bool = False) -> Any:
            self.release.wait(5)
            return type("R", (), {"ok": False})()

    down = Down()
    sink = QueuedSink(down, max_alerts=2)
    sink.send("busy", critical=True)  # ticket 1, being posted
    deadline = time.monotonic() + 5
    while sink.pending() and sink._queue and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.send("w", critical=False)  # 2
    sink.send("k1", critical=True)  # 3
    sink.send("k2", critical=True)  # 4: the warning is dropped, settled
    sink.send("k3", critical=True)  # 5: k1 is dropped, not settled
    assert sink.dropped == 2 and sink.settled() == 0
    down.release.set()  # the busy one fails for good (refused): given up
    deadline = time.monotonic() + 5
    while sink.settled() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.settled() == 2, "up to the dropped critical, k1"
    sink.close(timeout_s=0.5)
    assert sink.settled() == 2


class LaggingReader(ListReader):
    """A reader that says how many health records are still unread on the broker."""

    def __init__(self, batches, unread: list[int]) -> None:
        super().__init__(batches)
        self.unread = list(unread)
        self.last = 0

    def poll(self, timeout_s: float) -> tuple[list, int]:
        self.last = self.unread.pop(0) if self.unread else 0
        return super().poll(timeout_s)

    def unread_health(self) -> int:
        return self.last


def test_no_heartbeat_missing_while_health_records_wait_unread():
    """Reading fell 100 s behind (a slow batch): the heartbeats sit unread in the topic.
    The timer waits until they are read instead of counting the time reading took."""
    slack = FakeSlack()
    cfg = AlertsConfig(heartbeat_interval_s=2.0, heartbeat_missed_intervals=2)
    hb = [("health", health(ts=T0 + i * 5 * MIN)) for i in range(4)]
    sig = [("signals", signals("BTC-PERP", T0 + i * 5 * MIN)) for i in range(3)]
    clock = Clock(t=0.0, step=1.0)
    reader = LaggingReader([[hb[0]], sig, [hb[1]], [hb[2], hb[3]]], unread=[0, 3, 2, 0])
    polls = reader.poll

    def slow_poll(timeout_s: float) -> tuple[list, int]:
        if len(reader.batches) == 3:  # the signals batch took 100 s to handle
            clock.t += 100.0
        return polls(timeout_s)

    reader.poll = slow_poll  # type: ignore[method-assign]
    slow_clock = clock
    stats = run(reader, Rules(cfg, 0.0), Notifier(cfg, slack), max_messages=7, clock=slow_clock)
    assert stats.records == 7 and slack.texts == [], slack.texts


# -- a record the rules cannot handle ---------------------------------------------------------
FAR_FUTURE_MS = 2**62  # a valid Avro long that no datetime can hold (a corrupt or forged stamp)


def test_a_kill_switch_with_a_corrupt_timestamp_still_alerts_and_reading_goes_on():
    """Decodable, but its time is out of any calendar: the alert goes out saying so, and the
    records after it are read (it used to raise, uncommitted, after every restart)."""
    slack, cfg = FakeSlack(), AlertsConfig()
    halted = health(ts=FAR_FUTURE_MS, trading_state="HALTED", halt_reason="drawdown_limit")
    after = execution("BTC-PERP", T0, "buy", slippage_bps=25.0)
    reader = ListReader([[("health", halted)], [("executions", after)]])
    stats = run(reader, Rules(cfg, 0.0), Notifier(cfg, slack), max_messages=2, clock=Clock())
    assert stats.records == 2 and reader.committed == 2
    assert [t.split("`")[1] for t in slack.texts] == ["kill_switch", "large_slippage"]
    assert f"an invalid time ({FAR_FUTURE_MS} ms)" in slack.texts[0]


def test_a_record_the_rules_raise_on_is_logged_and_skipped_and_its_batch_committed(
    monkeypatch, caplog
):
    """Whatever a rule trips on, one record never stops the consumer: it is logged with its
    key and left behind, the next records alert, the batch is committed, and a restart's
    rebuild over the same record does not raise either."""
    slack, cfg = FakeSlack(), AlertsConfig()
    rules = Rules(cfg, 1_000.0)  # the clock's start: no heartbeat is missing yet
    pill = execution("BTC-PERP", T0, "buy", slippage_bps=25.0)
    real = rules._execution

    def trips(r: dict[str, Any], now_s: float) -> list[Alert]:
        if r["decision_id"] == pill["decision_id"]:
            raise ZeroDivisionError("a rule tripped")
        return real(r, now_s)

    monkeypatch.setattr(rules, "_execution", trips)
    good = execution("BTC-PERP", T0 + 5 * MIN, "buy", slippage_bps=30.0)
    reader = ListReader([[("executions", pill), ("executions", good)]])
    with caplog.at_level("ERROR", logger="ensemble.alerts"):
        stats = run(reader, rules, Notifier(cfg, slack), max_messages=2, clock=Clock())
        assert alerts.rebuild(rules, Dedup(), [("executions", pill)], 0.0) == 0
    assert stats.skipped == 1 and reader.committed == 1
    assert len(slack.texts) == 1 and "30.0 bps" in slack.texts[0]
    assert "skipped a executions record" in caplog.text and pill["decision_id"] in caplog.text
    assert "ZeroDivisionError: a rule tripped" in caplog.text


# -- webhook URLs and answers that are not quite HTTP ------------------------------------------
@pytest.mark.parametrize("inside", [" ", "\n", "\t"])
def test_a_webhook_url_with_a_space_or_line_break_inside_is_refused_without_quoting_it(inside):
    """http.client refuses such a URL at every post, quoting its path (the secret) in the
    error it raises: it is refused at start instead, naming the variable only."""
    url = f"https://hooks.slack.com/services/T000/B000/s3cr3t{inside}XYZ"
    with pytest.raises(WebhookConfigError) as e:
        check_url(url)
    assert "SLACK_WEBHOOK_URL" in str(e.value) and "s3cr3t" not in str(e.value)


class RawServer:
    """A TCP server on 127.0.0.1 that reads a request and writes the next scripted bytes,
    then closes: HTTP answers cut short or no HTTP at all, as a broken proxy sends."""

    def __init__(self, answers: list[bytes]) -> None:
        import socket

        self.answers, self.served = list(answers), 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/services/T/B/s3cr3tXYZ"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(self.answers.pop(0))
                self.served += 1


def test_a_critical_alert_is_retried_past_answers_that_are_not_valid_http(caplog):
    ok_cut_short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok"
    server = RawServer(
        [
            b"HELLO\r\n\r\n",  # no status line
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\nbad",  # body cut short
            ok_cut_short,  # Slack took it; the body was lost on the way
        ]
    )
    slept: list[float] = []
    with caplog.at_level(logging.DEBUG):
        result = SlackWebhook(server.url, sleep=slept.append).send("kill", critical=True)
    assert result.ok and result.status == 200 and result.attempts == 3 and server.served == 3
    assert len(slept) == 2 and "s3cr3tXYZ" not in caplog.text


def test_a_sink_error_quoting_the_webhook_url_is_logged_without_it(caplog):
    from consumers.delivery import QueuedSink

    class Quoting:
        name = "slack"

        def send(self, text: str, critical: bool = False) -> Any:
            raise ValueError("cannot post to https://hooks.slack.com/services/T0/B0/s3cr3tXYZ")

    sink = QueuedSink(Quoting())
    with caplog.at_level(logging.ERROR, logger="ensemble.alerts.delivery"):
        sink.send("x")
        sink.close(timeout_s=5)
    assert sink.failed == 1 and "posting an alert failed" in caplog.text
    assert "ValueError" in caplog.text and "s3cr3tXYZ" not in caplog.text
