"""Redaction of anything secret-looking (SPEC 9), for every record that leaves the system.

One place for every shape a secret can take: a field whose name contains key, secret,
token or password (`redact`, on dicts and lists), and the same inside free text such as an
operator's halt reason, an error message, a `repr` or raw bytes (`scrub`): `name=value`,
`name: value`, `"name": "value"`, "password is ...", bearer tokens, credentials and the
path and query of URLs (where webhooks keep their secret), bare keys by their well-known
shapes (`sk-live-...`, `sk_test_...`, AWS `AKIA...`, GitHub `ghp_...`, Slack `xoxb-...`,
Google `AIza...`, JWTs, PEM private keys, 0x-prefixed 64-hex private keys) and e-mail
addresses. `clean` does both on a record.

What is scrubbed where (docs/operations.md, "Secrets"):
- The flow's records that carry free text, on their way to Kafka or the files (`health`,
  `repro`, `errors`, `dead_letters`, `rejections`: dataflows/ensemble.py): every shape
  above. On-chain addresses stay: a trade's buyer and seller are
  market data (cohorts are built from them) and a dead letter keeps its input.
- What leaves for a third party or a person (the copilot's LLM request and printed
  answers, the alerts' Slack messages and log): every shape above and on-chain addresses
  too (`addresses=True`): an address identifies a trader, and no alert or answer needs it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

REDACTED = "<REDACTED>"
_SECRET_NAME = re.compile(r"key|secret|token|password", re.IGNORECASE)
_SECRET_WORD = r"(?:key|secret|token|password|passwd|passphrase|pwd|credential)"
# `api_key=...`, `token: ...`, `"password": "..."`, `secret='...'`, `password is ...`
# The name is a run of [\w.-] from its first word character (where `\b` put it), taken
# whole and once (an atomic group) and tried only at the start of the run: matched from
# every word boundary with backtracking, a run such as `key.key.key...` cost cubic time
# (4 KB: 67 s), and a dead letter scrubs up to 1 MiB of hostile input. The lookahead only
# asks whether a secret word is in the run.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)(?<![\w.-])([.-]*)(?=\w)(?=[\w.-]*?{_SECRET_WORD})((?>[\w.-]+))"
    r"([\"']?\s*[=:]\s*|\s+is\s+|\s+was\s+)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;}\)]+)"
)
_BEARER = re.compile(r"(?i)\b((?:bearer|basic)\s+)\S+")
_URL_CREDENTIALS = re.compile(r"(?i)\b(https?://)[^\s/?#@]+@")
_URL_TAIL = re.compile(r"(?i)\b(https?://[^\s/?#]+)[/?#]\S*")
_BARE_SECRETS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|\b(?:sk|rk|pk)[-_](?:live|test|proj|ant)[-_][\w-]{6,}"  # Stripe, OpenAI, Anthropic
    r"|\bsk-[A-Za-z0-9_-]{16,}"  # OpenAI-style secret keys
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_\w{20,}"  # GitHub
    r"|\bxox[abposr]-[\w-]{10,}"  # Slack
    r"|\bAIza[\w-]{30,}"  # Google API key
    r"|\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"  # a JWT
    r"|\b0x[0-9a-fA-F]{64}\b",  # an Ethereum private key (or a hash: not worth the risk)
    re.DOTALL,
)
# The local part likewise: tried once per run of [\w.+-] (the run's leading . + - kept, as
# `\b` kept them), not from every boundary in it (quadratic); an address glued to the end
# of one (`a@x.com+b@y.com`, where `\b` started the next) is taken with it.
_EMAIL_ONE = r"(?>(?>[\w.+-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
_EMAIL = re.compile(rf"(?<![\w.+-])([.+-]*)(?=\w){_EMAIL_ONE}+")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{40}\b")


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    """A field name containing key, secret, token or password (records reuse a few names)."""
    return _SECRET_NAME.search(name) is not None


def _hidden(name: Any, value: Any) -> bool:
    """A field redacted whole: a secret-looking name with a value."""
    return isinstance(name, str) and value is not None and _secret_name(name)


def redact(value: Any) -> Any:
    """A copy with every field whose name contains key, secret, token or password redacted."""
    if isinstance(value, dict):
        return {k: REDACTED if _hidden(k, v) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def clean(value: Any, addresses: bool = False) -> Any:
    """`redact` by field name, and `scrub` every string value (reprs, messages) too: one
    walk of the record (redacting each level again below it cost a health record
    ~0.2 ms, a sixth of a year's candle replay). Numbers are copied without a call: a
    health record is mostly numbers, and it goes out every bar."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if _hidden(k, v):
                out[k] = REDACTED
            elif type(v) in _PLAIN:
                out[k] = v
            else:
                out[k] = clean(v, addresses)
        return out
    if isinstance(value, list):
        return [clean(v, addresses) for v in value]
    if isinstance(value, str):
        return scrub(value, addresses)
    return value


_PLAIN = frozenset({int, float, bool, type(None)})  # exactly these: a str subclass is text
SHORT_TEXT = 64  # symbols, states, reasons: the same few short strings in every record


def scrub(text: str, addresses: bool = False) -> str:
    """Free text with every secret shape (module docstring) masked; with `addresses`,
    on-chain addresses too. The host of a URL stays, for diagnosis."""
    if len(text) < 8:  # `key=abc` and shorter: nothing that could be a secret
        return text
    if len(text) <= SHORT_TEXT:
        return _scrub_short(text, addresses)
    return _scrub(text, addresses)


@functools.lru_cache(maxsize=4096)
def _scrub_short(text: str, addresses: bool) -> str:
    return _scrub(text, addresses)


def _scrub(text: str, addresses: bool) -> str:
    text = _BARE_SECRETS.sub(REDACTED, text)
    text = _SECRET_ASSIGNMENT.sub(_masked, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _URL_TAIL.sub(lambda m: f"{m.group(1)}/{REDACTED}", text)
    text = _EMAIL.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    if addresses:
        text = _ADDRESS.sub(REDACTED, text)
    return text


def _masked(m: re.Match[str]) -> str:
    """The name and separator kept; a quoted value stays quoted (JSON stays JSON)."""
    lead, name, sep, value = m.groups()
    quote = value[0] if value[0] in "\"'" else ""
    return f"{lead}{name}{sep}{quote}{REDACTED}{quote}"


def scrub_bytes(raw: bytes) -> bytes:
    """`scrub` over bytes of any encoding (latin-1 maps every byte to itself and back), so
    bytes without a secret-looking text come back unchanged."""
    text = raw.decode("latin-1")
    clean = scrub(text)
    return raw if clean == text else clean.encode("latin-1")
