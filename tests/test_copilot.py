"""The copilot: the daily summary and "why" facts, deterministic answers, dedup, the LLM
request (allow-list and redaction) against a local chat-completions server."""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from consumers import copilot, llm
from consumers.facts import CopilotError, Telemetry, parse_time, summary_facts, why_facts
from operators.config import ENSEMBLE_1_1
from operators.kpis import utc_day
from operators.redaction import redact
from tests.test_alerts import (
    MIN,
    T0,
    costs,
    ensemble,
    error,
    execution,
    health,
    order,
    rejection,
    repro,
    signals,
)

DAY = 86_400_000
H = 60 * MIN
SECRETS = ("sk-live-SECRET", "hunter2", "alice@example.com", "checked the losses")
ELIG_COHORT = {"pros": True, "amateurs": False, "model_meta": False, "model_bma": False}


def _trade(
    sym: str,
    t_open: int,
    t_close: int,
    side: str,
    arm: str,
    p_up: float,
    pnl: float,
    s_top: float = 0.0,
) -> list[tuple[str, dict[str, Any]]]:
    """An entry decided at t_open, filled at the next bar's open (stamped t_open), closed by
    a time exit decided and filled at t_close."""
    direction = 1 if side == "buy" else -1
    close_side = "sell" if side == "buy" else "buy"
    elig = (
        ELIG_COHORT
        if arm == "pros"
        else {"pros": False, "amateurs": False, "model_meta": True, "model_bma": True}
    )
    return [
        (
            "signals",
            signals(
                sym,
                t_open,
                action="trade",
                reason="entry",
                arm=arm,
                direction=direction,
                p_up=p_up,
                s_top=s_top,
                eligible=elig,
                samples={a: 5.0 if a == arm else -2.0 for a, ok in elig.items() if ok},
                target=0.84 * direction,
            ),
        ),
        ("orders", order(sym, t_open, side, "entry", arm)),
        ("executions", execution(sym, t_open, side, "entry")),
        ("costs", costs(sym, t_open)),
        ("signals", signals(sym, t_close, action="exit", reason="", p_up=0.5)),
        ("orders", order(sym, t_close, close_side, "time_exit", arm, position_before=0.1)),
        (
            "executions",
            execution(sym, t_close, close_side, "time_exit", fill_px=41_900.0, trade_pnl_usd=pnl),
        ),
        ("costs", costs(sym, t_close)),
    ]


def day_records() -> list[tuple[str, dict[str, Any]]]:
    """2024-01-04 for BTC-PERP: three round trips (one win, two losses), the short at
    14:00 among them, rejections, a kill-switch and its reset, an error; and one trade the
    day before."""
    cfg = {**ENSEMBLE_1_1.as_dict(), "api_secret": "hunter2"}
    b = "BTC-PERP"
    recs: list[tuple[str, dict[str, Any]]] = [
        ("repro", repro(b, T0 - DAY, config=cfg)),
        ("health", health(b, T0 - 5 * MIN, equity_usd=9_990.0)),
        *_trade(b, T0 - DAY + 20 * H, T0 - DAY + 21 * H, "buy", "pros", 0.6, 1.0, s_top=0.2),
        ("health", health(b, T0 + 5 * MIN, equity_usd=10_000.0)),
        ("signals", signals(b, T0 + 10 * MIN, complete=False)),  # a gap bar
        ("signals", signals(b, T0 + 15 * MIN, reason="warmup", p_up=None)),
        *_trade(b, T0 + 10 * H, T0 + 11 * H, "buy", "model_meta", 0.72, 20.0),
        ("errors", error(b, T0 + 12 * H, "upstream said api_key=sk-live-SECRET")),
        ("rejections", rejection(b, T0 + 13 * H + 55 * MIN, "low_conf_veto", "pros at 0.53")),
        *_trade(b, T0 + 14 * H, T0 + 15 * H, "sell", "pros", 0.61, -12.5, s_top=-0.30),
        ("ensemble", ensemble(b, T0 + 14 * H, trend_15m=-0.001, trend_1h=0.001, direction=-1)),
        ("health", health(b, T0 + 14 * H, equity_usd=10_010.0, drawdown=0.001)),
        ("rejections", rejection(b, T0 + 14 * H + 5 * MIN, "veto:1h_trend", "long against 1h")),
        (
            "rejections",
            rejection(b, T0 + 14 * H + 10 * MIN, "no_doubling_down", "already short", "risk"),
        ),
        *_trade(b, T0 + 16 * H, T0 + 17 * H, "buy", "pros", 0.61, -3.0, s_top=0.25),
        (
            "health",
            health(
                b,
                T0 + 18 * H,
                trading_state="HALTED",
                halt_reason="consecutive_losses",
                strategy_status="halted",
            ),
        ),
        ("repro", repro(b, T0 + 19 * H, "control", "reset_kill_switch", config=cfg)),
        ("health", health(b, T0 + 19 * H, equity_usd=10_004.5)),
        ("health", health(b, T0 + 23 * H + 55 * MIN, equity_usd=10_004.5)),
    ]
    return recs


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry(day_records())


# -- the summary ------------------------------------------------------------------------------
def test_summary_counts_the_day_from_the_telemetry(tel):
    f = summary_facts(tel, date(2024, 1, 4))
    [s] = f["symbols"]
    assert (s["round_trips"], s["wins"], s["losses"]) == (3, 1, 2)
    assert s["pnl_usd"] == 4.5 and s["win_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["entries"] == 3 and s["entries_by_arm"] == [
        {"arm": "pros", "count": 2},
        {"arm": "model_meta", "count": 1},
    ]
    assert s["fees_usd"] == pytest.approx(6 * 2.1)
    assert (s["equity_start_usd"], s["equity_end_usd"]) == (9_990.0, 10_004.5)
    assert s["missing_bars"] == 1 and s["decisions"] == s["bars"] - 1
    worst, second = s["notable_losses"]
    assert worst == {
        "opened_utc": "2024-01-04 14:00",
        "closed_utc": "2024-01-04 15:00",
        "side": "short",
        "arm": "pros",
        "pnl_usd": -12.5,
        "confidence": 0.61,
        "prob_side_traded": 0.39,
        "closed_by": "time_exit",
        "held_bars": 12,
    }
    assert second["pnl_usd"] == -3.0 and second["side"] == "long"
    assert s["best_trade"]["pnl_usd"] == 20.0 and s["best_trade"]["arm"] == "model_meta"
    assert {r["reason"]: r["count"] for r in s["rejections_by_reason"]} == {
        "low_conf_veto": 1,
        "veto:1h_trend": 1,
        "no_doubling_down": 1,
    }
    assert s["kill_switch_events"] == [
        {
            "time_utc": "2024-01-04 18:00",
            "event": "kill_switch_fired",
            "reason": "consecutive_losses",
        },
        {"time_utc": "2024-01-04 19:00", "event": "resumed", "reason": "consecutive_losses"},
    ]
    assert s["operator_commands"] == [
        {"time_utc": "2024-01-04 19:00", "command": "reset_kill_switch"}
    ]
    assert s["errors"] == 1 and s["end_state"] == "ACTIVE"


def test_the_day_before_is_its_own_day_and_the_latest_day_is_the_default(tel):
    [s] = summary_facts(tel, date(2024, 1, 3))["symbols"]
    assert (s["round_trips"], s["wins"], s["pnl_usd"]) == (1, 1, 1.0)
    # the 4th's last bar closes at 24:00 (as the flow counts days); until it is in, the
    # 4th is not complete
    assert summary_facts(tel)["date"] == "2024-01-03"
    complete = Telemetry(day_records() + [("health", health(ts=T0 + DAY))])
    assert summary_facts(complete)["date"] == "2024-01-04", "the last complete day"
    partial = Telemetry(day_records() + [("health", health(ts=T0 + DAY + 5 * MIN))])
    assert summary_facts(partial)["date"] == "2024-01-04", "the last complete day"
    only_today = Telemetry([("health", health(ts=T0 + 10 * H))])
    assert summary_facts(only_today)["date"] == "2024-01-04"
    with pytest.raises(CopilotError, match="no telemetry on 2024-02-01"):
        summary_facts(tel, date(2024, 2, 1))


def test_a_day_holds_the_bar_closes_the_flow_counts_in_it_the_close_at_24_00_its_last():
    # the flow's daily loss limit (operators/kpis.utc_day) puts the close at 24:00 in the
    # day it ends: a halt there is that day's, and the next day starts from its equity
    closes = [T0 - 5 * MIN, T0, T0 + 12 * H, T0 + DAY - 5 * MIN]
    recs = [("health", health(ts=t, equity_usd=10_000.0)) for t in closes]
    halted = dict(trading_state="HALTED", halt_reason="daily_loss_limit", drawdown=0.06)
    recs += [("health", health(ts=T0 + DAY, equity_usd=9_400.0, **halted))]
    recs += [("signals", signals(ts=t)) for t in [*closes, T0 + DAY]]
    recs += [("rejections", rejection("BTC-PERP", T0, "no_doubling_down"))]  # the 3rd's
    recs += [("rejections", rejection("BTC-PERP", T0 + DAY, "low_conf_veto"))]
    tel = Telemetry(recs)
    [s] = summary_facts(tel, date(2024, 1, 4))["symbols"]
    assert s["bars"] == 3, "the closes 00:05 ... 24:00, not the one at 00:00"
    assert s["rejections_by_reason"] == [{"reason": "low_conf_veto", "count": 1}]
    assert (s["equity_start_usd"], s["equity_end_usd"]) == (10_000.0, 9_400.0)
    assert (s["end_state"], s["max_drawdown_day"]) == ("HALTED", 0.06)
    assert [e["event"] for e in s["kill_switch_events"]] == ["kill_switch_fired"]
    [before] = summary_facts(tel, date(2024, 1, 3))["symbols"]
    assert before["bars"] == 2 and before["end_state"] == "ACTIVE"


def test_republished_records_are_not_counted_twice():
    recs = day_records()
    twice = Telemetry(recs + [(s, json.loads(json.dumps(r))) for s, r in recs])
    assert twice.duplicates == len(recs)
    assert summary_facts(twice, date(2024, 1, 4)) == summary_facts(
        Telemetry(recs), date(2024, 1, 4)
    )


def test_the_deterministic_summary_reads_like_the_spec_example(tel):
    text = copilot.render_summary(summary_facts(tel, date(2024, 1, 4)))
    assert "BTC-PERP: 3 trades closed, 1 win, 2 losses (33% won), net +4.50 USD" in text
    assert (
        "a short opened 14:00, pros arm at 61% model confidence (39% for the side traded), "
        "closed 15:00 by time_exit for -12.50 USD" in text
    )
    assert "Rejections by reason: low_conf_veto 1, veto:1h_trend 1, no_doubling_down 1." in text
    assert "kill_switch_fired at 18:00 (consecutive_losses); resumed at 19:00" in text
    assert "equity 9,990.00 -> 10,004.50 USD" in text


def test_a_position_open_at_the_day_s_end_is_in_the_summary():
    """The equity's change holds the open position's unrealised PnL, which no closed trade
    does: the paragraph said +4.50 net and equity -> 10,004.50 with no word of why they
    can differ."""
    flat = summary_facts(Telemetry(day_records()), date(2024, 1, 4))
    assert flat["symbols"][0]["open_at_end"] is None
    assert "Open at the end of the day" not in copilot.render_summary(flat)
    held = health(
        "BTC-PERP", T0 + 24 * H, equity_usd=10_004.68, position_qty=-0.0095,
        position_notional_usd=-400.12, unrealized_usd=0.18,
    )  # fmt: skip
    f = summary_facts(Telemetry([*day_records(), ("health", held)]), date(2024, 1, 4))
    assert f["symbols"][0]["open_at_end"] == {
        "side": "short",
        "notional_usd": 400.12,
        "unrealized_usd": 0.18,
    }
    text = copilot.render_summary(f)
    assert "Open at the end of the day: a short of 400.12 USD, unrealised +0.18 USD" in text
    assert llm.allow_listed(f)["symbols"][0]["open_at_end"]["unrealized_usd"] == 0.18


def test_several_strategies_need_a_choice():
    recs = day_records()
    other = [("health", {**health(ts=T0 + 5 * MIN), "strategy_id": "ensemble_1_0"})]
    with pytest.raises(CopilotError, match="choose one with --strategy"):
        Telemetry(recs + other)
    assert Telemetry(recs + other, "ensemble_1_0").strategy_id == "ensemble_1_0"


# -- "why" ------------------------------------------------------------------------------------
def test_why_finds_the_14_00_short_with_signals_gates_risk_and_outcome(tel):
    f = why_facts(tel, "why was the 14:00 trade short?")
    assert f["asked_time_utc"] == "2024-01-04 14:00" and "note" not in f
    d = f["decision"]
    assert (d["time_utc"], d["action"], d["chosen_arm"], d["side"]) == (
        "2024-01-04 14:00",
        "trade",
        "pros",
        "short",
    )
    assert d["eligible_arms"] == ["pros"] and "model_meta" in d["ineligible_arms"]
    assert f["model"]["p_up"] == 0.61 and f["cohort"]["s_top"] == -0.3
    assert f["thresholds"]["S_MIN"] == 0.12 and f["thresholds"]["CONF_MIN"] == 0.65
    assert [o["timeframe"] for o in f["overlays"]] == ["15m", "1h"]
    assert f["order"]["side"] == "sell" and f["order"]["purpose"] == "entry"
    assert f["execution"]["fill_px"] == 42_004.2
    assert f["risk"]["equity_usd"] == 10_010.0 and f["risk"]["trading_state"] == "ACTIVE"
    assert f["outcome"] == {
        "status": "closed",
        "closed_utc": "2024-01-04 15:00",
        "closed_by": "time_exit",
        "exit_px": 41_900.0,
        "pnl_usd": -12.5,
        "won": False,
        "held_bars": 12,
    }
    text = copilot.render_why(f)
    for fragment in (
        "the strategy went SHORT: a sell of 0.1 BTC",
        "chose the pros arm",
        "S_top = -0.300, is negative, so the direction is short",
        "The model disagreed: p_up 61.0%, p_down 39.0%",
        "1h trend +0.100%",
        "No gate vetoed it",
        "the 1h consensus gate (on, threshold 0.20%) did not object",
        "Closed 2024-01-04 15:00 UTC by time_exit at 41,900.00 after 12 bars: "
        "-12.50 USD net (lost)",
    ):
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize(
    "question",
    [
        "why was the 14:00 trade short?",
        "Why did we go short at 2pm?",
        "why was the 14:03 trade short",
        "why was the trade at 2024-01-04 14:00 short?",
        "why did BTC sell at 13:40?",
    ],
)
def test_why_matches_the_nearest_trade_decision_however_the_time_is_written(tel, question):
    assert why_facts(tel, question)["decision"]["time_utc"] == "2024-01-04 14:00"


def test_a_named_side_picks_the_exit_that_bought(tel):
    f = why_facts(tel, "why did it buy at 14:40?")
    assert f["decision"]["time_utc"] == "2024-01-04 15:00" and f["order"]["side"] == "buy"
    assert f["opened_by"]["opened_utc"] == "2024-01-04 14:00"
    text = copilot.render_why(f)
    assert "closed its short position (time_exit)" in text
    assert "It closed the short opened 2024-01-04 14:00 UTC by the pros arm" in text


def test_without_a_date_the_latest_day_with_a_trade_at_that_time_is_meant():
    later = [("health", health(ts=T0 + 2 * DAY + 23 * H)), ("signals", signals(ts=T0 + 2 * DAY))]
    tel = Telemetry(day_records() + later)
    f = why_facts(tel, "why was the 14:00 trade short?")
    assert f["decision"]["time_utc"] == "2024-01-04 14:00" and "note" not in f
    f = why_facts(tel, "why was the 14:00 trade short?", day=date(2024, 1, 6))
    assert f["note"].startswith("no trade decision") and f["asked_time_utc"].startswith(
        "2024-01-06"
    )


def test_no_trade_near_the_time_says_so_and_explains_that_bar(tel):
    f = why_facts(tel, "why was there no trade at 03:00?")
    assert f["note"].startswith("no trade decision for BTC-PERP within 60 minutes")
    assert "order" not in f
    assert f["decision"]["time_utc"] == "2024-01-04 00:15"  # the last bar logged before 03:00


def test_questions_without_a_usable_time_or_symbol_are_refused(tel):
    with pytest.raises(CopilotError, match="no time in the question"):
        why_facts(tel, "why was the trade short?")
    with pytest.raises(CopilotError, match="not a time"):
        why_facts(tel, "why at 25:00?")
    with pytest.raises(CopilotError, match="no telemetry for 'SOL-PERP'"):
        why_facts(tel, "why at 14:00?", symbol="SOL-PERP")
    assert why_facts(tel, "?", at="2024-01-04T14:00Z")["decision"]["time_utc"].endswith("14:00")


def test_parse_time_forms():
    assert parse_time("the 14:00 trade") == (None, 14, 0)
    assert parse_time("at 2pm") == (None, 14, 0)
    assert parse_time("at 12:30am") == (None, 0, 30)
    assert parse_time("2024-01-04T09:05 please") == (date(2024, 1, 4), 9, 5)


def test_the_symbol_comes_from_the_question_when_several_trade():
    recs = day_records() + _trade(
        "ETH-PERP", T0 + 14 * H, T0 + 15 * H, "buy", "pros", 0.6, 1.0, s_top=0.3
    )
    tel = Telemetry(recs)
    assert why_facts(tel, "why was the ETH 14:00 trade long?")["symbol"] == "ETH-PERP"
    assert why_facts(tel, "why was the 14:00 trade short?")["symbol"] == "BTC-PERP"


# -- what may reach the LLM ----------------------------------------------------------------------
def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_redaction_of_secret_looking_field_names():
    facts = {
        "symbol": "BTC-PERP",
        "exchange_api_key": "sk-1",
        "nested": {"SECRET": "s", "access_token": "t", "db_password": "p", "keep": 1},
    }
    red = redact(facts)
    assert red["exchange_api_key"] == "<REDACTED>"
    assert red["nested"] == {
        "SECRET": "<REDACTED>",
        "access_token": "<REDACTED>",
        "db_password": "<REDACTED>",
        "keep": 1,
    }
    allowed = llm.ALLOWED_KEYS | {"api_token", "nested"}
    out = llm.sanitize(
        {"api_token": "t0k", "symbol": "X", "nested": {"pnl_usd": 1, "x": 2}}, allowed
    )
    assert out == {"api_token": "<REDACTED>", "symbol": "X", "nested": {"pnl_usd": 1}}


def test_only_allow_listed_fields_and_no_secret_reach_the_prompt(tel):
    for facts in (
        why_facts(tel, "why was the 14:00 trade short?"),
        summary_facts(tel, date(2024, 1, 4)),
    ):
        msgs = llm.messages(facts, "q")
        assert msgs[0]["role"] == "system" and "ONLY from the facts" in msgs[0]["content"]
        body = msgs[1]["content"]
        sent = json.loads(body.split("Facts (JSON):\n", 1)[1].split("\n\nQuestion:", 1)[0])
        assert _keys(sent) <= llm.ALLOWED_KEYS
        for secret in SECRETS:
            assert secret not in body
        assert "decision_id" not in body and "client_order_id" not in body
    assert llm.allow_listed({"kind": "why", "context_json": "{}", "x": [{"side": 1, "y": 2}]}) == {
        "kind": "why"
    }


def test_llm_config_from_the_environment():
    assert llm.LLMConfig.from_env({}) is None
    cfg = llm.LLMConfig.from_env(
        {
            "ENSEMBLE_LLM_BASE_URL": "https://api.example.com/v1/",
            "ENSEMBLE_LLM_MODEL": "m",
            "ENSEMBLE_LLM_API_KEY": "sk-abc",
        }
    )
    assert cfg.base_url == "https://api.example.com/v1" and cfg.api_key == "sk-abc"
    assert "sk-abc" not in repr(cfg)
    with pytest.raises(ValueError, match="ENSEMBLE_LLM_MODEL is empty"):
        llm.LLMConfig.from_env({"ENSEMBLE_LLM_BASE_URL": "http://x/v1"})
    with pytest.raises(ValueError, match="ENSEMBLE_LLM_BASE_URL='ftp://x'"):
        llm.LLMConfig.from_env({"ENSEMBLE_LLM_BASE_URL": "ftp://x", "ENSEMBLE_LLM_MODEL": "m"})
    with pytest.raises(ValueError, match="ENSEMBLE_LLM_TIMEOUT_S='0'"):
        llm.LLMConfig.from_env(
            {
                "ENSEMBLE_LLM_BASE_URL": "http://x/v1",
                "ENSEMBLE_LLM_MODEL": "m",
                "ENSEMBLE_LLM_TIMEOUT_S": "0",
            }
        )


class ChatServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that records requests."""

    def __init__(self, status: int = 200, content: str = "It went short on the pros flow.") -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "json": body}
                )
                if status != 200:
                    payload = {"error": {"message": "overloaded"}}
                else:
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                raw = json.dumps(payload).encode()
                self.send_response(status)
                if status == 302:  # a redirect that would carry the key elsewhere
                    self.send_header("Location", "http://127.0.0.2:9/v1/chat/completions")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def env(self, key: str = "sk-test-KEY") -> dict[str, str]:
        return {
            "ENSEMBLE_LLM_BASE_URL": self.base_url,
            "ENSEMBLE_LLM_MODEL": "local-test-model",
            "ENSEMBLE_LLM_API_KEY": key,
        }

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TricklingServer:
    """An endpoint on 127.0.0.1 that answers 200 and then sends its body a byte at a time,
    every `every_s`, for 10 s (far past the client's timeout), or `size` bytes at once."""

    def __init__(self, every_s: float = 0.05, size: int = 0) -> None:
        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    if size:
                        self.wfile.write(b" " * size)
                        return
                    ends = time.monotonic() + 10.0  # a client that never gives up, released
                    while not stop.wait(every_s) and time.monotonic() < ends:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_an_endpoint_that_trickles_or_floods_its_answer_is_given_up_on(tel):
    """The socket's timeout bounds each read, not the answer: a byte every 50 ms held the
    copilot for ever; and a body of gigabytes was read whole into memory."""
    env = {"ENSEMBLE_LLM_MODEL": "m", "ENSEMBLE_LLM_TIMEOUT_S": "0.5"}
    slow = TricklingServer()
    try:
        cfg = llm.LLMConfig.from_env({**env, "ENSEMBLE_LLM_BASE_URL": slow.base_url})
        started = time.monotonic()
        ans = copilot.ask(tel, "why was the 14:00 trade short?", cfg)
        took = time.monotonic() - started
    finally:
        slow.close()
    assert (
        ans.source == "deterministic" and "did not finish answering within 0.5 s" in ans.llm_error
    )
    assert took < 5.0, took
    big = TricklingServer(size=llm.MAX_ANSWER_BYTES + 1)
    try:
        cfg = llm.LLMConfig.from_env({**env, "ENSEMBLE_LLM_BASE_URL": big.base_url})
        ans = copilot.ask(tel, "why was the 14:00 trade short?", cfg)
    finally:
        big.close()
    assert ans.source == "deterministic" and "answered more than 4 MiB" in ans.llm_error


def test_the_llm_answers_over_chat_completions_and_a_failure_falls_back(tel):
    with ChatServer() as server:
        cfg = llm.LLMConfig.from_env(server.env())
        ans = copilot.ask(tel, "why was the 14:00 trade short?", cfg)
    assert ans.source == "llm" and ans.text == "It went short on the pros flow."
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-KEY"
    assert req["json"]["model"] == "local-test-model" and req["json"]["temperature"] == 0
    assert [m["role"] for m in req["json"]["messages"]] == ["system", "user"]
    with ChatServer(status=503) as server:
        ans = copilot.ask(
            tel, "why was the 14:00 trade short?", llm.LLMConfig.from_env(server.env())
        )
    assert ans.source == "deterministic" and "HTTP 503" in ans.llm_error
    assert "sk-test-KEY" not in ans.llm_error
    assert ans.text == copilot.render_why(ans.facts)


def test_main_reads_the_flows_files_and_answers_without_an_llm(tmp_path, capsys):
    for stream in copilot.STREAMS:
        lines = [json.dumps(r) for s, r in day_records() if s == stream]
        (tmp_path / f"{stream}.jsonl").write_text("\n".join(lines) + "\n")
    assert (
        copilot.main(["summary", "--from-dir", str(tmp_path), "--date", "2024-01-04"], env={}) == 0
    )
    out = capsys.readouterr()
    assert "3 trades closed, 1 win, 2 losses" in out.out
    assert "deterministic answer (ENSEMBLE_LLM_BASE_URL unset)" in out.err
    code = copilot.main(["ask", "why?", "--from-dir", str(tmp_path)], env={})
    assert code == 2 and "no time in the question" in capsys.readouterr().err


@pytest.mark.slow
def test_the_copilot_counts_the_same_round_trips_as_the_flow(tmp_path):
    from tests.conftest import run_files, small_settings

    settings = small_settings(tmp_path)
    run_files(settings)
    tel = Telemetry(copilot.records_from_dir(tmp_path))
    flow = json.loads((tmp_path / "summary.json").read_text())["symbols"]
    days = sorted({utc_day(r["ts_event_ms"]) for rs in tel.health.values() for r in rs})
    totals: dict[str, list[int]] = {}
    for d in days:
        for s in summary_facts(tel, date.fromordinal(date(1970, 1, 1).toordinal() + d))["symbols"]:
            t = totals.setdefault(s["symbol"], [0, 0, 0])
            t[0] += s["round_trips"]
            t[1] += s["wins"]
            t[2] += s["losses"]
    for sym, s in flow.items():
        assert totals[sym] == [s["round_trips"], s["wins"], s["losses"]], sym
    trade = next(o for o in tel.orders.values() if o["purpose"] == "entry")
    f = why_facts(tel, "why?", symbol=trade["symbol"], at=copilot.utc_text(trade["ts_event_ms"]))
    assert f["order"]["side"] == trade["side"] and f["decision"]["action"] == "trade"


def test_a_question_about_a_flow_exit_explains_the_exit_order_and_its_entry(tmp_path):
    """Exits are orders of their own (`<decision>:time_exit`) that name their entry."""
    from tests.conftest import run_files, small_settings

    run_files(small_settings(tmp_path))
    tel = Telemetry(copilot.records_from_dir(tmp_path))
    exit_order = next(o for o in tel.orders.values() if o["purpose"] == "time_exit")
    at = copilot.utc_text(exit_order["ts_event_ms"])
    f = why_facts(tel, "why did it close?", symbol=exit_order["symbol"], at=at)
    assert f["order"]["purpose"] == "time_exit"
    assert f["decision"]["action"] == "exit"
    entry = tel.orders[exit_order["entry_decision_id"]]
    assert f["opened_by"]["opened_utc"] == copilot.utc_text(entry["ts_event_ms"])


def test_a_question_whose_premise_is_wrong_is_corrected_before_the_answer(tel):
    """10:00 was a long entry: asked why it was short, the copilot says there was no short."""
    f = why_facts(tel, "why was the 10:00 trade short?")
    assert f["order"]["side"] == "buy" and f["decision"]["time_utc"] == "2024-01-04 10:00"
    assert f["premise"].startswith("no trade of the kind asked about for BTC-PERP")
    assert copilot.render_why(f).startswith("No trade of the kind asked about")
    assert "premise" not in why_facts(tel, "why was the 14:00 trade short?")


def test_the_api_key_never_travels_in_clear_text_or_follows_a_redirect(tel):
    plain = {"ENSEMBLE_LLM_MODEL": "m", "ENSEMBLE_LLM_API_KEY": "sk-abc"}
    with pytest.raises(ValueError, match="plain http to another host"):
        llm.LLMConfig.from_env({**plain, "ENSEMBLE_LLM_BASE_URL": "http://llm.example.com/v1"})
    assert llm.LLMConfig.from_env({**plain, "ENSEMBLE_LLM_BASE_URL": "http://127.0.0.1:8/v1"})
    with ChatServer(status=302) as server:
        cfg = llm.LLMConfig.from_env(server.env())
        with pytest.raises(llm.LLMError, match="HTTP 302"):
            llm.complete(cfg, why_facts(tel, "why was the 14:00 trade short?"), "why?")
    assert len(server.requests) == 1


def test_a_date_written_apart_from_the_time_is_used():
    question = "why was the 14:00 trade on 2024-01-04 short?"
    assert parse_time(question) == (date(2024, 1, 4), 14, 0)
    assert parse_time("on 2024-01-04 at 2pm, why short?") == (date(2024, 1, 4), 14, 0)


# -- issue 15 §4: options before the subcommand, "the last trade", "why did we stop" -----------
def _write_dir(tmp_path, records) -> str:
    for stream in copilot.STREAMS:
        lines = [json.dumps(r) for s, r in records if s == stream]
        (tmp_path / f"{stream}.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path)


@pytest.mark.parametrize("where", ["before", "after"])
def test_options_before_or_after_the_subcommand_are_both_used(tmp_path, capsys, where):
    d = _write_dir(tmp_path, day_records())
    opts = ["--from-dir", d, "--date", "2024-01-03"]
    argv = [*opts, "summary"] if where == "before" else ["summary", *opts]
    assert copilot.main(argv, env={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("2024-01-03 (UTC)"), out  # the day asked for, not the latest
    assert "1 trade closed, 1 win, 0 losses" in out


def test_an_option_given_twice_with_different_values_is_refused(tmp_path, capsys):
    d = _write_dir(tmp_path, day_records())
    argv = ["--date", "2024-01-03", "summary", "--from-dir", d, "--date", "2024-01-04"]
    assert copilot.main(argv, env={}) == 2
    assert "--date given twice" in capsys.readouterr().err


def _short_last() -> list[tuple[str, dict[str, Any]]]:
    """day_records with the 16:00 long left out: the 14:00 short is the last trade."""
    recs = day_records()
    return [(s, r) for s, r in recs if r.get("ts_event_ms") not in (T0 + 16 * H, T0 + 17 * H)]


def test_why_was_the_last_trade_short_explains_the_latest_entry():
    ans = copilot.ask(Telemetry(_short_last()), "why was the last trade short?", None)
    f = ans.facts
    assert f["decision"]["time_utc"] == "2024-01-04 14:00" and f["order"]["side"] == "sell"
    assert "premise" not in f
    assert "the strategy went SHORT" in ans.text and "pros" in ans.text


def test_the_last_trade_asked_with_the_wrong_side_is_corrected(tel):
    ans = copilot.ask(tel, "why was the last trade short?", None)
    assert ans.facts["decision"]["time_utc"] == "2024-01-04 16:00"
    assert ans.text.startswith("The last trade for BTC-PERP (2024-01-04 16:00 UTC) was a long")


def test_the_losing_run_behind_a_halt_counts_a_zero_pnl_trade_as_the_flow_does():
    recs = [("health", health(ts=T0))]
    for i, pnl in enumerate((-2.0, 0.0, -1.0)):
        recs += _trade(
            "BTC-PERP", T0 + (2 * i + 1) * H, T0 + (2 * i + 2) * H, "buy", "pros", 0.6, pnl
        )
    # the third loss fills at the open after the 06:00 close (stamped 06:00): the flow
    # counts it there and its kill-switch fires at the next close
    halted = dict(trading_state="HALTED", halt_reason="consecutive_losses", consecutive_losses=3)
    recs += [("health", health(ts=T0 + 6 * H + 5 * MIN, **halted))]
    f = copilot.ask(Telemetry(recs), "why did we stop trading at 06:05?", None).facts
    assert [t["pnl_usd"] for t in f["losing_trades"]] == [-2.0, 0.0, -1.0]


def test_the_losing_run_behind_a_drawdown_halt_leaves_out_the_flatten_it_caused():
    """A drawdown kill-switch fires at the 02:00 close with a short open; its flatten fills
    at the next open, stamped 02:00 as every fill is (the bar from 02:00). That loss came
    after the halt: the run that led to it is the one losing trade before it, as the
    health record's "1 losing trade in a row" says (the real flow's outputs did this)."""
    b = "BTC-PERP"
    recs = [("health", health(ts=T0)), *_trade(b, T0, T0 + H, "buy", "pros", 0.6, -2.0)]
    recs += [
        ("orders", order(b, T0 + H + 5 * MIN, "sell", "entry", "pros")),
        ("executions", execution(b, T0 + H + 5 * MIN, "sell", "entry")),
        ("orders", order(b, T0 + 2 * H, "buy", "kill_switch_flatten", position_before=-0.1)),
        (
            "executions",
            execution(b, T0 + 2 * H, "buy", "kill_switch_flatten", trade_pnl_usd=-7.5),
        ),
    ]
    halted = dict(trading_state="HALTED", halt_reason="drawdown_limit", consecutive_losses=1)
    recs += [("health", health(ts=T0 + 2 * H, **halted))]
    ans = copilot.ask(Telemetry(recs), "why did we stop trading at 02:00?", None)
    assert [t["pnl_usd"] for t in ans.facts["losing_trades"]] == [-2.0]
    assert ans.facts["halt"]["flattened_utc"] == copilot.utc_text(T0 + 2 * H)
    assert "-7.50" not in ans.text
    assert "1 losing trade in a row" in ans.text  # not "1 losing trades"


def test_why_did_we_stop_trading_finds_the_kill_switch_that_fired_then(tel):
    ans = copilot.ask(tel, "why did we stop trading at 18:00?", None)
    f = ans.facts
    assert f["kind"] == "halt" and f["halt"]["time_utc"] == "2024-01-04 18:00"
    assert f["halt"]["reason"] == "consecutive_losses" and f["halt"]["kill_switch"]
    assert f["halt"]["resumed_utc"] == "2024-01-04 19:00"
    assert [t["pnl_usd"] for t in f["losing_trades"]] == [-12.5, -3.0]
    assert "kill-switch consecutive_losses fired at 2024-01-04 18:00 UTC" in ans.text
    assert "reset_kill_switch" in ans.text
    assert set(llm.sanitize(f)) == set(f), "every halt fact may reach the LLM"
    # a few minutes off still finds it; a quiet time says there was no halt
    assert (
        copilot.ask(tel, "why did we halt at 18:10?", None)
        .facts["halt"]["time_utc"]
        .endswith("18:00")
    )
    with pytest.raises(CopilotError, match="no halt of BTC-PERP within 60 minutes"):
        copilot.ask(tel, "why did trading stop at 09:00?", None)


class EchoingServer(ChatServer):
    """An endpoint that refuses the key and quotes it back, as some proxies' 401 and
    malformed answers do ("invalid api key: ..."), once in an error and once in a 200."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        code = status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                raw = json.dumps({"error": f"invalid api key {key}"}).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd.RequestHandlerClass = Handler


@pytest.mark.parametrize("status", [401, 200])
def test_an_endpoint_that_quotes_the_api_key_back_does_not_put_it_in_the_error(tel, status):
    """The copilot prints the LLMError on stderr (and a job's log keeps it): the key the
    endpoint quoted back was in it whole, whatever its shape."""
    key = "Zq8vN3xLw5Rt7Yp2Kd9Hs4Mb6Jc1Fg0"  # no well-known prefix for a pattern to spot
    with EchoingServer(status) as server:
        cfg = llm.LLMConfig.from_env(server.env(key))
        with pytest.raises(llm.LLMError) as e:
            llm.complete(cfg, why_facts(tel, "why was the 14:00 trade short?"), "why?")
    assert "invalid api key" in str(e.value) and key not in str(e.value)


def test_a_kill_switch_that_fires_under_an_operator_halt_is_the_days_kill_switch_and_the_why():
    """HALTED by an operator, then the daily loss limit fires (the flow now records it,
    and only reset_kill_switch lifts it): the state stays HALTED, so the copilot, which
    looked only at changes of state, said "Kill-switch: none fired" and answered "why did
    we stop" with the operator's halt."""
    operator = dict(trading_state="HALTED", halt_reason="operator_halt: maintenance")
    kill = dict(trading_state="HALTED", halt_reason="daily_loss_limit", drawdown=0.06)
    recs = [
        ("health", health(ts=T0 + 1 * H)),
        ("health", health(ts=T0 + 2 * H, **operator)),
        ("health", health(ts=T0 + 3 * H, **operator)),
        ("health", health(ts=T0 + 4 * H, **kill)),
        ("health", health(ts=T0 + 5 * H, **kill)),
    ]
    tel = Telemetry(recs)
    [s] = summary_facts(tel, date(2024, 1, 4))["symbols"]
    assert [(e["event"], e["reason"]) for e in s["kill_switch_events"]] == [
        ("halted", "operator_halt: maintenance"),
        ("kill_switch_fired", "daily_loss_limit"),
    ]
    f = copilot.ask(tel, "why did we stop trading at 04:00?", None).facts
    assert f["halt"]["reason"] == "daily_loss_limit" and f["halt"]["kill_switch"]
    assert f["halt"]["time_utc"] == "2024-01-04 04:00"


def test_a_record_with_nan_or_an_impossible_time_is_set_aside_and_the_summary_still_written(
    caplog,
):
    """One bad record (a NaN fee, a health time no calendar holds) used to end the summary
    with a TypeError or 'year out of range': it is left out, named, and counted."""
    bad_fee = dict(costs("BTC-PERP", T0 + 16 * H + 5 * MIN), fee_usd=float("nan"))
    bad_time = health("ETH-PERP", 2**62)
    tel = Telemetry([*day_records(), ("costs", bad_fee), ("health", bad_time)])
    with caplog.at_level("WARNING", logger="ensemble.copilot"):
        text = copilot.summary(tel, date(2024, 1, 4), None).text
    assert tel.set_aside == 2 and text.startswith("2024-01-04 (UTC)")
    assert "BTC-PERP: 3 trades closed" in text and "Left out: 2 telemetry record(s)" in text
    assert "fee_usd is nan" in caplog.text and f"ts_event_ms={2**62} is not a time" in caplog.text


def test_a_files_record_whose_nan_was_written_as_null_is_set_aside(tmp_path, capsys):
    """The flow writes NaN as null in its JSON lines; the copilot checks file records
    against their schema (Kafka's are checked by decoding) and leaves such a one out."""
    recs = [*day_records(), ("costs", dict(costs("BTC-PERP", T0 + 16 * H + 5 * MIN), fee_usd=None))]
    for stream in {s for s, _ in recs}:
        lines = [json.dumps(r) for s, r in recs if s == stream]
        (tmp_path / f"{stream}.jsonl").write_text("\n".join(lines) + "\n")
    assert copilot.main(["summary", "--from-dir", str(tmp_path), "--date", "2024-01-04"]) == 0
    out = capsys.readouterr()
    assert "1 unusable records set aside" in out.err and "Left out: 1" in out.out
    assert "BTC-PERP: 3 trades closed" in out.out
