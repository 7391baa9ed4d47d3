"""An OpenAI-compatible chat-completions client, and what may be sent to it.

Endpoint from the environment: ENSEMBLE_LLM_BASE_URL (e.g. https://api.openai.com/v1 or a
local server's http://127.0.0.1:8000/v1), ENSEMBLE_LLM_MODEL, ENSEMBLE_LLM_API_KEY
(optional; sent as `Authorization: Bearer ...`, never logged), ENSEMBLE_LLM_TIMEOUT_S.
The request is `POST {base}/chat/completions` with `model`, `messages` and
`temperature: 0`; the answer is `choices[0].message.content`.

Only facts pass: `sanitize` keeps the allow-listed field names (everything else, at any
depth, is dropped), then redacts any field whose name contains key, secret, token or
password and masks secret-looking values, e-mails and on-chain addresses in every string
(operators/redaction.py), as the flow's own telemetry does.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from consumers.facts import FEATURES_SHOWN
from consumers.slack import _loopback
from operators.redaction import REDACTED, clean, scrub

log = logging.getLogger("ensemble.copilot.llm")

ENV_BASE_URL = "ENSEMBLE_LLM_BASE_URL"
ENV_MODEL = "ENSEMBLE_LLM_MODEL"
ENV_API_KEY = "ENSEMBLE_LLM_API_KEY"
ENV_TIMEOUT = "ENSEMBLE_LLM_TIMEOUT_S"

SYSTEM_PROMPT = (
    "You are the Ensemble trading copilot for a quant, an operations engineer and a "
    "portfolio manager. Ensemble paper-trades crypto perpetual futures. Answer ONLY from "
    "the facts in the JSON you are given: do not use outside knowledge, do not guess, do "
    "not invent numbers, times or reasons. If the facts do not answer the question, say "
    "which fact is missing. Quote the numbers you rely on. Times are UTC. Keep it to one "
    "short paragraph of plain language."
)

# Field names that may reach the model. Anything else is dropped, at any depth.
ALLOWED_KEYS = frozenset(
    {
        # envelope and the question
        "kind",
        "question",
        "asked_time_utc",
        "date",
        "strategy_id",
        "symbol",
        "symbols",
        "note",
        "premise",
        "dry_run",
        # daily summary
        "open_at_end",
        "unrealized_usd",
        "bars",
        "missing_bars",
        "decisions",
        "entries",
        "round_trips",
        "wins",
        "losses",
        "win_rate",
        "pnl_usd",
        "fees_usd",
        "equity_start_usd",
        "equity_end_usd",
        "max_drawdown_day",
        "end_state",
        "end_status",
        "entries_by_arm",
        "rejections_by_reason",
        "notable_losses",
        "best_trade",
        "kill_switch_events",
        "operator_commands",
        "errors",
        "errors_by_stage",
        "dead_letters",
        "records_set_aside",
        "event",
        "command",
        "reason",
        # a round trip
        "opened_utc",
        "closed_utc",
        "side",
        "arm",
        "confidence",
        "prob_side_traded",
        "closed_by",
        "held_bars",
        # a decision
        "decision",
        "time_utc",
        "action",
        "chosen_arm",
        "eligible_arms",
        "ineligible_arms",
        "bandit_samples_bps",
        "direction",
        "alpha",
        "conf_min",
        "target_position",
        "vol_scale",
        "shadow_would_veto",
        "exit",
        "trading_state",
        "shadow_mode",
        "model",
        "p_up",
        "p_down",
        "conf",
        "s_model_meta",
        "s_model_bma",
        "cohort",
        "size_proxy",  # the trade-size cohort proxy (operators/size_proxy.py)
        "top_group",
        "large_min_usd",
        "s_top",
        "s_bot",
        "s_mood",
        "stale",
        "missing",
        "features",
        *FEATURES_SHOWN,  # the features the facts carry are the ones allowed out
        "overlays",
        "timeframe",
        "trend",
        "ext_signal",
        "ext_confidence",
        "agreeing_overlays",
        "usable_overlays",
        "thresholds",
        "S_MIN",
        "CONF_MIN",
        "ALPHA_MIN",
        "low_conf_veto",
        "low_conf_min",
        "consensus_gate",
        "consensus_trend_min",
        "dynamic_conf_min",
        "pos_max",
        "sigma_target",
        "vol_guard",
        "max_hold_bars",
        "order",
        "qty",
        "notional_usd",
        "purpose",
        "position_before",
        "execution",
        "status",
        "fill_px",
        "ref_px",
        "slippage_bps",
        "fee_usd",
        "rejections",
        "stage",
        "detail",
        "risk",
        "equity_usd",
        "drawdown",
        "max_drawdown",
        "consecutive_losses",
        "halt_reason",
        "strategy_status",
        "position_qty",
        "outcome",
        "won",
        "exit_px",
        "opened_by",
        "nearby_trades",
        # a halt (consumers/halts.py)
        "halt",
        "kill_switch",
        "resumed_utc",
        "flattened_utc",
        "limits",
        "max_drawdown_limit",
        "daily_loss_limit",
        "max_consecutive_losses",
        "losing_trades",
        "count",
        "bps",
    }
)


class LLMError(RuntimeError):
    """The endpoint did not give an answer (the message never holds the key)."""


def allow_listed(value: Any, allowed: frozenset[str] = ALLOWED_KEYS) -> Any:
    if isinstance(value, Mapping):
        return {k: allow_listed(v, allowed) for k, v in value.items() if k in allowed}
    if isinstance(value, list):
        return [allow_listed(v, allowed) for v in value]
    return value


def sanitize(facts: Mapping[str, Any], allowed: frozenset[str] = ALLOWED_KEYS) -> dict[str, Any]:
    """Only allow-listed fields; secret-looking names redacted even if allow-listed, and
    secret-looking values (a key in an operator's halt reason, an e-mail, a trader's
    address) masked: the allow-list filters names, never values."""
    return clean(allow_listed(facts, allowed), addresses=True)


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0

    def __repr__(self) -> str:
        key = "<REDACTED>" if self.api_key else None
        return f"LLMConfig(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LLMConfig | None:
        """None without ENSEMBLE_LLM_BASE_URL; a bad value raises ValueError naming it."""
        base = env.get(ENV_BASE_URL, "").strip().rstrip("/")
        if not base:
            return None
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{ENV_BASE_URL}={base!r} must be an http(s) URL such as .../v1")
        if parts.username or parts.password:
            raise ValueError(f"{ENV_BASE_URL} must not carry credentials; use {ENV_API_KEY}")
        model = env.get(ENV_MODEL, "").strip()
        if not model:
            raise ValueError(f"{ENV_MODEL} is empty: name the model to ask at {ENV_BASE_URL}")
        raw_timeout = env.get(ENV_TIMEOUT, "60")
        try:
            timeout = float(raw_timeout)
            if not timeout > 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{ENV_TIMEOUT}={raw_timeout!r} must be seconds > 0") from None
        key = env.get(ENV_API_KEY, "").strip() or None
        if key and parts.scheme == "http" and not _loopback(parts.hostname or ""):
            raise ValueError(
                f"{ENV_BASE_URL}={base!r} is plain http to another host: the API key would "
                "travel in clear text; use https (http is accepted on loopback only)"
            )
        return cls(base, model, key, timeout)


def messages(facts: Mapping[str, Any], question: str) -> list[dict[str, str]]:
    body = json.dumps(sanitize(facts), indent=1, sort_keys=True, allow_nan=False)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f"Facts (JSON):\n{body}\n\nQuestion: {question}\n"
            "Answer from these facts only.",
        },
    ]


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points: refuse it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        raise urllib.error.HTTPError(
            req.full_url, code, f"redirect to {urlsplit(newurl).netloc} refused", headers, fp
        )


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirect)


def complete(cfg: LLMConfig, facts: Mapping[str, Any], question: str) -> str:
    """The model's answer to `question` over the sanitized `facts`."""
    payload = {"model": cfg.model, "messages": messages(facts, question), "temperature": 0}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    req = urllib.request.Request(
        f"{cfg.base_url}/chat/completions",
        data=json.dumps(payload).encode("utf-8"),
        headers=headers,
        method="POST",
    )
    try:
        with _NO_REDIRECTS.open(req, timeout=cfg.timeout_s) as resp:
            raw = _read_answer(cfg, resp, time.monotonic() + cfg.timeout_s)
    except urllib.error.HTTPError as e:
        body = _quoted(cfg, e.read(64 * 1024).decode("utf-8", "replace"))[:300].strip()
        raise LLMError(f"{cfg.host} answered HTTP {e.code}: {body or e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LLMError(f"cannot reach {cfg.host}: {type(e).__name__}: {reason}") from None
    try:
        answer = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        quoted = _quoted(cfg, raw.decode("utf-8", "replace"))[:200]
        raise LLMError(
            f"{cfg.host} did not answer in the chat-completions format: {quoted!r}"
        ) from None
    if not isinstance(answer, str) or not answer.strip():
        raise LLMError(f"{cfg.host} returned an empty answer")
    return answer.strip()


MAX_ANSWER_BYTES = 4 << 20  # a chat completion is kilobytes; past this, something else answers


def _read_answer(cfg: LLMConfig, resp: Any, deadline: float) -> bytes:
    """The answer's body, whole within `deadline` (the socket's timeout bounds each read
    only: an endpoint trickling a byte at a time would hold the copilot for ever) and
    within MAX_ANSWER_BYTES; LLMError otherwise."""
    parts: list[bytes] = []
    size = 0
    while chunk := resp.read1(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise LLMError(f"{cfg.host} answered more than {MAX_ANSWER_BYTES >> 20} MiB")
        if time.monotonic() > deadline:
            raise LLMError(f"{cfg.host} did not finish answering within {cfg.timeout_s:g} s")
        parts.append(chunk)
    return b"".join(parts)


def _quoted(cfg: LLMConfig, text: str) -> str:
    """What the endpoint answered, fit for an error message: an endpoint may quote the key
    back ("invalid api key ..."), whatever its shape, so the key itself is masked (before
    any cut, which could leave a part of it), then every secret shape (`scrub`)."""
    if cfg.api_key:
        text = text.replace(cfg.api_key, REDACTED)
    return scrub(text)
