"""Which worker runs each symbol: the state keys of the keyed steps, chosen so that the
symbols spread over the workers and each runs where its input partition is read.

Bytewax 0.21 places the state of key K on worker `SipHash-1-3(K) mod workers` (Rust's
`DefaultHasher` over the key's `str` hash: its bytes, then 0xff; checked against Bytewax
itself in tests/test_routing.py), and a fixed-partitioned input's partition j of the
sorted partition names on worker `j mod workers`. Keyed by the bare symbol, BTC-PERP
and ETH-PERP (and SOL, XRP, DOGE) all hash to the same one of two workers, so with two
workers every keyed step ran on one of them, and with two processes the other process's
decoded trades crossed the process boundary.

So each symbol gets a route key, `SYMBOL/n`, with the smallest n whose hash is its slot
(its index in the input's partition order) modulo `SPAN` = lcm(1..8): then the symbol's
steps run on worker `slot mod workers` for any worker count that divides 840 (1 to 8, 10,
12, 14, 15, 20, ...), the worker that reads its file, with no need to know the count when
the flow is built. Other counts still work; only the placement is then by hash.

The keys are the keys of the flow's recovery snapshots, so a restart must find the same
ones even if the symbol set changed (a new symbol shifts the others' slots): with a
recovery directory they are pinned in `routes.json` there, and a symbol keeps its key
for the life of the directory. A directory with snapshots from before route keys keeps
the bare symbols as its keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataflows.settings import Settings

SPAN = 840  # lcm(1, ..., 8): the worker counts for which slots are exact
ROUTES_FILE = "routes.json"

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: Rust's `DefaultHasher::new()`."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    end = len(data) // 8 * 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 runs key `key`'s state on."""
    return siphash13(key.encode() + b"\xff") % workers


@cache
def route_key(symbol: str, slot: int) -> str:
    """`symbol/n` for the smallest n that puts it on worker `slot mod workers` for every
    worker count dividing SPAN (about SPAN hashes: milliseconds, once per symbol)."""
    target = slot % SPAN
    n = 0
    while siphash13(f"{symbol}/{n}".encode() + b"\xff") % SPAN != target:
        n += 1
    return f"{symbol}/{n}"


class RoutesError(ValueError):
    """The recovery directory's pinned route keys cannot be read."""


def route_order(settings: Settings) -> list[str]:
    """The symbols in slot order: the file input's partitions (one per symbol, sorted, as
    `MarketSource.list_parts` names them), then the other traded symbols, sorted."""
    files = sorted({f.symbol for f in settings.files})
    return files + sorted(settings.symbols - set(files))


def routes(
    order: Iterable[str], recovery: Path | None = None, resumed: bool = False
) -> dict[str, str]:
    """symbol -> route key, the symbols in the input's partition order (slot = index).
    With a recovery directory, keys already pinned there are kept and new ones pinned.
    `resumed`: the directory holds snapshots; without a routes file they were taken under
    the bare symbols (before route keys), which stay its symbols' keys, so an upgrade
    resumes their state (placed by hash, as before) instead of starting it afresh."""
    order = list(order)
    pinned: dict[str, str] = _load(recovery) if recovery is not None else {}
    legacy = recovery is not None and resumed and not (recovery / ROUTES_FILE).exists()
    if legacy:
        pinned = {s: s for s in order}
    keys = {s: pinned.get(s) or route_key(s, slot) for slot, s in enumerate(order)}
    if recovery is not None and (legacy or not keys.items() <= pinned.items()):
        _save(recovery, {**pinned, **keys})
    return keys


def _load(recovery: Path) -> dict[str, str]:
    path = recovery / ROUTES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise RoutesError(f"{path}: cannot read the pinned route keys: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and (v == k or v.startswith(k + "/"))
        for k, v in data.items()
    ):
        raise RoutesError(f"{path}: expected {{symbol: 'symbol/n' or 'symbol'}}; got {data!r}")
    return data


def _save(recovery: Path, keys: Mapping[str, str]) -> None:
    """Atomically (processes starting together write the same content)."""
    path = recovery / ROUTES_FILE
    tmp = path.with_name(f".{ROUTES_FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(dict(sorted(keys.items())), indent=1) + "\n")
        tmp.replace(path)
    except OSError as e:
        raise RoutesError(
            f"{path}: cannot pin the route keys: {e.strerror} (prepare the recovery "
            f"directory first: python -m dataflows.recovery {recovery})"
        ) from None
