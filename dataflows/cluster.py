"""Starting several processes together (`python -m bytewax.run ... -i N -a ADDRESSES`).

Timely (Bytewax's engine) has process N connect to every process before it in the address
list; a connection refused (the peer is still importing the flow) costs a whole second
before the next try. Processes started together nearly always hit that: a two-process
replay spent a second of its four waiting. So before a process hands its flow to Bytewax,
it waits until every earlier process on this machine is listening on its port, read from
the kernel's socket table (`/proc/net/tcp*`): a test connection would take the peer's one
accept for a real process. A peer on another machine, or no socket table (not Linux),
is left to Timely's retries, as is a peer still not listening after `PEER_WAIT_S`.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

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
    """Keep this thread's Python thread state for the rest of the run.

    With `-w`/`-i`, Bytewax runs each worker on a thread Python did not start, and takes
    the GIL for every operator activation with `PyGILState_Ensure`, which on such a
    thread makes a new thread state and deletes it again at the matching release. So
    every activation started on a fresh state: about 33 µs each (a minimal flow of
    20,000 one-item batches took 1.08 s against 0.35 s on one worker), and
    `threading.local` values, the `decimal` context and the like lived for one activation
    only. One more `PyGILState_Ensure`, never released, keeps the count above zero, so
    the releases only hand the GIL back and the state stays, as it does for a thread
    Python started (and for `run_main`, which runs on the main thread). Called on the
    worker thread while the flow is built (the input's `list_parts` runs on every
    worker); a thread state already held is left as it is.
    """
    if not getattr(_STATE, "held", False):
        ctypes.pythonapi.PyGILState_Ensure()  # a PyDLL call: runs with the GIL held
        _STATE.held = True
