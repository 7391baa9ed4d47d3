"""The Avro codec refuses a record with a field its schema does not have, at any depth,
naming the field's path (fastavro drops such fields silently): schemas/codec.py `check`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import STREAM_SCHEMAS, SchemaError, check, encode
from tests.conftest import run_records, small_settings


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out: Path = tmp_path_factory.mktemp("codec") / "out"
    return run_records(small_settings(out))


def _first(records: dict[str, list[dict[str, Any]]], stream: str, want: str) -> dict[str, Any]:
    """A record of `stream` in which the path `want` (dots; [] for an item) exists."""
    for rec in records[stream]:
        if _at(rec, want) is not None:
            return copy.deepcopy(rec)
    raise AssertionError(f"no {stream} record has {want}")


def _at(rec: Any, path: str) -> Any:
    for part in path.split("."):
        if part == "[]":
            rec = rec[0] if isinstance(rec, list) and rec else None
        elif part == "{}":
            rec = next(iter(rec.values()), None) if isinstance(rec, dict) and rec else None
        else:
            rec = rec.get(part) if isinstance(rec, dict) else None
        if rec is None:
            return None
    return rec


def test_every_output_record_of_a_run_passes_its_schema(records):
    seen = 0
    for stream, name in STREAM_SCHEMAS.items():
        for rec in records.get(stream, []):
            encode(name, rec)
            seen += 1
    assert seen > 1_000


@pytest.mark.parametrize(
    ("stream", "where", "path"),
    [
        ("bars", "", "bar.extra"),
        ("signals", "bar", "signals.bar.extra"),
        ("signals", "decision", "signals.decision.extra"),
        ("calibration", "bins.[]", "calibration.bins[0].extra"),
        ("ensemble", "timeframes.[]", "ensemble.timeframes[0].extra"),
        ("health", "bandit.{}", "health.bandit[{key}].extra"),
    ],
)
def test_an_extra_field_at_any_depth_is_refused_with_its_path(records, stream, where, path):
    name = STREAM_SCHEMAS[stream]
    rec = _first(records, stream, where) if where else copy.deepcopy(records[stream][0])
    check(name, rec)
    target = _at(rec, where) if where else rec
    target["extra"] = 1
    if "{key}" in path:
        path = path.format(key=next(iter(rec["bandit"])))
    with pytest.raises(
        SchemaError,
        match=r"fields not in the schema: \['"
        + path.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
        + r"'\]",
    ):
        check(name, rec)


@pytest.mark.parametrize(
    "stream, field, value",
    [("bars", "close", "1.0"), ("orders", "qty", None), ("signals", "symbol", 7)],
)
def test_a_mistyped_or_missing_field_is_refused_with_fastavros_message(
    records, stream, field, value
):
    """`check` asks fastavro for a yes or no first and only a failing record again, for
    the message: a mistyped field is still named."""
    rec = copy.deepcopy(records[stream][0])
    check(STREAM_SCHEMAS[stream], rec)
    rec[field] = value
    with pytest.raises(SchemaError, match=rf"(?s)does not match schema .*\.{field}\b"):
        check(STREAM_SCHEMAS[stream], rec)
    del rec[field]  # fastavro's message then shows the whole record, not the field
    with pytest.raises(SchemaError, match=f"does not match schema '{STREAM_SCHEMAS[stream]}'"):
        check(STREAM_SCHEMAS[stream], rec)
