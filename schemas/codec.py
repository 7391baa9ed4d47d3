"""Avro codec over fastavro: one schema per message type, in this directory.

`encode` validates strictly first (a missing, extra or mistyped field raises
`SchemaError` naming it), so a record that drifts from its schema fails loudly in tests
and never reaches the wire. `decode` is the inverse, for schemaless (PlainAvro) bytes as
Bytewax's PlainAvro serde writes them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
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
    """Missing, mistyped and (which fastavro does not check) extra fields all raise.

    fastavro is asked for a yes or no first: asked to raise, it raises and formats (as
    JSON) an error for every union branch a value is not, such as the null of every
    optional field that has a value, before trying the next, which made a decision
    record's check cost about 40 µs. Only a record that fails is checked again, for
    the message."""
    if not validate(record, schema(name), raise_errors=False, strict=True):
        try:
            validate(record, schema(name), raise_errors=True, strict=True)
        except ValidationError as e:
            raise SchemaError(f"record does not match schema {name!r}: {e}") from None
        raise SchemaError(f"record does not match schema {name!r}")
    extras = _extras(name)
    extra = [] if extras is None else extras(record, name)
    if extra:
        raise SchemaError(
            f"record does not match schema {name!r}: fields not in the schema: {extra}"
        )


Extras = Callable[[Any, str], list[str]]  # (value, its path) -> the paths of extra fields


@cache
def _extras(name: str) -> Extras | None:
    """The extra-field check of a schema, built once: it walks only the records, arrays
    and maps a record can hold (None: nothing under this type can have fields)."""
    return _compile(_raw(name))


def _compile(sch: Any) -> Extras | None:
    if isinstance(sch, list):  # a union: a dict value is checked against its record branch
        return next(
            (_compile(b) for b in sch if isinstance(b, dict) and b.get("type") == "record"), None
        )
    if not isinstance(sch, dict):
        return None
    kind = sch.get("type")
    if kind == "record":
        return _record(sch)
    if kind in ("array", "map"):
        inner = _compile(sch["items" if kind == "array" else "values"])
        return None if inner is None else _container(kind, inner)
    if isinstance(kind, (dict, list)):
        return _compile(kind)
    return None


def _record(sch: dict[str, Any]) -> Extras:
    names = frozenset(f["name"] for f in sch["fields"])
    inner = [(f["name"], c) for f in sch["fields"] if (c := _compile(f["type"])) is not None]

    def extras(value: Any, path: str) -> list[str]:
        if not isinstance(value, dict):
            return []
        found = [] if value.keys() <= names else [f"{path}.{k}" for k in value if k not in names]
        for k, check_inner in inner:
            if k in value:
                found += check_inner(value[k], f"{path}.{k}")
        return found

    return extras


def _container(kind: str, inner: Extras) -> Extras:
    def extras(value: Any, path: str) -> list[str]:
        if kind == "array" and isinstance(value, list):
            return [x for i, v in enumerate(value) for x in inner(v, f"{path}[{i}]")]
        if kind == "map" and isinstance(value, dict):
            return [x for k, v in value.items() for x in inner(v, f"{path}[{k}]")]
        return []

    return extras


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
