"""Benchmark (figures, not a test): scale-out from Kafka, 1 worker vs `-w 2` vs 2 processes.

    make bench-kafka-scale [KAFKA_SCALE_ARGS="--ticks N --rounds R --layouts L --tree DIR"]
    make bench-kafka-scale KAFKA_SCALE_ARGS="--layouts 1-worker --tree <before> --tree ."

Seeded synthetic ticks (bench/ticks.py) for two symbols, BTC-PERP and ETH-PERP, published
to a fresh topic prefix per run (not timed) as Avro trades keyed by symbol, placed by the
Java client's partitioner (murmur2 of the key, as kafka-python and the live ingestor
place them): BTC-PERP on trades partition 3 and ETH-PERP on 2 of 6, which Bytewax hands to
different workers of two. Then `python -m bytewax.run dataflows.ensemble` reads them
(ENSEMBLE_KAFKA_TAIL=0: stop at the end of the topics) and writes every output topic,
timed from process start to exit: 1 worker, `-w 2`, and two processes (`-i/-a`), rounds
interleaved (with `--tree`, each checkout's flow in the same rounds, ratios against the
first). Each run's output topics are read back and compared with the first run's,
as sorted records per topic (the order across symbols is the scheduler's), on the event
clock (ENSEMBLE_CLOCK=event) so that records carry no wall-clock stamps.

The wall time includes start-up, connecting to the broker and finding the end of the
input. Each run's layout also reads STARTUP_TICKS trades per symbol in the same round, and
the figures say what the input took beyond that (as `bench_nautilus.py` does for a file:
NautilusTrader's own figure is `engine.run()` alone). Peak memory is not shown (for a
file, bench_throughput.py shows each flow process's VmHWM). With
the broker on this machine (found in /proc), each run starts once the broker has settled
after the publish (`settle`), and each round says how much CPU the broker used during the
flow's run: on two cores it competes with the flow's processes. With `--tree`, the end
also gives, for each layout, the median of each round's ratio to the same layout of the
first checkout in that round.

With `--ceiling`, each round also runs the first symbol's flow alone and each symbol as a
flow of its own at once, each on topics of its own (no cluster, separate accounts): what
this machine, broker included, gives separate processes at all, against which the
layouts' scaling is judged.

With `--nautilus-python PY` (a venv with NautilusTrader, see bench/bench_nautilus.py),
each round also runs NautilusTrader's BacktestEngine over as many ticks from the same
generator (one instrument, seed 11; its figure is `engine.run()` alone; after the broker
has settled, as before each flow run), and the end says
each layout's ratio to it, with start-up and beyond it, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_nautilus import INSTALL, nautilus_importable, run_nautilus  # noqa: E402
from bench.bench_throughput import TMP, Run, machine, run_processes  # noqa: E402
from bench.ticks import synthetic_ticks, write_ticks  # noqa: E402
from dataflows.kafka_security import confluent_config  # noqa: E402
from dataflows.topics import OUTPUT_TOPICS, provision  # noqa: E402
from marketdata.replay import encoded  # noqa: E402

LAYOUTS = {"1-worker": (1, 1), "w2": (2, 1), "2-processes": (1, 2)}  # (workers, processes)
STARTUP_TICKS = 1_000  # per symbol: a run this short is start-up, connecting and the end
SYMBOLS = ("BTC-PERP", "ETH-PERP")  # by default; their ticks are seeded 11, 12, ...


def trade_messages(
    ticks: int, symbols: tuple[str, ...], first_seed: int = 11
) -> list[tuple[str, bytes, bytes]]:
    """(topic stream, key, Avro value) for every tick of the symbols, in event-time order;
    the symbols' ticks are seeded `first_seed`, the next, ..."""
    records = []
    for seed, symbol in enumerate(symbols, start=first_seed):
        df = synthetic_ticks(ticks, seed)
        ts = df["timestamp"].astype("int64").to_numpy()  # ms (datetime64[ms])
        sides = ["sell" if m == "True" else "buy" for m in df["buyer_maker"]]
        for t, tid, px, qty, side in zip(
            ts.tolist(),
            df["trade_id"].tolist(),
            df["price"].tolist(),
            df["quantity"].tolist(),
            sides,
            strict=True,
        ):
            rec = {"symbol": symbol, "ts_event_ms": t, "trade_id": str(tid), "px": px,
                   "qty": qty, "side": side}  # fmt: skip
            records.append(("trades", rec))
    records.sort(key=lambda sr: sr[1]["ts_event_ms"])
    return [(s, k, v) for s, k, v, _ in encoded(records, "ensemble_1_1")]


def publish(bootstrap: str, prefix: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    provision(bootstrap, prefix)
    p = Producer(
        confluent_config(
            bootstrap,
            **{"partitioner": "murmur2_random", "linger.ms": 20, "compression.type": "lz4"},
        )
    )
    for stream, key, value in messages:
        while True:
            try:
                p.produce(f"{prefix}.{stream}", value=value, key=key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.05)
        p.poll(0)
    if p.flush(120) != 0:
        raise SystemExit("publishing the ticks did not finish in 120 s")


def read_outputs(bootstrap: str, prefix: str) -> dict[str, list[bytes]]:
    """Every output topic's records, sorted, read to the end of each partition."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(
        confluent_config(
            bootstrap,
            **{"group.id": f"bench-scale-{uuid.uuid4().hex[:6]}", "enable.partition.eof": True},
        )
    )
    parts = [
        TopicPartition(t.name(prefix), i, 0) for t in OUTPUT_TOPICS for i in range(t.partitions)
    ]
    c.assign(parts)
    got: dict[str, list[bytes]] = {t.stream: [] for t in OUTPUT_TOPICS}
    ended: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 120
    while len(ended) < len(parts):
        if time.monotonic() > deadline:
            raise SystemExit("reading the output topics did not finish in 120 s")
        for m in c.consume(1000, 1.0):
            err = m.error()
            if err is None:
                got[m.topic().split(".", 1)[1]].append(m.value())
            elif err.code() == KafkaError._PARTITION_EOF:
                ended.add((m.topic(), m.partition()))
            else:
                raise SystemExit(f"reading the output topics: {err.str()}")
    c.close()
    return {stream: sorted(values) for stream, values in got.items()}


def broker_pid() -> int | None:
    """The local Kafka broker's process (deploy/kafka/broker.sh), if one runs here."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return None


def broker_cpu_s(pid: int | None) -> float:
    """The CPU time (user + system) process `pid` has used so far; 0 without one."""
    if pid is None:
        return 0.0
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int | None, quiet_s: float = 0.3, at_most_s: float = 10.0) -> None:
    """Wait (at most `at_most_s`) until the local broker has used under a fifth of a core
    for `quiet_s`: right after a publish it is still busy with it (its JVM's collections,
    segments), and that work landed in some flow runs and not others (the broker's CPU
    during a run ranged from 0.36 to 1.03 s)."""
    if pid is None:
        return
    deadline = time.monotonic() + at_most_s
    quiet, step = 0.0, 0.1
    while quiet < quiet_s and time.monotonic() < deadline:
        before = broker_cpu_s(pid)
        time.sleep(step)
        quiet = quiet + step if broker_cpu_s(pid) - before < step / 5 else 0.0


def run_flow(
    bootstrap: str,
    prefix: str,
    workers: int,
    processes: int,
    symbols: tuple[str, ...],
    tree: Path = ROOT,
) -> Run:
    """One run, timed from process start to the last process's exit."""
    env = _flow_env(bootstrap, prefix, symbols, tree)
    return run_processes(env, workers, processes, tree)


def _flow_env(bootstrap: str, prefix: str, symbols: tuple[str, ...], tree: Path) -> dict[str, str]:
    """The environment of a flow reading `prefix`'s topics to their end."""
    env = {
        **os.environ,  # the Kafka security settings (deploy/kafka/with-broker.sh)
        "ENSEMBLE_KAFKA_BOOTSTRAP": bootstrap,
        "ENSEMBLE_TOPIC_PREFIX": prefix,
        "ENSEMBLE_KAFKA_TAIL": "0",
        "ENSEMBLE_CLOCK": "event",
        "ENSEMBLE_SYMBOLS": ",".join(symbols),
        "ENSEMBLE_CANDLE_SYMBOLS": "",
        "PYTHONPATH": str(tree),
    }
    env.pop("ENSEMBLE_TEST_KAFKA", None)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=250_000, help="per symbol")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--symbols",
        default=",".join(SYMBOLS),
        help="comma-separated perps (seeded 11, 12, ... in this order)",
    )
    ap.add_argument(
        "--layouts",
        default=",".join(LAYOUTS),
        help=f"comma-separated, of {', '.join(LAYOUTS)}",
    )
    ap.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="run this checkout's flow too, in the same rounds (repeatable; default: this one)",
    )
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="each round also runs the first symbol's flow alone and every symbol as a "
        "separate flow on a topic prefix of its own, all at once (no cluster)",
    )
    ap.add_argument(
        "--nautilus-python",
        help="a Python that imports nautilus_trader: run it in the same rounds, for the ratio",
    )
    args = ap.parse_args()
    symbols = tuple(args.symbols.split(","))
    trees = args.tree or [ROOT]
    bootstrap = os.environ.get("ENSEMBLE_TEST_KAFKA", "127.0.0.1:19092")
    print(f"{machine()}; broker {bootstrap}")
    messages = trade_messages(args.ticks, symbols)
    short = trade_messages(STARTUP_TICKS, symbols)
    n = len(messages)
    nautilus_ticks = None
    if args.nautilus_python:
        if not nautilus_importable(args.nautilus_python):
            raise SystemExit(
                f"NautilusTrader is not importable by {args.nautilus_python}: {INSTALL}"
            )
        TMP.mkdir(exist_ok=True)
        nautilus_ticks = write_ticks(TMP / f"btc_{n}.parquet", n, seed=11)
    nautilus_s: list[float] = []
    names = args.layouts.split(",")
    keys = {  # (layout, checkout) -> the name its figures go by
        (name, tree): name if len(trees) == 1 else f"{name} {tree}"
        for tree in trees
        for name in names
    }
    layouts = {key: (*LAYOUTS[name], tree) for (name, tree), key in keys.items()}
    # each run's counterpart in the first checkout: the same layout
    counterpart = {key: keys[(name, trees[0])] for (name, _), key in keys.items()}
    broker = broker_pid()  # a local broker's CPU is counted beside the flow's
    runs: dict[str, list[Run]] = {k: [] for k in layouts}
    startups: dict[str, list[float]] = {k: [] for k in layouts}
    reference = None
    differed = []
    ceiling: dict[str, list[float]] = {"one symbol alone": [], "separate flows": []}
    for r in range(args.rounds):
        if args.ceiling:
            for name, seconds in _ceiling_round(bootstrap, args.ticks, symbols, broker).items():
                ceiling[name].append(seconds)
                print(f"  round {r + 1} {name}: {seconds:.2f} s wall", flush=True)
        for name, (w, p, tree) in layouts.items():
            prefix = f"bench-scale-{uuid.uuid4().hex[:8]}"
            publish(bootstrap, prefix, messages)
            settle(broker)
            broker_s = broker_cpu_s(broker)
            run = run_flow(bootstrap, prefix, w, p, symbols, tree)
            broker_s = broker_cpu_s(broker) - broker_s
            runs[name].append(run)
            prefix_short = f"bench-scale-{uuid.uuid4().hex[:8]}"
            publish(bootstrap, prefix_short, short)
            settle(broker)
            startups[name].append(run_flow(bootstrap, prefix_short, w, p, symbols, tree).wall_s)
            got = read_outputs(bootstrap, prefix)
            if reference is None:
                reference = got
                same = " (" + ", ".join(f"{s} {len(v)}" for s, v in got.items() if v) + ")"
            else:
                differ = [s for s in got if got[s] != reference[s]]
                same = "; same outputs" if not differ else f"; DIFFERENT OUTPUTS in {differ}"
                if differ:
                    differed.append(f"round {r + 1} {name}")
            startup_s = startups[name][-1]
            beyond = _beyond(run.wall_s - startup_s, startup_s, n, len(short))
            busy = "" if broker is None else f"; the broker {broker_s:.2f} s CPU meanwhile"
            print(f"  round {r + 1} {name}: {_figures(run, n)}{beyond}{busy}{same}", flush=True)
        if nautilus_ticks is not None:
            settle(broker)  # as before each flow run: the last run's outputs were just read
            res = run_nautilus(args.nautilus_python, nautilus_ticks)
            nautilus_s.append(res["run_s"])
            print(
                f"  round {r + 1} NautilusTrader run(): {res['run_s']:.2f} s = "
                f"{res['ticks'] / res['run_s']:,.0f} ticks/s ({res['bars']} bars)",
                flush=True,
            )
    print(
        f"{n:,} trades ({args.ticks:,} per symbol of {len(symbols)}) from Kafka, median of "
        f"{args.rounds}:"
    )
    base = statistics.median(r.wall_s for r in next(iter(runs.values())))
    rates: dict[str, tuple[float, float]] = {}  # with start-up, beyond it
    for name, rs in runs.items():
        wall_s = statistics.median(r.wall_s for r in rs)
        cpu_s = statistics.median(r.cpu_s for r in rs)
        # each round's difference: a round's two runs share the machine's speed of the moment
        extra_s = statistics.median(r.wall_s - t for r, t in zip(rs, startups[name], strict=True))
        rate = _beyond_rate(extra_s, n, len(short))
        beyond = _beyond(extra_s, statistics.median(startups[name]), n, len(short))
        same = runs[counterpart[name]]
        paired = statistics.median(a.wall_s / r.wall_s for a, r in zip(same, rs, strict=True))
        versus = "" if len(trees) == 1 else f"; round by round, {paired:.2f}x the first checkout's"
        print(
            f"{name:12s}: {_figures(Run(wall_s, cpu_s, 0.0), n)}{beyond} "
            f"({base / wall_s:.2f}x the first's wall time{versus})"
        )
        if rate is not None:
            rates[name] = (n / wall_s, rate)
    if nautilus_s:
        naut = n / statistics.median(nautilus_s)  # its file holds the same n ticks
        print(f"NautilusTrader BacktestEngine.run(), median of {args.rounds}: {naut:,.0f} ticks/s")
        for name, (with_startup, beyond_startup) in rates.items():
            print(
                f"{name} / NautilusTrader: {with_startup / naut:.2f}x with start-up and "
                f"connecting, {beyond_startup / naut:.2f}x beyond them"
            )
    if args.ceiling:
        one, apart = (statistics.median(ceiling[k]) for k in ceiling)
        k = len(symbols)
        print(
            f"ceiling on this machine, with the broker: one symbol's flow alone {one:.2f} s, "
            f"{k} separate flows at once {apart:.2f} s ({one / apart * k:.2f}x the work in "
            f"the time of one); the first layout against the separate flows: "
            f"{base / apart:.2f}x"
        )
    if differed:  # figures of runs that wrote something else compare nothing
        raise SystemExit(f"outputs differed from the first run's in: {', '.join(differed)}")


def _ceiling_round(
    bootstrap: str, ticks: int, symbols: tuple[str, ...], broker: int | None
) -> dict[str, float]:
    """What this machine gives separate flows at all, through the broker: the first symbol's
    one-worker flow alone, then each symbol's own flow on a topic prefix of its own, all at
    once with no cluster between them (separate accounts, so their outputs are not compared).
    Each symbol keeps its seed, so the ticks are those of the layouts' runs; each run reads
    topics published for it (as every layout's run does)."""

    def published() -> list[dict[str, str]]:
        envs = []
        for seed, symbol in enumerate(symbols, start=11):
            prefix = f"bench-scale-{uuid.uuid4().hex[:8]}"
            publish(bootstrap, prefix, trade_messages(ticks, (symbol,), first_seed=seed))
            envs.append(_flow_env(bootstrap, prefix, (symbol,), ROOT))
        settle(broker)
        return envs

    alone = run_processes(published()[0]).wall_s
    return {"one symbol alone": alone, "separate flows": run_processes(published()).wall_s}


def _beyond_rate(extra_s: float, n: int, n_short: int) -> float | None:
    """The rate of the `n - n_short` trades a run reads in `extra_s` more than a run of
    `n_short` (start-up, connecting, finding the end) took; None if it took no longer."""
    return (n - n_short) / extra_s if extra_s > 0 else None


def _beyond(extra_s: float, startup_s: float, n: int, n_short: int) -> str:
    """`_beyond_rate`, said beside the short run's time `startup_s`."""
    rate = _beyond_rate(extra_s, n, n_short)
    said = "n/a" if rate is None else f"{rate:,.0f}"
    return f" ({said} trades/s beyond a {startup_s:.2f} s run of {n_short:,})"


def _figures(run: Run, n: int) -> str:
    return f"{run.wall_s:.2f} s wall = {n / run.wall_s:,.0f} trades/s; {run.cpu_s:.2f} s CPU"


if __name__ == "__main__":
    main()
