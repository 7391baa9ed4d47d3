"""Route keys (dataflows/routing.py): each symbol's keyed steps run on the worker that
reads its input partition, spread over the workers, checked against Bytewax itself."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from bytewax.testing import TestingSink, cluster_main

from dataflows.routing import ROUTES_FILE, RoutesError, route_key, routes, worker_of

SYMBOLS = ["BTC-PERP", "DOGE-PERP", "ETH-PERP", "SOL-PERP", "XRP-PERP"]


class _Once(StatelessSourcePartition):
    def __init__(self, item: Any) -> None:
        self.item: Any = item

    def next_batch(self) -> list[Any]:
        if self.item is None:
            raise StopIteration
        item, self.item = self.item, None
        return [item]


class _WorkerNames(DynamicSource):
    """Each worker says which thread it is: ("worker", (thread name, worker index))."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Once:
        return _Once(("worker", (threading.current_thread().name, worker_index)))


class _SymbolPart(StatefulSourcePartition):
    def __init__(self, symbol: str, key: str) -> None:
        self.once = _Once((key, (symbol, threading.current_thread().name)))

    def next_batch(self) -> list[Any]:
        return self.once.next_batch()

    def snapshot(self) -> None:
        return None


class _Symbols(FixedPartitionedSource):
    """One partition per symbol, sorted, as dataflows/io.py's MarketSource lists files."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def list_parts(self) -> list[str]:
        return sorted(self.keys)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SymbolPart:
        return _SymbolPart(for_part, self.keys[for_part])


def _placement(keys: dict[str, str], workers: int) -> dict[str, tuple[int, int]]:
    """symbol -> (worker reading its partition, worker running its key's state)."""
    flow = Dataflow("placement")
    names: list[tuple[str, Any]] = []
    op.output("names", op.input("workers", flow, _WorkerNames()), TestingSink(names))
    read = op.input("symbols", flow, _Symbols(keys))
    ran = op.stateful_map(
        "state", read, lambda state, v: (state, (*v, threading.current_thread().name))
    )
    seen: list[tuple[str, Any]] = []
    op.output("seen", ran, TestingSink(seen))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    index = dict(v for _, v in names)
    return {sym: (index[reader], index[runner]) for _, (sym, reader, runner) in seen}


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_symbol_runs_on_the_worker_that_reads_it_and_they_spread(workers: int):
    keys = routes(SYMBOLS)
    placed = _placement(keys, workers)
    assert placed == {s: (slot % workers, slot % workers) for slot, s in enumerate(SYMBOLS)}


def test_bytewax_places_keys_where_worker_of_says():
    keys = {f"S{i}": f"S{i}" for i in range(24)}
    placed = _placement(keys, 3)
    assert {s: ran for s, (_, ran) in placed.items()} == {s: worker_of(s, 3) for s in keys}


def test_bare_symbols_would_all_run_on_one_of_two_workers():
    """Why route keys exist: keyed by the symbol itself, every perp lands on one worker."""
    assert {worker_of(s, 2) for s in SYMBOLS} == {0}


def test_a_route_key_names_its_symbol_and_holds_for_every_worker_count_up_to_8():
    key = route_key("ETH-PERP", 5)
    assert key.startswith("ETH-PERP/")
    assert [worker_of(key, w) for w in range(1, 9)] == [5 % w for w in range(1, 9)]


def test_keys_pinned_in_the_recovery_directory_survive_a_new_symbol(tmp_path: Path):
    first = routes(["BTC-PERP", "ETH-PERP"], tmp_path)
    # ADA sorts first: its slot is 0 and the others' slots move, but not their keys
    later = routes(["ADA-PERP", "BTC-PERP", "ETH-PERP"], tmp_path)
    assert later["BTC-PERP"] == first["BTC-PERP"] and later["ETH-PERP"] == first["ETH-PERP"]
    assert later["ADA-PERP"] == route_key("ADA-PERP", 0)
    assert json.loads((tmp_path / ROUTES_FILE).read_text()) == later


def test_unreadable_pinned_keys_stop_the_start_naming_the_file(tmp_path: Path):
    (tmp_path / ROUTES_FILE).write_text('{"BTC-PERP": "ETH-PERP/1"}')
    with pytest.raises(RoutesError, match=ROUTES_FILE):
        routes(["BTC-PERP"], tmp_path)


def test_a_missing_recovery_directory_stops_the_start_saying_how_to_prepare_it(tmp_path: Path):
    with pytest.raises(RoutesError, match="python -m dataflows.recovery"):
        routes(["BTC-PERP"], tmp_path / "absent")


def test_snapshots_from_before_route_keys_keep_the_bare_symbols_as_keys(tmp_path: Path):
    """An upgrade must resume the state its snapshots hold under the bare symbols."""
    keys = routes(["BTC-PERP", "ETH-PERP"], tmp_path, resumed=True)
    assert keys == {"BTC-PERP": "BTC-PERP", "ETH-PERP": "ETH-PERP"}
    later = routes(["ADA-PERP", "BTC-PERP", "ETH-PERP"], tmp_path, resumed=True)
    assert later["BTC-PERP"] == "BTC-PERP" and later["ADA-PERP"] == route_key("ADA-PERP", 0)
