"""The JSON-lines sink's encoder (`dataflows/io.py` `to_json_line`): orjson, with the
standard library's encoder for what orjson refuses or would write as non-ASCII; one line
per record whatever it holds, and the same values as the standard library would write."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.io import JsonLinesSink, to_json_line


def _stdlib(record: Any) -> Any:
    """What the standard library makes of `record`, read back: NaN and infinity as None,
    bytes as base64 text, keys as strings."""
    if isinstance(record, float) and not math.isfinite(record):
        return None
    if isinstance(record, bytes):
        return base64.b64encode(record).decode("ascii")
    if isinstance(record, dict):
        return {json.loads(json.dumps({k: 0})).popitem()[0]: _stdlib(v) for k, v in record.items()}
    if isinstance(record, list):
        return [_stdlib(v) for v in record]
    return json.loads(json.dumps(record))


def _one_line(line: bytes) -> Any:
    assert isinstance(line, bytes) and line.isascii()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert len(line.decode("ascii").splitlines()) == 1
    return json.loads(line)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=16)
)
keys = st.text(max_size=8) | st.integers(-5, 5)
records = st.dictionaries(
    keys,
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_any_record_is_one_ascii_line_with_the_standard_library_s_values(record):
    assert _one_line(to_json_line(record)) == _stdlib(record)


def test_an_ordinary_record_is_written_by_orjson_compactly():
    record = {"symbol": "BTC-PERP", "px": 42_000.5, "ret": -3.5e-05, "ok": True, "n": None}
    line = to_json_line(record)
    assert line.startswith(b'{"symbol":"BTC-PERP","px":42000.5,')
    assert _one_line(line) == record


def test_nan_and_infinity_are_null_and_bytes_base64():
    line = to_json_line({"a": math.nan, "b": [math.inf, -math.inf], "raw": b"\x00\xff"})
    assert _one_line(line) == {"a": None, "b": [None, None], "raw": "AP8="}


def test_what_orjson_refuses_goes_through_the_standard_library():
    record = {"big": 2**70, "np": np.float64(0.25), "key": {1: "x"}}
    assert _one_line(to_json_line(record)) == {"big": 2**70, "np": 0.25, "key": {"1": "x"}}


def test_text_that_would_split_a_line_is_escaped():
    for text in ("a\u2028b", "a\u2029b", "a\x85b", "a\nb", "caf\u00e9", "lone \udc80"):
        line = to_json_line({"reason": text})
        assert _one_line(line) == {"reason": text}, text


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize("value", [_Point(1), datetime.datetime(2024, 1, 1), object()])
def test_a_value_json_has_no_form_for_is_refused_as_before(value):
    with pytest.raises(TypeError, match="cannot write"):
        to_json_line({"v": value})


def test_a_resume_truncates_its_file_back_to_the_snapshot(tmp_path):
    path = tmp_path / "bars.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n')
    part = JsonLinesSink(tmp_path, ["bars"]).build_part("sink", "bars", 8)
    part.write_batch([{"a": 3}])
    part.close()
    assert path.read_bytes() == b'{"a":1}\n{"a":3}\n'


@pytest.mark.parametrize("held", [None, b'{"a":1}\n'])
def test_a_resume_whose_file_is_shorter_than_its_snapshot_is_refused(tmp_path, held):
    """The records before the snapshot are gone (another ENSEMBLE_OUT, a deleted or cut
    file): the resume stops saying so. Before, a missing file stopped it with a bare
    FileNotFoundError, and a short one was padded with zero bytes up to the snapshot's
    offset, and the run went on and exited 0 with the records between lost."""
    path = tmp_path / "bars.jsonl"
    if held is not None:
        path.write_bytes(held)
    with pytest.raises(RuntimeError, match="the recovery snapshot continues it after 1,000 bytes"):
        JsonLinesSink(tmp_path, ["bars"]).build_part("sink", "bars", 1000)
    assert (path.read_bytes() if held is not None else None) == held
