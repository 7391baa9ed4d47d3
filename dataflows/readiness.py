"""Readiness of a Kafka-fed flow: `GET /ready` on ENSEMBLE_READY_PORT (default 3031).

Bytewax's API server answers `/metrics` whatever the broker does, so a probe on it stays
green through an outage. `/ready` answers 200 only while the broker answers, every input
topic exists and the input makes progress: messages waiting on a partition while nothing
was read from it for `stall_s` seconds (default 120) means not ready (503, with the reason
and the partitions), even while the other partitions are read: one frozen partition holds
every symbol's bars back.
Checked every `interval_s` seconds in a background thread, with the flow's own client
settings; the first check runs at start.

"Waiting" counts only the partitions this process reads (`reading`, called as the flow
opens each one), from where it started reading them: a resumed flow's snapshot offset,
not the start of the partition (records read before a restart are not waiting), and
never another process's partitions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger("ensemble.readiness")


class Readiness:
    def __init__(
        self,
        config: dict[str, Any],
        topics: Iterable[str],
        stall_s: float = 120.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.config = config
        self.topics = sorted(topics)
        self.stall_s = stall_s
        self.clock = clock
        self.next_offset: dict[tuple[str, int], int] = {}
        self.reads: set[tuple[str, int]] = set()  # the partitions this process reads
        self.read_s: dict[tuple[str, int], float] = {}  # when each was opened or last read
        self.waiting_since: dict[tuple[str, int], float] = {}  # first check it had a backlog
        self.ready, self.reason = False, "not checked yet"
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None

    def reading(self, topic: str, partition: int, offset: int | None) -> None:
        """This process reads `partition` of `topic` from `offset` (None or a logical
        offset: its first kept record); called as the flow opens the partition."""
        with self._lock:
            self.reads.add((topic, partition))
            self.read_s[(topic, partition)] = self.clock()
            if offset is not None and offset >= 0:
                self.next_offset[(topic, partition)] = offset

    def saw(self, topic: str | None, partition: int | None, offset: int | None) -> None:
        """The flow read this message (called from the `from_kafka` step)."""
        now = self.clock()
        if topic is not None and partition is not None and offset is not None and offset >= 0:
            with self._lock:
                self.reads.add((topic, partition))
                self.read_s[(topic, partition)] = now
                self.next_offset[(topic, partition)] = offset + 1

    def check(self) -> tuple[bool, str]:
        """Ask the broker: topics there, and either caught up or reading."""
        if self._consumer is None:
            self._consumer = Consumer({**self.config, "enable.auto.commit": False})
        c = self._consumer
        try:
            md = c.list_topics(timeout=5)
            missing = [t for t in self.topics if t not in md.topics or md.topics[t].error]
            if missing:
                return self._set(False, f"input topics missing: {missing}")
            with self._lock:
                reads = sorted(self.reads)
                next_offset = dict(self.next_offset)
            if not reads:
                # none yet at start, or none at all: a process of a cluster with more
                # workers than input partitions reads none, and is healthy
                return self._set(True, "ok: broker answers; this process reads no input partition")
            backlog: dict[tuple[str, int], int] = {}
            for t, p in reads:
                if p not in md.topics[t].partitions:
                    continue
                lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=5, cached=False)
                backlog[(t, p)] = max(0, hi - max(lo, next_offset.get((t, p), lo)))
        except KafkaException as e:
            return self._set(False, f"broker unreachable: {e.args[0].str()}")
        now = self.clock()
        stalled: dict[tuple[str, int], float] = {}  # partition -> seconds without a read
        with self._lock:
            for tp, n in backlog.items():
                if not n:
                    self.waiting_since.pop(tp, None)
                    continue
                # since the later of its last read and the first check that saw it behind:
                # a record that arrived just before this check is not a stall
                since = self.waiting_since.setdefault(tp, now)
                idle_s = now - max(since, self.read_s.get(tp, since))
                if idle_s > self.stall_s:
                    stalled[tp] = idle_s
        waiting = sum(backlog.values())
        if stalled:
            parts = ", ".join(f"{t}[{p}]" for t, p in sorted(stalled))
            return self._set(
                False,
                f"no input read for {min(stalled.values()):.0f} s from {parts} with "
                f"{sum(backlog[tp] for tp in stalled)} messages waiting",
            )
        return self._set(True, f"ok: broker answers, {waiting} input messages waiting")

    def _set(self, ready: bool, reason: str) -> tuple[bool, str]:
        with self._lock:
            if ready != self.ready:
                log.log(logging.INFO if ready else logging.WARNING, "readiness: %s", reason)
            self.ready, self.reason = ready, reason
        return ready, reason

    def status(self) -> tuple[bool, str]:
        with self._lock:
            return self.ready, self.reason


def serve(readiness: Readiness, port: int, interval_s: float = 5.0) -> ThreadingHTTPServer:
    """Check every `interval_s` and answer `/ready` on 0.0.0.0:port, both in daemon threads."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/ready":
                self.send_error(404)
                return
            ready, reason = readiness.status()
            body = (reason + "\n").encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # probes every few seconds: not logged
            pass

    def loop() -> None:
        while True:
            try:
                readiness.check()
            except Exception as e:  # a failed check means not ready, never a dead thread
                readiness._set(False, f"check failed: {e}")
            time.sleep(interval_s)

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="ensemble-ready", daemon=True).start()
    threading.Thread(target=loop, name="ensemble-ready-check", daemon=True).start()
    return server
