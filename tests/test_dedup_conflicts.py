"""Deduplication keeps the first copy only when a later one is identical; a copy with the
same key but other content raises an alert (forged telemetry, issue 14)."""

from __future__ import annotations

from consumers.alerts import AlertsConfig, Notifier, Rules, run
from consumers.stream import CONFLICT, DUPLICATE, FIRST, Dedup
from tests.test_alerts import T0, Clock, FakeSlack, ListReader, health


def test_an_identical_copy_is_a_duplicate_and_a_different_one_a_conflict():
    d = Dedup()
    real = health(ts=T0, trading_state="HALTED", halt_reason="drawdown_limit")
    assert d.check("health", real) == FIRST
    assert d.check("health", dict(real)) == DUPLICATE
    assert d.check("health", {**real, "trading_state": "ACTIVE"}) == CONFLICT
    assert (d.duplicates, d.conflicts) == (1, 1)


def test_a_forged_record_published_ahead_raises_an_alert_instead_of_hiding_the_real_one():
    real = health(ts=T0, trading_state="HALTED", halt_reason="drawdown_limit")
    forged = {**real, "trading_state": "ACTIVE", "halt_reason": ""}
    slack = FakeSlack()
    cfg = AlertsConfig()
    stats = run(
        ListReader([[("health", forged)], [("health", real)]]),
        Rules(cfg, 0.0),
        Notifier(cfg, slack),
        max_messages=2,
        clock=Clock(t=0.0),
    )
    assert stats.records == 1 and stats.duplicates == 0
    assert any("`conflicting_duplicate`" in t and "different content" in t for t in slack.texts)


def test_a_republished_copy_stamped_later_by_the_wall_clock_is_a_duplicate_not_a_conflict():
    # A live flow stamps ts_init_ms by the wall clock: a restart that replays, or a rerun,
    # publishes the same record with a later stamp; that is no forgery.
    real = health(ts=T0, trading_state="HALTED", halt_reason="drawdown_limit")
    again = {**real, "ts_init_ms": real["ts_init_ms"] + 3_600_000}
    d = Dedup()
    assert d.check("health", real) == FIRST
    assert d.check("health", again) == DUPLICATE
    assert d.check("health", {**again, "equity_usd": 9_000.0}) == CONFLICT

    slack = FakeSlack()
    cfg = AlertsConfig()
    stats = run(
        ListReader([[("health", real)], [("health", again)]]),
        Rules(cfg, 0.0),
        Notifier(cfg, slack),
        max_messages=2,
        clock=Clock(t=0.0),
    )
    assert (stats.records, stats.duplicates) == (1, 1)
    assert not any("conflicting_duplicate" in t for t in slack.texts)
