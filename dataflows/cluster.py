"""Running as a cluster (`python -m bytewax.run ... -w N` or `-i N -a ADDRESSES`).

Starting several processes together: Timely (Bytewax's engine) has process N connect to
every process before it in the address list; a connection refused (the peer is still
importing the flow) costs a whole second before the next try. Processes started together
nearly always hit that: a two-process replay spent a second of its four waiting. So before
a process hands its flow to Bytewax, it waits until every earlier process on this machine
is listening on its port, read from the kernel's socket table (`/proc/net/tcp*`): a test
connection would take the peer's one accept for a real process. A peer on another
machine, or no socket table (not Linux), is left to Timely's retries, as is a peer still
not listening after `PEER_WAIT_S`.

Running: each worker thread keeps its Python thread state (`hold_thread_state`), and the
main thread waits for the workers without taking the GIL a thousand times a second
(`install_parking`). Both were costs of Bytewax's cluster path that a one-worker run
does not pay.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from pathlib import Path
from typing import Any

PEER_WAIT_S = 30.0  # then Timely retries, once a second, for as long as it takes
POLL_S = 0.005
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0"})
SOCKET_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"  # the kernel's code for a listening socket


def earlier_local_ports() -> list[int]:
    """The ports of the processes before this one on this machine, from Bytewax's own
    reading of this process's command line (`-i/-a`, or the BYTEWAX_* variables and the
    pod name and host file of its Kubernetes chart). Only for `python -m bytewax.run`,
    which has read the same command line without error."""
    from bytewax.run import _parse_args  # what `python -m bytewax.run` runs on sys.argv

    args = _parse_args()
    if args.process_id is None or not args.addresses:
        return []
    ports = []
    for address in args.addresses.split(";")[: args.process_id]:
        host, _, port = address.strip().rpartition(":")
        if host in LOOPBACK and port.isdigit():
            ports.append(int(port))
    return ports


def listening_ports() -> set[int] | None:
    """The local TCP ports in the LISTEN state; None where there is no socket table."""
    ports: set[int] = set()
    found = False
    for table in SOCKET_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == LISTEN:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports if found else None


def wait_for_peers(ports: list[int], timeout_s: float = PEER_WAIT_S) -> bool:
    """Wait until something listens on each of `ports`; False if not within `timeout_s`
    (or if this machine has no socket table to read)."""
    deadline = time.monotonic() + timeout_s
    while True:
        listening = listening_ports()
        if listening is None:
            return False
        if listening.issuperset(ports):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


# -- the worker thread's Python state ----------------------------------------------------------
_STATE = threading.local()  # lives as long as the thread state it belongs to


def hold_thread_state() -> None:
    """Keep this thread's Python thread state for the rest of the process.

    With `-w`, `-i` or `-a`, Bytewax runs each worker on a thread Python did not start,
    and takes the GIL for every operator activation with `PyGILState_Ensure`, which on
    such a thread makes a new thread state and deletes it again at the matching release.
    So every activation started on a fresh state: about 33 µs each (a minimal flow of
    20,000 one-item batches took 1.08 s against 0.35 s on one worker), and
    `threading.local` values, the `decimal` context and the like lived for one activation
    only. One more `PyGILState_Ensure`, never released, keeps the count above zero, so
    the releases only hand the GIL back and the state stays, as it does for a thread
    Python started (and for `run_main`, which runs on the main thread). Called on the
    worker thread while the flow is built (the input's `list_parts` runs on every
    worker); a thread state already held is left as it is. The state is never deleted:
    one per worker thread, freed when the interpreter exits. A worker thread of a main
    job with parking installed also asks the main thread to park (`install_parking`).
    """
    if getattr(_STATE, "held", False):
        return
    ctypes.pythonapi.PyGILState_Ensure()  # a PyDLL call: runs with the GIL held
    _STATE.held = True
    main = threading.main_thread()
    if PARK_SIGNAL is None or not _PARKING or threading.get_native_id() == main.native_id:
        return
    if not callable(signal.getsignal(PARK_SIGNAL)):  # reset since: the default would kill
        return
    tid = threading.get_native_id()
    started = _start_time(tid)
    if started is not None:
        _WORKERS[tid] = started
        signal.pthread_kill(main.ident, PARK_SIGNAL)  # type: ignore[arg-type]


# -- the main thread, parked while the workers run -------------------------------------------
# Bytewax's `cluster_main` (every run with `-w`, `-i` or `-a`) waits for its worker threads
# in a loop on the main thread: sleep 1 ms, take the GIL, check for signals. Taking the
# GIL from the worker a thousand times a second costs that worker 5-8%
# (docs/benchmarks.md, "Two costs of Bytewax's cluster path": the same one-worker run as
# a cluster, 3.04 s against 2.90 s for `run_main`, and 2.81 s with the loop's sleep made
# 100 ms). The only Python code that loop runs is a signal handler, so the first worker
# thread sends the main thread PARK_SIGNAL, whose handler waits there, the GIL released,
# until every worker thread has ended. Other signals still run their handlers inside it
# (SIGINT/SIGTERM: dataflows/progress.py), and an exception they raise leaves it, as it
# would leave Bytewax's loop. This assumes what `python -m bytewax.run` does:
# `cluster_main` called on the main thread, which does nothing else until it returns. A
# main thread with other work to do while the workers run would stop doing it.
# Linux: glibc keeps the real-time signals below SIGRTMIN, Python uses none of them
PARK_SIGNAL: int | None = getattr(signal, "SIGRTMIN", None)
PARK_POLL_S = 0.05  # how often the parked main thread looks at the workers
_WORKERS: dict[int, str] = {}  # worker thread id -> its start time (a reused id is not it)
_PARKING = False


def install_parking() -> None:
    """Let the worker threads park the main thread (the main job, on the main thread,
    before Bytewax starts; only where threads can be seen in /proc)."""
    global _PARKING
    if PARK_SIGNAL is None or _start_time(threading.get_native_id()) is None:
        return
    signal.signal(PARK_SIGNAL, _park)
    _PARKING = True


def _start_time(tid: int) -> str | None:
    """The thread's start time in clock ticks since boot (field 22 of its stat), None if
    there is no such thread."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # the fields after the name start at 3


def _workers_running() -> bool:
    return any(_start_time(tid) == started for tid, started in list(_WORKERS.items()))


def _park(_signum: int, _frame: Any) -> None:
    while _workers_running():
        time.sleep(PARK_POLL_S)
