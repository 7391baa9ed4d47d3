"""What every emitted record carries; dead letters keep their input, secrets redacted.

Every record has `symbol`, `ts_event_ms` (when it happened in the market), `ts_init_ms`
(when we created it: wall clock in live runs; equal to ts_event_ms in replays, so a
replay is byte-for-byte reproducible), `strategy_id` and `schema_version`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from operators.redaction import clean, scrub, scrub_bytes

SCHEMA_VERSION = "v1"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """The clock a live run reads: now in epoch ms, and when (a datetime, as Bytewax's
    `notify_at` takes) it will show a given ms. A paced replay can run the flow on a clock
    that goes faster (bench/bench_latency.py); Kafka input needs this one."""

    def now_ms(self) -> int:
        return wall_clock_ms()

    def wake_at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)


WALL_CLOCK = Clock()


class Stamp:
    """Builds record envelopes for one strategy; `clock=None` means replay (event) time."""

    def __init__(self, strategy_id: str, clock: Callable[[], int] | None = None) -> None:
        self.strategy_id = strategy_id
        self.clock = clock

    def __call__(self, symbol: str, ts_event_ms: int, **fields: Any) -> dict[str, Any]:
        rec = {
            "symbol": symbol,
            "ts_event_ms": ts_event_ms,
            "ts_init_ms": ts_event_ms if self.clock is None else self.clock(),
            "strategy_id": self.strategy_id,
            "schema_version": SCHEMA_VERSION,
        }
        rec.update(fields)
        return rec


# A dead letter keeps at most this much of the original payload (plus its length and
# sha256), far under the topics' and producer's MAX_MESSAGE_BYTES (dataflows/topics.py).
MAX_DEAD_LETTER_PAYLOAD_BYTES = 65_536
MAX_DEAD_LETTER_REASON_CHARS = 2_000


def dead_letter(
    stamp: Stamp,
    stream: str,
    payload: Any,
    reason: str,
    *,
    symbol: str | None = None,
    ts_event_ms: int | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    """A dead-letter record keeping the original bytes (a record dict is kept as JSON), with
    secret-looking fields and text redacted (SPEC 9); the reason then says so."""
    if isinstance(payload, (bytes, bytearray)):
        raw = scrub_bytes(bytes(payload))
        if raw != payload:
            reason = f"{reason} (secret-looking text in the payload redacted)"
    else:
        raw = json.dumps(clean(payload), sort_keys=True, default=repr).encode()
    if symbol is None and isinstance(payload, dict) and isinstance(payload.get("symbol"), str):
        symbol = payload["symbol"]
    if ts_event_ms is None and isinstance(payload, dict):
        ts = payload.get("ts_event_ms")
        ts_event_ms = ts if isinstance(ts, int) and not isinstance(ts, bool) else None
    now = stamp.clock() if stamp.clock is not None else (ts_event_ms or 0)
    digest = hashlib.sha256(raw).hexdigest()
    return {
        "symbol": symbol,
        "ts_event_ms": ts_event_ms,
        "ts_init_ms": now,
        "strategy_id": stamp.strategy_id,
        "schema_version": SCHEMA_VERSION,
        "source_stream": stream,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "reason": scrub(reason)[:MAX_DEAD_LETTER_REASON_CHARS],
        # a poison pill must not make a dead letter the producer or topic refuses
        "payload": raw[:MAX_DEAD_LETTER_PAYLOAD_BYTES],
        "payload_bytes": len(raw),
        "payload_sha256": digest,
        "payload_truncated": len(raw) > MAX_DEAD_LETTER_PAYLOAD_BYTES,
    }


def record_key(stream: str, record: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of an output record, for at-least-once delivery.

    After a crash the flow replays from its last snapshot and may publish a record a second
    time; the copy is identical and has the same key. Orders, executions and costs are
    identified by the order's own id (strategy:symbol:bar close, plus :purpose for an
    exit), signals by the bar's decision id; a decision can have a gate or risk rejection
    and an order of its own can later be rejected at execution, so rejections add stage
    and reason. Other records by (strategy, symbol, event time) and what tells them apart.
    """
    sid, sym, ts = record.get("strategy_id"), record.get("symbol"), record.get("ts_event_ms")
    if stream in ("orders", "executions", "costs"):
        return (stream, record["decision_id"])
    if stream == "signals":
        return (stream, record["decision"]["decision_id"])
    if stream == "rejections":
        return (stream, record["decision_id"], record["stage"], record["reason"])
    if stream == "bars":
        return (stream, sid, sym, record["timeframe"], ts)
    if stream == "repro":
        cmd = record.get("command") or {}
        return (stream, sid, sym, ts, record["event"], cmd.get("command_id"))
    if stream == "errors":
        return (stream, sid, sym, ts, record["stage"], record["error_type"], record["message"])
    if stream == "dead_letters":
        if record.get("source_offset") is not None:
            where = (record["source_topic"], record["source_partition"], record["source_offset"])
            return (stream, *where)
        payload = record.get("payload")
        raw = payload if isinstance(payload, bytes) else repr(payload).encode()
        return (stream, sid, sym, ts, record["reason"], hashlib.sha256(raw).hexdigest())
    return (stream, sid, sym, ts)  # health, ensemble, calibration: one per symbol and bar
