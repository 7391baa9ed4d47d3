"""Alert delivery off the reading thread: a bounded queue and one worker that posts.

The alerts consumer logs an alert the moment a rule raises it and hands the Slack text
to `QueuedSink.send`, which only enqueues: a Slack outage (each post retried for up to a
minute by `consumers.slack.SlackWebhook`) then delays delivery, never reading. When the
queue is full the oldest waiting text is dropped and logged, so memory stays bounded and
the newest alerts win. `close` gives the worker a moment to drain, then reports what was
left undelivered.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("ensemble.alerts.delivery")

QUEUE_MAX_ALERTS = 1000  # a day of alerts at the default rate limits, far more than Slack takes
DRAIN_TIMEOUT_S = 5.0  # at stop, how long the waiting alerts may still be posted


class Sink(Protocol):
    name: str

    def send(self, text: str) -> Any: ...


@dataclass(frozen=True)
class Queued:
    """What `send` returns: the text waits in the queue (the alert's log line says so)."""

    ok: bool = True
    outcome: str = "queued"


class QueuedSink:
    """`send` enqueues; a daemon thread posts each text through `sink` in order."""

    def __init__(
        self, sink: Sink, max_alerts: int = QUEUE_MAX_ALERTS, name: str | None = None
    ) -> None:
        if max_alerts < 1:
            raise ValueError(f"max_alerts={max_alerts!r} must be >= 1")
        self.sink = sink
        self.name = name or sink.name
        self.max_alerts = max_alerts
        self._queue: deque[str] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._busy = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="alerts-slack", daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> threading.Event:
        """Set at close: a sink may wait on it instead of sleeping between retries."""
        return self._stopping

    def send(self, text: str) -> Queued:
        with self._cond:
            if len(self._queue) >= self.max_alerts:
                self._queue.popleft()
                self.dropped += 1
                log.error(
                    "%s: queue full (%d alerts waiting): the oldest waiting alert was dropped "
                    "undelivered (it is in the log)",
                    self.name,
                    self.max_alerts,
                )
            self._queue.append(text)
            self._cond.notify()
        return Queued()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set() and not self._queue:
                    return
                text = self._queue.popleft()
                self._busy = True
            try:
                result = self.sink.send(text)
                ok = bool(getattr(result, "ok", True))
            except Exception:  # a sink bug must not end delivery of the next alerts
                log.exception("%s: posting an alert failed", self.name)
                ok = False
            with self._cond:
                self._busy = False
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1
                self._cond.notify_all()

    def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Wait up to `timeout_s` for the queue to drain, then stop; returns how many alerts
        were left undelivered (logged)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy, timeout=timeout_s)
            left = len(self._queue) + (1 if self._busy else 0)
            self._queue.clear()
            self._stopping.set()
            self._cond.notify_all()
        if left:
            log.error(
                "%s: %d alert(s) not delivered at stop (no answer within %.0f s); they are in "
                "the log",
                self.name,
                left,
                timeout_s,
            )
        return left
