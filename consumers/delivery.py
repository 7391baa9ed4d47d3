"""Alert delivery off the reading thread: a bounded queue and one worker that posts.

The alerts consumer logs an alert the moment a rule raises it and hands the Slack text
to `QueuedSink.send`, which only enqueues: a Slack outage (a warning's post retried for
up to a minute by `consumers.slack.SlackWebhook`, a critical one's for as long as the
outage lasts) then delays delivery, never reading. When the queue is full the oldest
waiting non-critical text (if all are critical, the oldest) is dropped and logged, so
memory stays bounded and the newest alerts win.
`close` gives the worker a moment to drain, then reports what was left undelivered.

Every text gets a ticket, in order; `settled()` is the last ticket up to which every text
was delivered, given up (a warning after its minute, one Slack refuses for good) or
dropped, except that a critical one dropped from a full queue, and any left waiting at
stop, settle nothing from them on. The consumer commits a batch's offsets only once the
tickets of its alerts are settled, so such an alert is raised again from its record
after the restart.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from operators.redaction import scrub

log = logging.getLogger("ensemble.alerts.delivery")

QUEUE_MAX_ALERTS = 1000  # a day of alerts at the default rate limits, far more than Slack takes
DRAIN_TIMEOUT_S = 5.0  # at stop, how long the waiting alerts may still be posted


class Sink(Protocol):
    name: str

    def send(self, text: str, critical: bool = False) -> Any: ...


@dataclass(frozen=True)
class Queued:
    """What `send` returns: the text waits in the queue (the alert's log line says so)."""

    ticket: int
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
        self._queue: deque[tuple[int, str, bool]] = deque()  # (ticket, text, critical)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._busy: int | None = None  # the ticket being posted
        self.tickets = 0  # the last ticket given
        self._lost: int | None = None  # the first ticket not delivered that must be again
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="alerts-slack", daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> threading.Event:
        """Set at close: a sink may wait on it instead of sleeping between retries."""
        return self._stopping

    def send(self, text: str, critical: bool = False) -> Queued:
        with self._cond:
            if len(self._queue) >= self.max_alerts:
                # a warning goes first: a kill-switch or a dead flow must still reach Slack
                oldest = next((q for q in self._queue if not q[2]), self._queue[0])
                self._queue.remove(oldest)
                self.dropped += 1
                if oldest[2]:  # its records stay uncommitted: a restart raises it again
                    self._lose(oldest[0])
                log.error(
                    "%s: queue full (%d alerts waiting): the oldest waiting %s alert was "
                    "dropped undelivered (it is in the log)",
                    self.name,
                    self.max_alerts,
                    "critical" if oldest[2] else "non-critical",
                )
            self.tickets += 1
            self._queue.append((self.tickets, text, critical))
            self._cond.notify()
        return Queued(self.tickets)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy is not None else 0)

    def settled(self) -> int:
        """The last ticket up to which every text was delivered, given up or dropped (see
        the module's docstring)."""
        with self._cond:
            if self._busy is not None:
                done = self._busy - 1
            else:
                done = self._queue[0][0] - 1 if self._queue else self.tickets
            return done if self._lost is None else min(done, self._lost - 1)

    def _lose(self, ticket: int) -> None:
        self._lost = ticket if self._lost is None else min(self._lost, ticket)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set() and not self._queue:
                    return
                self._busy, text, critical = self._queue.popleft()
            try:
                result = self.sink.send(text, critical=critical)
                ok = bool(getattr(result, "ok", True))
            except Exception:  # a sink bug must not end delivery of the next alerts
                # scrubbed: an HTTP library's error may quote the webhook URL, a secret
                log.error(
                    "%s: posting an alert failed: %s", self.name, scrub(traceback.format_exc())
                )
                ok = False
            with self._cond:
                self._busy = None
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1
                self._cond.notify_all()

    def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Wait up to `timeout_s` for the queue to drain, then stop; returns how many alerts
        were left undelivered (logged)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and self._busy is None, timeout=timeout_s)
            left = len(self._queue) + (1 if self._busy is not None else 0)
            for ticket in [self._busy, *(q[0] for q in self._queue)]:
                if ticket is not None:
                    self._lose(ticket)
            self._queue.clear()
            self._stopping.set()
            self._cond.notify_all()
        if left:
            log.error(
                "%s: %d alert(s) not delivered at stop (no answer within %.0f s); they are in "
                "the log, and their records' offsets were not committed: the next start "
                "raises them again",
                self.name,
                left,
                timeout_s,
            )
        return left
