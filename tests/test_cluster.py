"""Running as a cluster (dataflows/cluster.py): processes started together wait for the
earlier ones to listen (Timely would otherwise wait a whole second after a refused
connection), worker threads keep their Python thread state, and the main thread parks
while the workers run."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from dataflows import cluster
from dataflows.progress import StoppableSource


def test_the_earlier_processes_on_this_machine_are_the_ones_waited_for(monkeypatch):
    for name in ("BYTEWAX_ADDRESSES", "BYTEWAX_PROCESS_ID", "BYTEWAX_POD_NAME"):
        monkeypatch.delenv(name, raising=False)
    addrs = "127.0.0.1:2101;localhost:2102;10.0.0.7:2103;127.0.0.1:2104"

    def ports(*args: str) -> list[int]:
        monkeypatch.setattr(sys, "argv", ["bytewax.run", "dataflows.ensemble", *args])
        return cluster.earlier_local_ports()

    assert ports("-i", "3", "-a", addrs) == [2101, 2102]  # 10.0.0.7: Timely's retries
    assert ports("-i", "0", "-a", addrs) == []
    assert ports("-w", "2") == []
    monkeypatch.setenv("BYTEWAX_ADDRESSES", "127.0.0.1:2201;127.0.0.1:2202")
    assert ports("-i", "1") == [2201]


@pytest.mark.skipif(cluster.listening_ports() is None, reason="no /proc/net/tcp here")
def test_waiting_ends_once_the_peer_listens_and_never_connects_to_it():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    assert port not in cluster.listening_ports()  # bound, not listening yet
    assert not cluster.wait_for_peers([port], timeout_s=0.05)
    threading.Timer(0.2, server.listen).start()
    try:
        assert cluster.wait_for_peers([port], timeout_s=20)
        assert port in cluster.listening_ports()
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):  # the wait took no connection of the peer's
            server.accept()
    finally:
        server.close()


def test_a_peer_that_never_listens_is_left_to_timely_after_the_timeout():
    start = time.monotonic()
    assert not cluster.wait_for_peers([1], timeout_s=0.1)  # port 1: nothing listens
    assert time.monotonic() - start < 10


def test_a_worker_thread_keeps_its_python_state_from_one_activation_to_the_next():
    """With two workers Bytewax runs each on a thread Python did not start; the input's
    `list_parts` holds that thread's state, so a thread-local set in one activation is
    there in the next (without it, each of the 200 one-item batches began on a new one)."""
    local = threading.local()
    fresh: list[int] = []

    def visit(x: int) -> int:
        if not hasattr(local, "seen"):
            local.seen = True
            fresh.append(threading.get_native_id())
        return x

    out: list[int] = []
    flow = Dataflow("held")
    items = op.input("in", flow, StoppableSource(TestingSource(range(200), batch_size=1)))
    op.output("out", op.map("visit", items, visit), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(out) == list(range(200))
    assert len(fresh) == 1  # the one input partition's worker, once


def _voluntary_switches(tid: int) -> int:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


@pytest.mark.skipif(
    cluster.PARK_SIGNAL is None or not Path("/proc/self/task").is_dir(),
    reason="no real-time signals or no /proc here: the main thread polls, as in Bytewax",
)
def test_the_main_thread_parks_while_the_workers_run_and_returns_when_they_end(monkeypatch):
    """Bytewax's cluster_main loop sleeps 1 ms and takes the GIL, over and over; parked,
    the main thread wakes every PARK_POLL_S instead and the run still ends on its own."""
    old = signal.getsignal(cluster.PARK_SIGNAL)
    monkeypatch.setattr(cluster, "_PARKING", False)  # what teardown puts back
    monkeypatch.setattr(cluster, "_WORKERS", {})
    entered: list[bool] = []
    real_park = cluster._park

    def park(signum, frame):
        entered.append(cluster._workers_running())
        real_park(signum, frame)

    monkeypatch.setattr(cluster, "_park", park)
    main_tid = threading.get_native_id()

    def slow(x: int) -> int:
        time.sleep(0.002)  # the GIL released, as in I/O or numpy
        return x

    out: list[int] = []
    flow = Dataflow("parked")
    items = op.input("in", flow, StoppableSource(TestingSource(range(300), batch_size=1)))
    op.output("out", op.map("slow", items, slow), TestingSink(out))
    try:
        cluster.install_parking()
        before, t0 = _voluntary_switches(main_tid), time.monotonic()
        cluster_main(flow, [], 0, worker_count_per_proc=2)
        switches = _voluntary_switches(main_tid) - before
        per_s = switches / (time.monotonic() - t0)
    finally:
        signal.signal(cluster.PARK_SIGNAL, old)
        cluster._PARKING = False
    assert sorted(out) == list(range(300))
    # one entry per worker; a second one can land inside the first's look at the workers
    assert len(cluster._WORKERS) == 2 and any(entered)
    assert not cluster._workers_running()  # both worker threads have ended
    # polling, the main thread switches out about 900 times a second; parked, about 30
    assert per_s < 200, (switches, per_s)


def test_a_worker_never_sends_the_park_signal_once_its_handler_is_gone(monkeypatch):
    """Parking left on with the handler reset (the default action would kill the
    process): the worker threads do not signal."""
    monkeypatch.setattr(cluster, "_PARKING", True)
    monkeypatch.setattr(cluster, "_WORKERS", {})
    out: list[int] = []
    flow = Dataflow("unparked")
    items = op.input("in", flow, StoppableSource(TestingSource(range(10))))
    op.output("out", items, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(out) == list(range(10)) and cluster._WORKERS == {}
