"""The Grafana dashboard and the Prometheus alerting rules in deploy/k8s/components/monitoring.

Every metric their queries name is exported by the flow (read off the registry after a
small run, as Prometheus would scrape it); the rules cover each rule of the alerts
consumer and pass `promtool check rules` and promtool's own unit tests
(tests/monitoring/ensemble-rules.test.yaml). promtool ships in Debian's `prometheus`
package; without it those two tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from consumers import alerts
from dataflows.io import RawMessage
from operators import predict
from tests.conftest import messages, run_records, small_settings

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
DASHBOARD = MONITORING / "ensemble-dashboard.json"
RULES = MONITORING / "ensemble-rules.yaml"
RULE_TESTS = ROOT / "tests" / "monitoring" / "ensemble-rules.test.yaml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not on the PATH (Debian: apt-get install prometheus)"

_METRIC = re.compile(r"\bensemble_[a-z0-9_]+\b")
_LABELS_IN_QUERY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def names_in(expr: str) -> set[str]:
    # `ensemble_kill_switch` is both a metric and its enum's label name
    return {
        m.group(0)
        for m in _METRIC.finditer(expr)
        if not re.match(r"\s*(=~|!~|!=|=)", expr[m.end() :])
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, set[str]]:
    """Sample name -> label names, as /metrics shows them after a small run of the flow
    with one late trade (a dead letter) and one failing prediction (an error) in it, since
    a labelled counter shows on /metrics once it has counted something."""
    settings = small_settings(tmp_path_factory.mktemp("flow"))
    msgs = messages(settings)
    i = next(k for k, m in enumerate(msgs) if k > len(msgs) // 2 and m.stream == "trades")
    late = {**msgs[i].payload, "ts_event_ms": msgs[i].payload["ts_event_ms"] - 86_400_000}
    msgs.insert(i + 1, RawMessage("trades", late))
    original, calls = predict.ModelRuntime.predict, {"n": 0}

    def flaky(self: Any, features: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 200:
            raise RuntimeError("model server hiccup")
        return original(self, features)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict.ModelRuntime, "predict", flaky)
        out = run_records(settings, msgs)
    assert out["dead_letters"] and out["errors"] and out["executions"]
    page = generate_latest(REGISTRY).decode() + _fresh_ingestor_page()
    out_names: dict[str, set[str]] = {}
    for line in page.splitlines():
        if line.startswith("ensemble_"):
            name, _, rest = line.partition("{")
            name = name.split(" ")[0]
            labels = set(re.findall(r'(\w+)="', rest)) if rest else set()
            out_names.setdefault(name, set()).update(labels)
    return out_names


def _fresh_ingestor_page() -> str:
    """The live ingestor's /metrics as a just-started one serves it (no record yet)."""
    from marketdata.live.binance import Binance
    from marketdata.live.ingestor import Ingestor, IngestorConfig
    from marketdata.live.producer import Publisher

    cfg = IngestorConfig(venue="binance", symbols=("BTC-PERP",), bootstrap="127.0.0.1:1")
    ing = Ingestor(cfg, Binance(), Publisher("127.0.0.1:1", cfg.prefix, cfg.strategy_id, {}))
    return generate_latest(ing.metrics.registry).decode()


def test_every_metric_the_dashboard_and_the_rules_name_is_exported_by_the_flow(exported):
    """Or by the live ingestor (`ensemble_live_*`), from its start: a rule reading a
    series that appears only at its first record cannot see a venue that never sent one."""
    queries = dashboard_exprs() + [r["expr"] for r in rules()]
    named = set().union(*(names_in(q) for q in queries))
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"named in a query but not exported by the flow: {missing}"
    for q in queries:  # the labels a query groups by exist on its metrics
        for group in _LABELS_IN_QUERY.findall(q):
            wanted = {x.strip() for x in group.split(",") if x.strip()} - {"le"}
            have = set().union(*(exported[n] for n in names_in(q)))
            assert wanted <= have, f"{q}: no label(s) {sorted(wanted - have)}"


def test_the_dashboard_shows_what_an_operations_engineer_looks_for():
    d = dashboard()
    exprs = " ".join(dashboard_exprs())
    for metric in (
        "ensemble_equity_usd",
        "ensemble_drawdown",
        "ensemble_position_notional_usd",
        "ensemble_decisions_total",
        "ensemble_rejections_total",
        "ensemble_model_confidence_bucket",
        "ensemble_decision_latency_seconds_bucket",
        "ensemble_event_lag_seconds",
        "ensemble_dead_letters_total",
        "ensemble_errors_total",
        "ensemble_trading_state",
        "ensemble_kill_switch",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in d["panels"])
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "symbol"}
    assert d["uid"] and d["title"] and d["timezone"] == "utc"


# Rules only a reader of the topics can judge: the flow's metrics cannot show them.
CONSUMER_ONLY = {"conflicting_duplicate"}  # a telemetry key seen again with other content
# Rules only Prometheus can have: the alerts consumer reads the flow's topics, where a venue
# that sends nothing shows as nothing (the wall clock still closes its bars, as gaps)
PROMETHEUS_ONLY = {"ingestor_no_records"}


def test_every_rule_of_the_alerts_consumer_has_a_prometheus_rule():
    rs = rules()
    assert {r["labels"]["rule"] for r in rs} - PROMETHEUS_ONLY == set(alerts.RULES) - CONSUMER_ONLY
    for r in rs:
        assert r["alert"].startswith("Ensemble") and r["labels"]["severity"] in (
            "critical",
            "warning",
        )
        assert r["annotations"]["summary"] and r["annotations"]["description"]


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_the_rules_pass_promtool_check_rules():
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_the_rules_fire_on_promtools_unit_tests():
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_alert_that_names_an_operator_command_points_to_the_page_that_shows_how_to_send_it():
    """At 3 a.m. the annotation is the runbook's address: the page it names must show the
    command line (`python -m dataflows.control <command>` ... ) it asks for."""
    from operators.events import CONTROL_COMMANDS

    for r in rules():
        text = " ".join(r["annotations"].values())
        # `halt` and `resume` are English words too ("consider a halt"): the others only
        commands = [c for c in CONTROL_COMMANDS if "_" in c and re.search(rf"\b{c}\b", text)]
        if not commands:
            continue
        pages = re.findall(r"\bdocs/[\w-]+\.md\b", text)
        assert pages, f"{r['alert']} asks for {commands} but names no page that says how"
        for page in pages:
            doc = (ROOT / page).read_text()
            for c in commands:
                shown = re.search(rf"python -m dataflows\.control\b[^\n]*(\n[^\n]*)?\b{c}\b", doc)
                assert shown, f"{r['alert']} points to {page} for {c}: it does not show how"
