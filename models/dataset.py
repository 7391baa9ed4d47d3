"""Training data through the same operators the dataflow runs: records → bars → features.

`contexts()` replays input records through MarketState, ContextJoin and FeatureState,
exactly as the flow's market, context_join and features steps do (without Bytewax), so
the training matrix and the live features come from one piece of code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from operators.config import CohortConfig
from operators.events import PARSERS
from operators.features import FEATURES, FeatureState
from operators.market import DEFAULT_ALLOWED_LATENESS_MS, Close, Late, MarketState
from operators.overlays import BarContext, ContextJoin


def contexts(
    records: Iterable[tuple[str, dict[str, Any]]],
    candle_symbols: frozenset[str],
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
) -> Iterator[BarContext]:
    """Every 5m close of every symbol, with its context and features (None in warm-up)."""
    markets: dict[str, MarketState] = {}
    joins: dict[str, ContextJoin] = {}
    feats: dict[str, FeatureState] = {}
    symbols = frozenset()
    for stream, rec in records:
        sym = rec["symbol"]
        if sym not in markets:
            symbols = symbols | {sym}
            markets[sym] = MarketState(
                sym, sym in candle_symbols, allowed_lateness_ms, CohortConfig()
            )
            joins[sym], feats[sym] = ContextJoin(), FeatureState()
        event = PARSERS[stream][1](rec, symbols)
        out: list[Any] = []
        markets[sym].on_event(event, out)
        yield from _consume(out, joins[sym], feats[sym])
    for sym, m in markets.items():
        out = []
        m.flush(out)
        yield from _consume(out, joins[sym], feats[sym])


def _consume(items: list[Any], join: ContextJoin, fs: FeatureState) -> Iterator[BarContext]:
    for it in items:
        if isinstance(it, Late):
            continue
        if isinstance(it, Close):
            ctx = join.at_close(it.bar, it.cohort)
            ctx.features = fs.at_close(ctx)
            yield ctx
        else:
            join.add(it)


def matrix(
    ctxs: list[BarContext], horizon_bars: int, dead_zone_bps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, forward log return, bar end ms) of bars with features and a known outcome.

    y = 1 when the close `horizon_bars` later is above this close. Rows whose forward move
    is inside the dead zone (too small to pay costs) are left out: they teach noise.
    """
    closes = np.array([c.bar.close for c in ctxs])
    rows, ys, fwd, ts = [], [], [], []
    for i, c in enumerate(ctxs):
        j = i + horizon_bars
        if c.features is None or j >= len(ctxs) or not c.bar.count or not ctxs[j].bar.count:
            continue
        r = float(np.log(closes[j] / closes[i]))
        if abs(r) * 1e4 < dead_zone_bps:
            continue
        rows.append([c.features[f] for f in FEATURES])
        ys.append(1 if r > 0 else 0)
        fwd.append(r)
        ts.append(c.bar.end_ms)
    return (
        np.array(rows, dtype=float),
        np.array(ys, dtype=int),
        np.array(fwd),
        np.array(ts, dtype=np.int64),
    )
