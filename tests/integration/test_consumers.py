"""The alerts and copilot consumers against the real broker.

Telemetry records are Avro-encoded with the flow's schemas and produced, keyed by symbol,
onto freshly provisioned topics, every record twice (the flow publishes at least once).
The alerts consumer runs as `python -m consumers.alerts` would (its `main`), posting to a
Slack stand-in on 127.0.0.1; the copilot reads the topics to their end and answers, with
and without a local chat-completions server. A slow test runs the real flow onto Kafka.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from kafka import KafkaProducer

from consumers import alerts, copilot, llm
from dataflows.kafka_security import kafka_python_config
from dataflows.topics import provision
from schemas import codec
from tests.test_alerts import MIN, T0, WebhookServer, execution, health, signals
from tests.test_copilot import SECRETS, ChatServer, H, day_records


def produce(bootstrap: str, prefix: str, records: list[tuple[str, dict[str, Any]]]) -> int:
    producer = KafkaProducer(**kafka_python_config(bootstrap, acks="all"))
    for stream, rec in records:
        value = codec.encode(codec.STREAM_SCHEMAS[stream], rec)
        producer.send(f"{prefix}.{stream}", key=rec["symbol"].encode(), value=value)
    producer.flush()
    producer.close()
    return len(records)


def eth_records() -> list[tuple[str, dict[str, Any]]]:
    """ETH-PERP: a 25 bps fill and a drawdown past 5%."""
    e = "ETH-PERP"
    return [
        ("health", health(e, T0 + 5 * MIN, equity_usd=10_000.0)),
        ("signals", signals(e, T0 + 5 * MIN)),
        ("executions", execution(e, T0 + 9 * H, "buy", fill_px=2_305.75, ref_px=2_300.0,
                                 slippage_bps=25.0)),
        ("health", health(e, T0 + 20 * H, equity_usd=9_350.0, drawdown=0.065,
                          peak_equity_usd=10_000.0)),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def telemetry(kafka_bootstrap):
    """A prefix whose output topics hold a day of telemetry, each record published twice."""
    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    records = day_records() + eth_records()
    sent = produce(kafka_bootstrap, prefix, records + records)
    return prefix, records, sent


ALERT_ENV = {
    "ENSEMBLE_ALERTS_START": "earliest",
    "ENSEMBLE_ALERTS_CONSECUTIVE_LOSSES": "2",
    "ENSEMBLE_ALERTS_LOW_CONF_WINDOW_TRADES": "1",
    "ENSEMBLE_ALERTS_HEARTBEAT_INTERVAL_S": "1.0",
    "ENSEMBLE_ALERTS_RATE_LIMIT_MAX": "20",
}


def _rules(texts: list[str]) -> list[tuple[str, str]]:
    """(rule, symbol) of each Slack text."""
    out = []
    for t in texts:
        rule = t.split("`")[1]
        rest = t.split("` ", 1)[1]
        sym = (
            "*" if "any symbol" in rest else next(s for s in ("BTC-PERP", "ETH-PERP") if s in rest)
        )
        out.append((rule, sym))
    return out


def test_alerts_consumer_posts_each_rule_once_to_the_webhook(kafka_bootstrap, telemetry, caplog):
    prefix, records, _ = telemetry
    group = f"alerts-{uuid.uuid4().hex[:8]}"
    script = [(429, {"Retry-After": "1"}, "rate_limited")]  # Slack asks us to slow down once
    with WebhookServer(script) as hook:
        env = {**ALERT_ENV, "ENSEMBLE_ALERTS_GROUP_ID": group, "SLACK_WEBHOOK_URL": hook.url}
        args = ["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--until-idle", "4"]
        with caplog.at_level("INFO"):
            assert alerts.main(args, env=env) == 0
        first_run = list(hook.texts)
        # the same group again: offsets were committed, nothing new, nothing posted
        again = ["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--until-idle", "1.5"]
        quiet = {**env, "ENSEMBLE_ALERTS_DISABLED_RULES": "heartbeat_missing"}
        assert alerts.main(again, env=quiet) == 0
    assert hook.texts == first_run
    assert hook.posts[0]["json"]["text"] == hook.posts[1]["json"]["text"], "429 then retried"
    texts = first_run[1:]
    got = sorted(r for r in _rules(texts) if r[1] != "*")
    assert got == sorted(
        [
            ("kill_switch", "BTC-PERP"),  # fired
            ("kill_switch", "BTC-PERP"),  # resolved by the reset
            ("error_event", "BTC-PERP"),
            ("low_confidence_trade", "BTC-PERP"),  # the 14:00 short at 39% for its side
            ("consecutive_losses", "BTC-PERP"),  # the 15:00 and 17:00 losses
            ("heartbeat_missing", "BTC-PERP"),
            ("large_slippage", "ETH-PERP"),
            ("drawdown_breach", "ETH-PERP"),
            ("heartbeat_missing", "ETH-PERP"),
        ]
    ), texts
    kill = next(t for t in texts if "kill-switch fired" in t)
    assert kill.startswith(":rotating_light: *CRITICAL* `kill_switch`")
    assert "consecutive_losses at 2024-01-04 18:00 UTC" in kill
    assert any("*RESOLVED* `kill_switch`" in t for t in texts)
    followed = 2 * sum(1 for stream, _ in records if stream in alerts.STREAMS)
    assert f"stopped: {followed} messages, {followed // 2} records" in caplog.text
    assert f"{followed // 2} duplicates dropped" in caplog.text
    assert "s3cr3tXYZ" not in caplog.text and hook.url not in caplog.text
    assert "sk-live-SECRET" not in caplog.text + "".join(hook.texts)


def test_a_restarted_alerts_consumer_stays_quiet_when_the_flow_republishes(kafka_bootstrap, caplog):
    """The alerts consumer handles a day and stops; the flow restarts and publishes the
    same decisions again; the restarted consumer (same group) rebuilds its memory from the
    records before its committed offsets and raises nothing new."""
    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    records = day_records() + eth_records()
    produce(kafka_bootstrap, prefix, records)
    env = {
        **ALERT_ENV,
        "ENSEMBLE_ALERTS_GROUP_ID": f"alerts-{uuid.uuid4().hex[:8]}",
        "ENSEMBLE_ALERTS_DISABLED_RULES": "heartbeat_missing",
    }
    args = ["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--until-idle", "1.5"]
    with WebhookServer() as hook:
        assert alerts.main(args, env={**env, "SLACK_WEBHOOK_URL": hook.url}) == 0
        first = list(hook.texts)
        produce(kafka_bootstrap, prefix, records)  # the flow's republish after a crash
        with caplog.at_level("INFO", logger="ensemble.alerts"):
            assert alerts.main(args, env={**env, "SLACK_WEBHOOK_URL": hook.url}) == 0
    assert len(first) == 7 and hook.texts == first
    followed = sum(1 for stream, _ in records if stream in alerts.STREAMS)
    assert f"rebuilt dedup and rule state from the {followed} records" in caplog.text
    assert f"stopped: {followed} messages, 0 records, {followed} duplicates" in caplog.text


def test_copilot_summary_from_kafka_counts_each_trade_once(kafka_bootstrap, telemetry, capsys):
    prefix, records, _ = telemetry
    args = ["summary", "--date", "2024-01-04", "--bootstrap", kafka_bootstrap, "--prefix", prefix]
    assert copilot.main(args, env={}) == 0
    out = capsys.readouterr()
    assert "BTC-PERP: 3 trades closed, 1 win, 2 losses (33% won), net +4.50 USD" in out.out
    assert "kill_switch_fired at 18:00 (consecutive_losses)" in out.out
    assert f"{len(records)} republished duplicates dropped" in out.err
    assert "deterministic answer" in out.err


def test_copilot_asks_a_chat_completions_server_with_only_allow_listed_facts(
    kafka_bootstrap, telemetry, capsys
):
    prefix, _, _ = telemetry
    q = "why was the 14:00 trade short?"
    with ChatServer(content="Short: the pros flow was -0.30 and no gate objected.") as server:
        code = copilot.main(
            ["ask", q, "--bootstrap", kafka_bootstrap, "--prefix", prefix], env=server.env()
        )
    out = capsys.readouterr()
    assert code == 0
    assert out.out.strip() == "Short: the pros flow was -0.30 and no gate objected."
    assert "answered by local-test-model at 127.0.0.1" in out.err
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-KEY"
    system, user = req["json"]["messages"]
    assert "ONLY from the facts" in system["content"] and q in user["content"]
    facts = json.loads(user["content"].split("Facts (JSON):\n", 1)[1].split("\n\nQuestion:")[0])

    def keys(v: Any) -> set[str]:
        if isinstance(v, dict):
            return set(v) | {k for x in v.values() for k in keys(x)}
        return {k for x in v for k in keys(x)} if isinstance(v, list) else set()

    assert keys(facts) <= llm.ALLOWED_KEYS
    assert facts["decision"]["time_utc"] == "2024-01-04 14:00"
    assert facts["decision"]["chosen_arm"] == "pros" and facts["outcome"]["pnl_usd"] == -12.5
    body = json.dumps(req["json"])
    for secret in (*SECRETS, "sk-test-KEY"):
        assert secret not in body


def test_copilot_without_an_llm_answers_from_the_same_facts(kafka_bootstrap, telemetry, capsys):
    prefix, _, _ = telemetry
    args = ["ask", "why was the 14:00 trade short?", "--bootstrap", kafka_bootstrap]
    assert copilot.main([*args, "--prefix", prefix, "--show-facts"], env={}) == 0
    out = capsys.readouterr().out
    facts_text, answer = out.rsplit("}\n", 1)
    facts = json.loads(facts_text + "}")
    assert answer.strip() == copilot.render_why(facts)
    assert "the strategy went SHORT" in answer and "-12.50 USD net (lost)" in answer


def test_the_consumers_refuse_missing_topics(kafka_bootstrap, capsys):
    absent = f"absent-{uuid.uuid4().hex[:8]}"
    assert (
        copilot.main(["summary", "--bootstrap", kafka_bootstrap, "--prefix", absent], env={}) == 2
    )
    assert "do not exist on the broker" in capsys.readouterr().err
    assert alerts.main(["--bootstrap", kafka_bootstrap, "--prefix", absent], env={}) == 2
    assert "python -m dataflows.topics" in capsys.readouterr().err


@pytest.mark.slow
def test_consumers_on_the_real_flows_kafka_output(kafka_bootstrap, tmp_path, caplog, capsys):
    """The generator replayed onto Kafka, the flow run from and to Kafka with a drawdown
    kill-switch at 0.05%; the alerts consumer reports it once per halted symbol, and the
    copilot's round trips over all days equal the flow's own counts (its file run)."""
    from bytewax.testing import run_main

    from dataflows.ensemble import build_flow
    from dataflows.io import RawMessage
    from dataflows.settings import Settings
    from marketdata.generator import generate
    from marketdata.replay import publish
    from tests.conftest import run_files, small_settings
    from tests.integration.kafka_io import flow_env, read_topic

    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    overrides = json.dumps({"warmup_bars": 150, "risk.max_drawdown": 0.0005})
    settings = small_settings(tmp_path / "files", ENSEMBLE_OVERRIDES=overrides)
    records = [(s, r) for s, r in generate(settings.generator) if s != "funding"]
    publish(kafka_bootstrap, prefix, records, progress=False)
    env = flow_env(kafka_bootstrap, prefix, overrides=overrides)
    run_main(build_flow(Settings.from_env(env)))
    health_recs = read_topic(kafka_bootstrap, f"{prefix}.health", "health")
    halted = {h["symbol"] for h in health_recs if h["halt_reason"] == "drawdown_limit"}
    assert halted, "the kill-switch never fired: the test would prove nothing"

    with WebhookServer() as hook:
        env_alerts = {
            "ENSEMBLE_ALERTS_START": "earliest",
            "ENSEMBLE_ALERTS_GROUP_ID": f"alerts-{uuid.uuid4().hex[:8]}",
            "ENSEMBLE_ALERTS_DISABLED_RULES": "heartbeat_missing,low_confidence_trade",
            "SLACK_WEBHOOK_URL": hook.url,
        }
        args = ["--bootstrap", kafka_bootstrap, "--prefix", prefix, "--until-idle", "4"]
        assert alerts.main(args, env=env_alerts) == 0
    fired = [t for t in hook.texts if "`kill_switch`" in t and "kill-switch fired" in t]
    assert sorted(s for t in fired for s in halted if s in t) == sorted(halted), hook.texts

    run_files(settings, [RawMessage(s, r) for s, r in records])  # the same input, from files
    flow = json.loads((tmp_path / "files" / "summary.json").read_text())["symbols"]
    assert (
        copilot.main(["summary", "--bootstrap", kafka_bootstrap, "--prefix", prefix], env={}) == 0
    )
    capsys.readouterr()
    tel = copilot.Telemetry(copilot.read_to_end(
        copilot.KafkaSettings(kafka_bootstrap, prefix), copilot.STREAMS))  # fmt: skip
    for sym, s in flow.items():
        trips = tel.round_trips[sym]
        assert len(trips) == s["round_trips"], sym
        assert sum(t.pnl_usd > 0 for t in trips) == s["wins"], sym


class HangingWebhook(WebhookServer):
    """Slack down: every POST is held unanswered until `release` (then 503)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.held = 0
        handler = self.httpd.RequestHandlerClass
        server = self

        def do_post(h: Any) -> None:
            server.held += 1
            server.release.wait(120)
            h.send_response(503)
            h.end_headers()

        handler.do_POST = do_post  # type: ignore[attr-defined]

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        super().__exit__(*exc)


def test_a_slack_outage_neither_stops_reading_nor_raises_false_heartbeat_alerts(
    kafka_bootstrap, telemetry, caplog
):
    """Slack holds every post unanswered. The consumer still reads everything, logs every
    alert at once, and the heartbeats the flow keeps publishing meanwhile (one per 0.2 s)
    are read: no heartbeat_missing. Before, the first post blocked reading for a minute."""
    prefix, records, sent = telemetry
    live = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, live)
    produce(kafka_bootstrap, live, records)
    stop_beats = threading.Event()

    def beat() -> None:  # the flow, alive, publishing health
        producer = KafkaProducer(**kafka_python_config(kafka_bootstrap, acks=1))
        i = 0
        while not stop_beats.wait(0.2):
            i += 1
            for sym in ("BTC-PERP", "ETH-PERP"):
                rec = health(sym, T0 + 86_400_000 + i * 300_000)
                value = codec.encode(codec.STREAM_SCHEMAS["health"], rec)
                producer.send(f"{live}.health", key=sym.encode(), value=value)
            producer.flush()
        producer.close()

    env = {
        **ALERT_ENV,
        "ENSEMBLE_ALERTS_GROUP_ID": f"alerts-{uuid.uuid4().hex[:8]}",
        "ENSEMBLE_ALERTS_HEARTBEAT_INTERVAL_S": "1.0",
        "ENSEMBLE_ALERTS_HEARTBEAT_MISSED_INTERVALS": "2",
    }
    args = ["--bootstrap", kafka_bootstrap, "--prefix", live, "--until-idle", "1"]
    beats = threading.Thread(target=beat, daemon=True)
    with HangingWebhook() as hook, caplog.at_level("INFO", logger="ensemble.alerts"):
        beats.start()
        threading.Timer(6.0, stop_beats.set).start()  # the flow publishes for 6 s
        # a safety net: on the old code reading waited on Slack, which answers after 30 s
        give_up = threading.Timer(30.0, hook.release.set)
        give_up.start()
        done = [alerts.main(args, env={**env, "SLACK_WEBHOOK_URL": hook.url})]
        answered_before_stop = hook.release.is_set()
        stop_beats.set()
        give_up.cancel()
    assert done == [0]
    assert hook.held >= 1 and not answered_before_stop, "reading waited on Slack"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert len(logged) == 7 and all("[slack: queued]" in m for m in logged), logged
    assert not any("heartbeat_missing" in m for m in logged)
    followed = sum(1 for stream, _ in records if stream in alerts.STREAMS)
    stopped = next(r.getMessage() for r in caplog.records if "stopped:" in r.getMessage())
    assert int(stopped.split("stopped: ")[1].split()[0]) > followed, "the heartbeats were read"
    assert "undelivered at stop" in stopped


def test_the_group_reader_counts_health_records_not_read_yet(kafka_bootstrap):
    from consumers.stream import GroupReader, KafkaSettings

    prefix = f"it-{uuid.uuid4().hex[:10]}"
    provision(kafka_bootstrap, prefix)
    produce(kafka_bootstrap, prefix, [("health", health("BTC-PERP", T0 + i * MIN))
                                      for i in range(600)])  # fmt: skip
    reader = GroupReader(KafkaSettings(kafka_bootstrap, prefix), ("health", "signals"),
                         f"g-{uuid.uuid4().hex[:8]}", "earliest")  # fmt: skip
    try:
        read = 0
        while read == 0:
            read += reader.poll(1.0, max_records=100)[1]
        assert reader.unread_health() == 600 - read > 0
        for _ in range(60):
            if read == 600:
                break
            read += reader.poll(1.0, max_records=100)[1]
        assert read == 600 and reader.unread_health() == 0
    finally:
        reader.close()
