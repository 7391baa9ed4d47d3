"""Redaction of anything secret-looking (SPEC 9), for every record that leaves the system.

One place for both shapes a secret can take: a field whose name contains key, secret,
token or password (`redact`, on dicts and lists), and the same inside free text such as
an error message, a `repr` or raw bytes (`scrub`: `name=value`, `name: value`,
`"name": "value"`, bearer tokens, and the path and query of URLs, which is where webhooks
keep their secret). `clean` does both on a record. The flow's `errors` and
`dead_letters` records, the alerts and the LLM facts all use these functions.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<REDACTED>"
_SECRET_NAME = re.compile(r"key|secret|token|password", re.IGNORECASE)
# `api_key=...`, `token: ...`, `"password": "..."`, `secret='...'` inside free text
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w.-]*(?:key|secret|token|password)[\w.-]*)([\"']?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;}\)]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")
_URL_TAIL = re.compile(r"(?i)\b(https?://[^\s/?#]+)[/?#]\S*")


def redact(value: Any) -> Any:
    """A copy with every field whose name contains key, secret, token or password redacted."""
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and _SECRET_NAME.search(k) and v is not None
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def clean(value: Any) -> Any:
    """`redact` by field name, and `scrub` every string value (reprs, messages) too."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in redact(value).items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


def scrub(text: str) -> str:
    """Free text with secret-looking values masked: `name=value` whose name looks secret,
    bearer tokens, and the path and query of URLs (the host stays, for diagnosis)."""
    text = _SECRET_ASSIGNMENT.sub(_masked, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _URL_TAIL.sub(lambda m: f"{m.group(1)}/{REDACTED}", text)


def _masked(m: re.Match[str]) -> str:
    """The name and separator kept; a quoted value stays quoted (JSON stays JSON)."""
    value = m.group(3)
    quote = value[0] if value[0] in "\"'" else ""
    return f"{m.group(1)}{m.group(2)}{quote}{REDACTED}{quote}"


def scrub_bytes(raw: bytes) -> bytes:
    """`scrub` over bytes of any encoding (latin-1 maps every byte to itself and back), so
    bytes without a secret-looking text come back unchanged."""
    text = raw.decode("latin-1")
    clean = scrub(text)
    return raw if clean == text else clean.encode("latin-1")
