"""Training data through the same operators the dataflow runs: records → bars → features.

`contexts()` replays input records through MarketState, ContextJoin and FeatureState,
exactly as the flow's market, context_join and features steps do (without Bytewax), so
the training matrix and the live features come from one piece of code. `feature_parity()`
recomputes the features with the vectorised twin (`operators.features.batch_features`)
and returns the largest difference; training refuses data where the two disagree.

Labels (`labelled()`): y = 1 when the close `horizon_bars` later is above this close,
0 when below. Rows whose forward move is inside the dead zone (|log return| under
`dead_zone_bps`) are left out of training and of every metric: such moves cannot pay
the round-trip cost (2 x 5 bps taker fee plus slippage) and only teach the model noise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from marketdata.files import FileSpec, file_records
from operators.config import CohortConfig, StrategyConfig
from operators.events import PARSERS
from operators.features import (
    ANNUALISE_5M,
    BAR_COLUMNS,
    CONTEXT_FEATURES,
    FEATURES,
    FEATURES_V2,
    FeatureState,
    batch_features,
    context_inputs,
)
from operators.market import DEFAULT_ALLOWED_LATENESS_MS, Close, Late, MarketState
from operators.overlays import BarContext, ContextJoin, Staleness

PARITY_TOLERANCE = 1e-9
_STALENESS = Staleness.of(StrategyConfig())  # training sees the default staleness limits


class DataError(ValueError):
    """Training data cannot be used; the message names the file and what is wrong."""


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
            ctx = join.at_close(it.bar, it.cohort, _STALENESS)
            ctx.features = fs.at_close(ctx)
            yield ctx
        else:
            join.add(it)


def bar_frame(ctxs: list[BarContext]) -> pd.DataFrame:
    """One symbol's 5m closes as the batch twin's input: bar columns plus context inputs."""
    rows = []
    for c in ctxs:
        b = c.bar
        rows.append(
            {"end_ms": b.end_ms, "close": b.close, "high": b.high, "low": b.low}
            | {"volume": b.volume, "count": b.count}
            | context_inputs(c)
        )
    cols = ["end_ms", *BAR_COLUMNS, "count", *CONTEXT_FEATURES]
    return pd.DataFrame(rows, columns=cols)


def feature_parity(ctxs: list[BarContext], names: tuple[str, ...] = FEATURES_V2) -> float:
    """Largest |streaming - batch| over the `names` features of every bar of one symbol.

    Raises DataError when the two disagree on which bars have features at all.
    """
    if not ctxs:
        return 0.0
    batch = batch_features(bar_frame(ctxs))[list(names)].to_numpy()
    has = np.array([c.features is not None for c in ctxs])
    if not np.array_equal(has, ~np.isnan(batch).any(axis=1)):
        raise DataError("streaming and batch features disagree on which bars are warmed up")
    if not has.any():
        return 0.0
    stream = np.array([[c.features[f] for f in names] for c in ctxs if c.features])
    return float(np.max(np.abs(stream - batch[has])))


@dataclass(frozen=True)
class Labelled:
    """Bars with features and a known outcome, in time order."""

    x: np.ndarray  # features, FEATURES order
    y: np.ndarray  # 1 up, 0 down
    fwd_ret: np.ndarray  # log return over the horizon
    end_ms: np.ndarray  # bar close time (epoch ms)
    past_ret: np.ndarray  # log return over the previous `horizon` bars (momentum baseline)

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(parts: list[Labelled]) -> Labelled:
        return Labelled(*(np.concatenate([getattr(p, f) for p in parts]) for f in _LABELLED))


_LABELLED = ("x", "y", "fwd_ret", "end_ms", "past_ret")


def labelled(
    ctxs: list[BarContext],
    horizon_bars: int,
    dead_zone_bps: float,
    features: tuple[str, ...] = FEATURES,
    dead_zone_sigma: float = 0.0,
    barrier_sigma: float = 0.0,
) -> Labelled:
    """Rows with features whose bar and the bar `horizon_bars` later both have data.

    `dead_zone_sigma` > 0 also leaves out moves under that many of the bar's expected
    horizon move (rv_annual de-annualised to `horizon_bars` bars, known at the close):
    a volatility-scaled label threshold.
    `barrier_sigma` > 0 labels by triple barrier instead: 1 when the highs reach
    +barrier_sigma expected moves before the lows reach -barrier_sigma within the horizon,
    0 the other way round; rows touching neither, or both in one bar, are left out.
    """
    if horizon_bars < 1 or min(dead_zone_bps, dead_zone_sigma, barrier_sigma) < 0:
        raise DataError(
            f"horizon_bars={horizon_bars}, dead_zone_bps={dead_zone_bps}, "
            f"dead_zone_sigma={dead_zone_sigma}, barrier_sigma={barrier_sigma}: "
            "need horizon_bars >= 1 and the others >= 0"
        )
    sigma_scale = math.sqrt(horizon_bars) / ANNUALISE_5M
    closes = [c.bar.close for c in ctxs]
    rows, ys, fwd, ts, past = [], [], [], [], []
    for i, c in enumerate(ctxs):
        j = i + horizon_bars
        if c.features is None or j >= len(ctxs) or i < horizon_bars:
            continue
        if not c.bar.count or not ctxs[j].bar.count:
            continue
        r = math.log(closes[j] / closes[i])
        if abs(r) * 1e4 < dead_zone_bps:
            continue
        expected = c.features["rv_annual"] * sigma_scale
        if abs(r) < dead_zone_sigma * expected:
            continue
        y = 1 if r > 0 else 0
        if barrier_sigma > 0:
            path = [(b.bar.high, b.bar.low) for b in ctxs[i + 1 : j + 1]]
            touched = first_touch(closes[i], path, barrier_sigma * expected)
            if touched is None:
                continue
            y = touched
        rows.append([c.features[f] for f in features])
        ys.append(y)
        fwd.append(r)
        ts.append(c.bar.end_ms)
        past.append(math.log(closes[i] / closes[i - horizon_bars]))
    return Labelled(
        np.array(rows, dtype=float).reshape(-1, len(features)),
        np.array(ys, dtype=int),
        np.array(fwd, dtype=float),
        np.array(ts, dtype=np.int64),
        np.array(past, dtype=float),
    )


def first_touch(close: float, path: list[tuple[float, float]], barrier_log: float) -> int | None:
    """1 if the bars' highs reach close·e^b before their lows reach close·e^-b, 0 the
    other way round, None when neither is reached or both are in the same bar."""
    if not barrier_log > 0:
        return None
    up, down = close * math.exp(barrier_log), close * math.exp(-barrier_log)
    for high, low in path:
        hit_up, hit_down = high >= up, low <= down
        if hit_up or hit_down:
            return None if hit_up and hit_down else int(hit_up)
    return None


def matrix(
    ctxs: list[BarContext], horizon_bars: int, dead_zone_bps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, forward log return, bar end ms) of `labelled()`."""
    d = labelled(ctxs, horizon_bars, dead_zone_bps)
    return d.x, d.y, d.fwd_ret, d.end_ms


@dataclass(frozen=True)
class Source:
    """One training input (one or more files replayed together) and what came of it."""

    spec: str  # as given, comma-separated file specs
    files: list[FileSpec]
    bars_5m: int
    parity_max_abs: float
    data: Labelled


def parse_source(spec_text: str) -> list[FileSpec]:
    """`candles:A.json[,funding:B.json]`: one market's files, replayed together."""
    specs = [FileSpec.parse(part.strip()) for part in spec_text.split(",") if part.strip()]
    if not any(s.kind in ("candles", "trades") for s in specs):
        raise DataError(f"training input {spec_text!r} has no candles or trades file")
    if len({s.symbol for s in specs}) != 1:
        raise DataError(f"training input {spec_text!r} mixes symbols; give one market per input")
    return specs


def load_source(
    spec_text: str, horizon_bars: int, dead_zone_bps: float, max_bars: int | None = None
) -> Source:
    """Replay one input through the flow's operators, check feature parity, label it.

    `max_bars` keeps only the first that many 5m bars (for quick runs and tests).
    """
    specs = parse_source(spec_text)
    candles = frozenset(s.symbol for s in specs if s.kind == "candles")
    ctxs = list(itertools.islice(contexts(file_records(specs), candles), max_bars))
    check_parity(ctxs, spec_text)
    # The manifest records the parity of the v1 features the shipped model uses.
    parity = feature_parity(ctxs, FEATURES)
    return Source(spec_text, specs, len(ctxs), parity, labelled(ctxs, horizon_bars, dead_zone_bps))


def check_parity(ctxs: list[BarContext], what: str) -> float:
    """Every feature (v1 and v2) streaming vs batch; DataError beyond PARITY_TOLERANCE."""
    parity = feature_parity(ctxs, FEATURES_V2)
    if not parity <= PARITY_TOLERANCE:
        raise DataError(
            f"{what}: streaming and batch features differ by {parity:.3g} "
            f"(tolerance {PARITY_TOLERANCE}); one of the two feature codes is wrong"
        )
    return parity
