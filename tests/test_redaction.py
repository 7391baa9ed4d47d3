"""SPEC 9 redaction in the flow's own records (issue 12, item 10): `errors` and
`dead_letters` carry the reprs of events and the raw input bytes, so a field whose name
contains key, secret, token or password is redacted there too, by the one function the
consumers use."""

from __future__ import annotations

import json
from pathlib import Path

from dataflows.ensemble import _error
from dataflows.io import RawMessage
from operators.redaction import REDACTED, clean, scrub, scrub_bytes
from operators.telemetry import Stamp
from tests.conftest import run_records, small_settings

GOOD = {"symbol": "BTC-PERP", "ts_event_ms": 1_704_067_201_000, "trade_id": "t1", "qty": 1.0}


def test_scrub_masks_secret_values_in_json_repr_and_assignments():
    text = (
        '{"api_key": "sk-json", "px": 1} '
        "Trade(password='hunter2', buyer='0xabc') "
        "token=tok123; client_secret: s3cr3t"
    )
    clean = scrub(text)
    for secret in ("sk-json", "hunter2", "tok123", "s3cr3t"):
        assert secret not in clean
    assert "buyer='0xabc'" in clean and '"px": 1' in clean


def test_bytes_without_secrets_come_back_unchanged_whatever_their_encoding():
    raw = bytes(range(256)) * 3
    assert scrub_bytes(raw) is raw


def test_a_dead_letter_of_a_record_with_a_secret_field_keeps_everything_but_the_secret(
    tmp_path: Path,
):
    bad = {**GOOD, "api_key": "sk-live-123"}  # no px: a dead letter
    out = run_records(small_settings(tmp_path, ENSEMBLE_DAYS="0.05"), [RawMessage("trades", bad)])
    (dl,) = out["dead_letters"]
    payload = json.loads(dl["payload"])
    assert payload["api_key"] == REDACTED
    assert payload["trade_id"] == "t1"
    assert b"sk-live-123" not in dl["payload"]


def test_a_dead_letter_of_raw_bytes_with_a_secret_is_redacted_and_says_so(tmp_path: Path):
    raw = b'{"symbol": "BTC-PERP", "token": "abc123"}'  # JSON where Avro was expected
    out = run_records(small_settings(tmp_path, ENSEMBLE_DAYS="0.05"), [RawMessage("trades", raw)])
    (dl,) = out["dead_letters"]
    assert b"abc123" not in dl["payload"] and REDACTED.encode() in dl["payload"]
    assert dl["reason"].startswith("undecodable")
    assert "redacted" in dl["reason"]


def test_an_error_record_redacts_its_message_and_the_reprs_in_its_context():
    try:
        raise ValueError("exchange said: invalid api_key=sk-abc")
    except ValueError as exc:
        rec = _error(
            Stamp("s"),
            "market",
            "BTC-PERP",
            1,
            exc,
            {"event": "Trade(password='hunter2', px=1.0)", "secret_note": "xyz"},
        ).record
    assert "sk-abc" not in rec["message"] and REDACTED in rec["message"]
    ctx = json.loads(rec["context_json"])
    assert ctx["secret_note"] == REDACTED
    assert "hunter2" not in ctx["event"] and "px=1.0" in ctx["event"]


def test_a_health_record_is_cleaned_whatever_the_type_of_its_text_and_however_often():
    """Numbers pass untouched; text is scrubbed every time it appears, also when the same
    short reason repeats record after record, and also when it is a str subclass."""

    class Reason(str):
        pass

    reason = "operator_halt: token=abc123"  # short: its scrub is remembered
    for _ in range(3):
        rec = clean(
            {"equity_usd": 1.5, "bars": 2, "win_rate": None, "shadow": False,
             "halt_reason": reason, "detail": Reason(reason),
             "bandit": {"pros": {"n": 1.0, "mean_bps": -2.0}}, "api_key": 0}
        )  # fmt: skip
        assert rec["halt_reason"] == rec["detail"] == f"operator_halt: token={REDACTED}"
        assert rec["api_key"] == REDACTED
        assert (rec["equity_usd"], rec["bars"], rec["win_rate"]) == (1.5, 2, None)
        assert rec["bandit"] == {"pros": {"n": 1.0, "mean_bps": -2.0}}


def test_scrubbing_hostile_text_takes_linear_time_so_one_record_cannot_stall_the_flow():
    """A dead letter scrubs the whole input (up to the 1 MiB message limit). The name
    before `key=`/`password:` and an e-mail's local part were matched from every word
    boundary and backtracked for every secret word in them: 2 KB of `key.key.` took 10 s
    and 4 KB 67 s (cubic), so one undecodable record on an input topic stopped the flow.
    The bounds are far from both: a guard against that blow-up, not a speed target."""
    import time

    from operators.telemetry import dead_letter

    for hostile in (b"key." * 500, b"a." * 4_000, b"a-" * 4_000, b"a+" * 4_000):  # small first
        started = time.perf_counter()
        scrub_bytes(hostile)
        assert time.perf_counter() - started < 5.0, hostile[:8]  # the old: 7.6-10 s, 2 KB
    started = time.perf_counter()
    for hostile in (b"key." * 262_144, b"x.password." * 95_325, b"a.b+" * 262_144):  # 1 MiB
        dl = dead_letter(Stamp("s"), "trades", hostile, "undecodable")
        assert dl["payload_bytes"] == len(hostile)
    assert time.perf_counter() - started < 60.0  # under 1 s here; the old never ended
    # what was masked still is, the same way
    assert scrub("x.api_key=abc, --password: hunter2 ..key=v") == (
        f"x.api_key={REDACTED}, --password: {REDACTED} ..key={REDACTED}"
    )
    assert scrub("mail ..alice.ops+x@example.com; a@b") == f"mail ..{REDACTED}; a@b"
