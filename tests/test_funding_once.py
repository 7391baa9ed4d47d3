"""A funding settlement is applied once. The live ingestor's backfill asks for funding
from a window before the cut, and a settlement it published hours before (its dedup
window long past, or before a restart) went out again; Kafka may also deliver a record
twice. The market step passed the copy on, and the strategy paid it again at the next
bar close. Now the copy is a dead letter with its reason, and nothing else changes."""

from __future__ import annotations

import json

from tests.conftest import messages, run_records, small_settings

LATER = 400  # messages after the original: minutes to hours of event time


def test_a_funding_settlement_delivered_again_later_is_a_dead_letter_and_not_paid_again(tmp_path):
    settings = small_settings(tmp_path)
    good = messages(settings)
    funding = [i for i, m in enumerate(good) if m.stream == "funding"]
    again: dict[int, list] = {}
    for i in funding:
        again.setdefault(min(i + LATER, len(good) - 1), []).append(good[i])
    doubled = [m for i, m in enumerate(good) for m in [m, *again.get(i, [])]]
    clean, dup = run_records(settings, good), run_records(settings, doubled)

    reasons = [d["reason"] for d in dup["dead_letters"]]
    assert len(reasons) == len(funding) and all("not applied" in r for r in reasons), reasons
    assert {d["source_stream"] for d in dup["dead_letters"]} == {"funding"}
    paid = _funding_paid(clean)
    assert any(paid.values()), "no position held over a settlement: the test proves nothing"
    assert _funding_paid(dup) == paid
    for stream in ("bars", "signals", "rejections", "orders", "executions"):
        assert _strip(dup[stream]) == _strip(clean[stream]), stream


def test_the_last_settlement_passed_on_survives_a_restart_from_a_snapshot():
    """A restart resumes from the market step's snapshot; a copy of the last settlement
    read after it (the ingestor republishes it on its first reconnect) is still refused."""
    import pickle

    from operators.config import CohortConfig
    from operators.events import Funding
    from operators.market import Late, MarketState

    st = MarketState("BTC-PERP", False, 5_000, CohortConfig())
    out: list = []
    st.on_event(Funding("BTC-PERP", 1_704_067_200_000, 0.0001), out)
    resumed = pickle.loads(pickle.dumps(st)).configure(False, 5_000, CohortConfig(), 3_600_000)
    again: list = []
    resumed.on_event(Funding("BTC-PERP", 1_704_067_200_000, 0.0001), again)
    assert [type(x) for x in again] == [Late] and "not applied" in again[0].reason
    resumed.on_event(Funding("BTC-PERP", 1_704_070_800_000, 0.0001), again)
    assert type(again[-1]) is Funding


def test_a_settlement_stamped_far_ahead_does_not_shut_out_the_real_ones():
    """One funding record stamped at the wall clock's time in a replay of last year (a wrong
    clock, a hostile producer) made every real settlement after it a dead letter, 'older
    than' it: 38 in a 4-day replay, and every cash and equity figure after it wrong. It now
    waits alone for its bar; the real ones pass, each once."""
    import pickle

    from operators.config import CohortConfig
    from operators.events import Funding
    from operators.market import Late, MarketState

    hour, t0 = 3_600_000, 1_704_067_200_000
    far = Funding("BTC-PERP", 1_796_000_000_000, 0.0375, part="ensemble.funding@0")
    st = MarketState("BTC-PERP", False, 5_000, CohortConfig())
    out: list = []
    for f in (far, *(Funding("BTC-PERP", t0 + k * hour, 0.0001) for k in range(3))):
        st.on_event(f, out)
    assert [type(x) for x in out] == [Funding] * 4
    st = pickle.loads(pickle.dumps(st)).configure(False, 5_000, CohortConfig(), hour)
    again: list = []
    for ts in (t0 + hour, far.ts_event_ms):  # copies, before their bars: refused
        st.on_event(Funding("BTC-PERP", ts, 0.0001), again)
    assert [type(x) for x in again] == [Late, Late]
    assert all("passed on already" in x.reason for x in again)


def _funding_paid(run: dict[str, list[dict]]) -> dict[str, float]:
    return {s["symbol"]: s["funding_usd"] for s in run["summary"] if "funding_usd" in s}


def _strip(records: list[dict]) -> list[str]:
    """Records without their wall-clock stamps, in an order that does not depend on how
    the input was batched (the symbols' records interleave by batch)."""
    return sorted(
        json.dumps({k: v for k, v in r.items() if k != "ts_init_ms"}, sort_keys=True)
        for r in records
    )
