"""Avro codec over fastavro: one schema per message type, in this directory.

`encode` validates strictly first (a missing, extra or mistyped field raises
`SchemaError` naming it), so a record that drifts from its schema fails loudly in tests
and never reaches the wire. `decode` is the inverse, for schemaless (PlainAvro) bytes as
Bytewax's PlainAvro serde writes them.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

SCHEMA_DIR = Path(__file__).resolve().parent

# Output stream -> schema name. Inputs are listed in operators.events.PARSERS.
STREAM_SCHEMAS = {
    "bars": "bar",
    "orders": "order_intent",
    "executions": "execution",
    "rejections": "rejection",
    "signals": "signals",
    "ensemble": "ensemble",
    "health": "health",
    "costs": "costs",
    "calibration": "calibration",
    "repro": "repro",
    "errors": "error",
    "dead_letters": "dead_letter",
}


class SchemaError(ValueError):
    """A record does not match its schema, or bytes do not decode with it."""


def schema_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))


@cache
def schema(name: str) -> Any:
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.is_file():
        raise SchemaError(f"no schema {name!r}; known: {schema_names()}")
    return fastavro.parse_schema(json.loads(path.read_text()))


@cache
def _raw(name: str) -> Any:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def check(name: str, record: dict[str, Any]) -> None:
    """Missing, mistyped and (which fastavro does not check) extra fields all raise."""
    try:
        validate(record, schema(name), raise_errors=True, strict=True)
    except ValidationError as e:
        raise SchemaError(f"record does not match schema {name!r}: {e}") from None
    extra = _extra_fields(record, _raw(name), name)
    if extra:
        raise SchemaError(
            f"record does not match schema {name!r}: fields not in the schema: {extra}"
        )


def _extra_fields(value: Any, sch: Any, path: str) -> list[str]:
    if isinstance(sch, list):  # a union: check against the record branch, if any
        return next(
            (
                _extra_fields(value, b, path)
                for b in sch
                if isinstance(b, dict) and b.get("type") == "record" and isinstance(value, dict)
            ),
            [],
        )
    if not isinstance(sch, dict):
        return []
    kind = sch.get("type")
    if kind == "record" and isinstance(value, dict):
        fields = {f["name"]: f["type"] for f in sch["fields"]}
        found = [f"{path}.{k}" for k in value if k not in fields]
        for k, t in fields.items():
            if k in value:
                found += _extra_fields(value[k], t, f"{path}.{k}")
        return found
    if kind == "array" and isinstance(value, list):
        return [
            x for i, v in enumerate(value) for x in _extra_fields(v, sch["items"], f"{path}[{i}]")
        ]
    if kind == "map" and isinstance(value, dict):
        return [
            x for k, v in value.items() for x in _extra_fields(v, sch["values"], f"{path}[{k}]")
        ]
    if isinstance(kind, (dict, list)):
        return _extra_fields(value, kind, path)
    return []


def with_defaults(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record with every absent field that has a schema default filled in."""
    out = dict(record)
    for f in _raw(name)["fields"]:
        if f["name"] not in out and "default" in f:
            out[f["name"]] = f["default"]
    return out


def encode(name: str, record: dict[str, Any]) -> bytes:
    check(name, record)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema(name), record)
    return buf.getvalue()


def decode(name: str, payload: bytes) -> dict[str, Any]:
    buf = io.BytesIO(payload)
    try:
        rec = fastavro.schemaless_reader(buf, schema(name), None)
    except Exception as e:  # fastavro raises many types on garbage bytes
        raise SchemaError(f"bytes do not decode as {name!r}: {type(e).__name__}: {e}") from None
    if buf.tell() != len(payload):
        raise SchemaError(
            f"bytes do not decode as {name!r}: {len(payload) - buf.tell()} trailing bytes"
        )
    return rec
