"""Signal research harness: `python -m models.evaluate` (issue 13).

Scores candidate models and four baselines on identical purged walk-forward folds of the
Binance USD-M BTCUSDT perp 5m candles of 2025-08-01 .. 2026-02-19 with their 8-hourly
funding, and writes the research card (models/research/card.md, figures in
models/research/results.json).

- Test block: every bar closing at or after TEST_BLOCK_START (2026-01-08 00:00 UTC, the
  final 6 weeks) is kept out of all tuning. Walk-forward rows are the bars before it
  whose label window also ends before it.
- Walk-forward: the development rows in time order; the last `1 - FIRST_TEST` share is
  cut into FOLDS consecutive test folds; each is predicted by a fit on earlier rows only,
  less a purge gap of max(12, horizon) bars (no training label reaches into the fold).
- Forecast scores (every forecaster on the same rows of its label): Brier, Brier skill
  (1 - Brier / Brier of the training base rate), log loss, AUC, ECE (10 equal-count bins).
- Trading: each fold's fitted forecaster is written as a model artifact and the real
  dataflow (`dataflows.ensemble`, through backtest/runner.py) replays that fold's candles
  and funding under presets ensemble_1_0 and ensemble_1_1 with a 5 bps fee and 2 bps
  slippage; warm-up bars come from before the fold, decisions start at its first bar.
  Net PnL, Sharpe (daily, sqrt 365), max drawdown (5m marks), round trips per week and
  hit rate are pooled over the folds. buy_and_hold's PnL is the passive long of
  base_notional over each span, net of one round trip of costs (not a flow decision).
- The block: candidates are only scored on it if their walk-forward results already
  qualify (pre-registered rule `shippable`: Brier skill > 0 and 1.1 net PnL > 0 with at
  least one round trip per fold); the shipped artifact (trained on other files) and the
  baselines are always scored there, as the reference.

The funding feather is read here (models/), not by marketdata/files.py, until the file
reader supports the freqtrade funding feather; the flow gets it as freqtrade JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import pickle
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from marketdata.files import TIE_ORDER
from models.baselines import BASELINES, fit_baseline, rule_bundle
from models.card import utc_text
from models.dataset import Labelled, check_parity, contexts, labelled
from models.ensemble import HGB_MAX_ITER, FitError, fit_ensemble
from models.evaluation import quantile_bins
from models.metalabel import fit_metalabel
from models.research_card import write_research_card
from models.train import SHARED, display_spec
from operators.features import FEATURES, FEATURES_V2
from operators.overlays import BarContext
from operators.predict import DEFAULT_ARTIFACT, sha256_file

RESEARCH_CANDLES = SHARED / "binance_usdm_BTC_USDT_2025-08-01_2026-02-19_5m.feather"
RESEARCH_FUNDING = SHARED / "binance_usdm_BTC_USDT_2025-08-01_2026-02-19_funding_8h.feather"
SYMBOL = "BTC-PERP"
BAR_MS = 300_000
TEST_BLOCK_START_MS = int(pd.Timestamp("2026-01-08T00:00:00Z").value // 1_000_000)
FOLDS, FIRST_TEST = 3, 0.5
MIN_PURGE_BARS = 12
FEE_BPS, SLIPPAGE_BPS = 5.0, 2.0  # the cost assumption for every PnL figure
PRESETS = ("ensemble_1_0", "ensemble_1_1")
SHIP_MIN_BRIER_SKILL = 0.01  # issue 13's bar on the block: +1% over the base rate
SHIP_MIN_ROUND_TRIPS = 100  # ... and 1.1 net positive with at least this many trips
HGB_ITER = 60  # research fits stay cheap (a machine shared by five)
SEED = 7
OUT_DIR = Path(__file__).resolve().parent / "research"


@dataclass(frozen=True)
class LabelSpec:
    horizon_bars: int
    dead_zone_bps: float = 0.0
    dead_zone_sigma: float = 0.0
    barrier_sigma: float = 0.0  # > 0: triple-barrier labels (models/dataset.py)

    @property
    def name(self) -> str:
        zone = f"{self.dead_zone_bps:g}bps" if self.dead_zone_bps else ""
        zone += f"{self.dead_zone_sigma:g}sigma" if self.dead_zone_sigma else ""
        zone += f"barrier{self.barrier_sigma:g}sigma" if self.barrier_sigma else ""
        return f"h{self.horizon_bars}/{zone or 'none'}"

    @property
    def purge_bars(self) -> int:
        return max(MIN_PURGE_BARS, self.horizon_bars)


@dataclass(frozen=True)
class Candidate:
    name: str
    label: LabelSpec
    features: tuple[str, ...]
    what: str
    primary: str | None = None  # meta-labelling: the baseline rule whose calls it filters


SHIPPED_LABEL = LabelSpec(3, dead_zone_bps=5.0)
CANDIDATES = (
    Candidate(
        "stack_v1_h3",
        SHIPPED_LABEL,
        FEATURES,
        f"the shipped recipe refit on this file, its boosting at {HGB_ITER} iterations "
        f"({HGB_MAX_ITER} shipped)",
    ),
    Candidate("stack_v2_h3", SHIPPED_LABEL, FEATURES_V2, "v2 features, 15 min, 5 bps zone"),
    Candidate(
        "stack_v2_h12",
        LabelSpec(12, dead_zone_sigma=0.5),
        FEATURES_V2,
        "v2 features, 1 h, moves under 0.5 sigma left out",
    ),
    Candidate(
        "stack_v2_h48",
        LabelSpec(48, dead_zone_sigma=0.5),
        FEATURES_V2,
        "v2 features, 4 h, moves under 0.5 sigma left out",
    ),
    Candidate(
        "stack_v2_tb12",
        LabelSpec(12, barrier_sigma=1.0),
        FEATURES_V2,
        "v2 features, triple barrier: ±1 expected 1 h move (from rv_annual) within 1 h",
    ),
    Candidate(
        "metalabel_rev15m",
        SHIPPED_LABEL,
        FEATURES_V2,
        "meta-labelling: reversal_15m says the side, the stacked ensemble on v2 features "
        "says whether it is right (primary chosen by walk-forward baseline skill)",
        primary="reversal_15m",
    ),
)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ---------------------------------------------------------------------------------
def funding_frame(path: Path = RESEARCH_FUNDING) -> pd.DataFrame:
    """ts_ms and rate (fraction per 8 h) from the freqtrade funding feather (rate = open)."""
    df = pd.read_feather(path)
    if "date" not in df.columns or "open" not in df.columns:
        raise ValueError(f"{path}: expected freqtrade funding columns date, open")
    ts = pd.to_datetime(df["date"], utc=True).astype("datetime64[ns, UTC]").astype("int64")
    out = pd.DataFrame({"ts_ms": (ts // 1_000_000).to_numpy(), "rate": df["open"].astype(float)})
    return out.sort_values("ts_ms", kind="stable").reset_index(drop=True)


def _records(candles: pd.DataFrame, funding: pd.DataFrame) -> Iterator[tuple[str, dict[str, Any]]]:
    """Candle and funding records merged by availability time, as marketdata.files does:
    a funding rate before the candle that closes at its time (TIE_ORDER), so the bar
    closing at a settlement knows the new rate in training as it does in the flow."""

    def candle_rows() -> Iterator[tuple[int, int, str, dict[str, Any]]]:
        for ts, o, h, lo, c, v in candles[
            ["ts_ms", "open", "high", "low", "close", "volume"]
        ].itertuples(index=False, name=None):
            rec = {"symbol": SYMBOL, "ts_event_ms": int(ts), "interval_ms": BAR_MS}
            rec |= {"open": o, "high": h, "low": lo, "close": c, "volume": v}
            yield int(ts) + BAR_MS, TIE_ORDER["candles"], "candles", rec

    def funding_rows() -> Iterator[tuple[int, int, str, dict[str, Any]]]:
        for ts, rate in funding[["ts_ms", "rate"]].itertuples(index=False, name=None):
            rec = {"symbol": SYMBOL, "ts_event_ms": int(ts), "rate": rate}
            yield int(ts), TIE_ORDER["funding"], "funding", rec

    for _, _, stream, rec in heapq.merge(candle_rows(), funding_rows(), key=lambda r: r[:2]):
        yield stream, rec


def candle_frame(path: Path = RESEARCH_CANDLES) -> pd.DataFrame:
    from marketdata.files import FileSpec, load_candles

    return load_candles(FileSpec("candles", path))


def research_contexts(max_bars: int | None = None) -> list[BarContext]:
    """Every 5m close of the research file, through the flow's own operators."""
    candles = candle_frame()
    if max_bars is not None:
        candles = candles.iloc[:max_bars]
    funding = funding_frame()
    funding = funding[funding["ts_ms"] <= int(candles["ts_ms"].iloc[-1]) + BAR_MS]
    return list(contexts(_records(candles, funding), frozenset({SYMBOL})))


# -- scores -------------------------------------------------------------------------------
def ece(y: np.ndarray, p: np.ndarray) -> float:
    """Expected calibration error over 10 equal-count bins of p."""
    bins = quantile_bins(p)
    return float(
        sum(
            (bins == b).mean() * abs(p[bins == b].mean() - y[bins == b].mean())
            for b in np.unique(bins)
        )
    )


def forecast_scores(y: np.ndarray, p: np.ndarray, p_base: np.ndarray) -> dict[str, float]:
    brier = float(np.mean((p - y) ** 2))
    base = float(np.mean((p_base - y) ** 2))
    conf = np.maximum(p, 1.0 - p)
    return {
        "n": int(len(y)),
        "brier": brier,
        "brier_skill": 1.0 - brier / base,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "auc": float(roc_auc_score(y, p)) if len(np.unique(p)) > 1 else 0.5,
        "ece": ece(y, p),
        "share_conf_060": float(np.mean(conf >= 0.60)),
        "share_conf_065": float(np.mean(conf >= 0.65)),
    }


# -- artifacts and flow runs --------------------------------------------------------------
def write_artifact(
    out: Path, bundle: dict[str, Any], features: tuple[str, ...], horizon_bars: int, name: str
) -> Path:
    """model.pkl and the manifest fields operators/predict.py checks."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "model.pkl", "wb") as f:
        pickle.dump(bundle, f, protocol=5)
    sha = sha256_file(out / "model.pkl")
    manifest = {
        "model_id": f"research-{name}-{sha[:12]}",
        "features": list(features),
        "horizon_bars": horizon_bars,
        "versions": {"python": platform.python_version(), "scikit-learn": sklearn.__version__},
        "model_sha256": sha,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


class Spans:
    """Candle and funding files of one evaluation span (with warm-up before it), cached."""

    def __init__(self, candles: pd.DataFrame, funding: pd.DataFrame, work: Path) -> None:
        self.candles, self.funding, self.work = candles, funding, work
        self._made: dict[tuple[int, int], str] = {}

    def input(self, start_ms: int, end_ms: int, warmup_bars: int) -> str:
        """ENSEMBLE_INPUT for bars closing in [start_ms, end_ms], warm-up bars before."""
        key = (start_ms, end_ms)
        if key not in self._made:
            first_open = start_ms - BAR_MS * (warmup_bars + 1)
            c = self.candles
            sl = c[(c["ts_ms"] >= first_open) & (c["ts_ms"] + BAR_MS <= end_ms)]
            f = self.funding
            fsl = f[(f["ts_ms"] >= first_open - 8 * 3_600_000) & (f["ts_ms"] <= end_ms)]
            stem = self.work / f"span-{start_ms}-{end_ms}"
            sl.reset_index(drop=True).assign(
                date=pd.to_datetime(sl["ts_ms"].to_numpy(), unit="ms", utc=True)
            )[["date", "open", "high", "low", "close", "volume"]].to_feather(f"{stem}.feather")
            rows = [
                [int(t), float(r), 0, 0, 0, 0]
                for t, r in fsl[["ts_ms", "rate"]].itertuples(index=False, name=None)
            ]
            Path(f"{stem}.json").write_text(json.dumps(rows))
            self._made[key] = f"candles:{stem}.feather,funding:{stem}.json"
        return self._made[key]


def flow_run(
    spec: str,
    artifact: Path,
    preset_name: str,
    out: Path,
    horizon: int,
    warmup_bars: int | None = None,
) -> dict[str, Any]:
    """One replay of dataflows.ensemble; the figures pooled across folds."""
    from backtest import kpis, records
    from backtest.runner import Dataset, Options, Run, replay

    overrides: dict[str, Any] = {
        "execution.fee_bps": FEE_BPS,
        "execution.slippage_bps": SLIPPAGE_BPS,
    }
    if warmup_bars is not None:  # tests replay short spans
        overrides["warmup_bars"] = warmup_bars
    opts = Options(overrides=overrides, model_dir=artifact)
    run = Run(Dataset.parse(spec), preset_name)
    settings = run.settings(opts, out)
    if out.exists():
        shutil.rmtree(out)
    replay(settings)
    res = records.load(out)
    k = kpis.run_kpis(res, settings.strategy.risk.initial_equity, horizon)
    trips = k["round_trips"]
    return {
        "net_pnl_usd": float(k["kpis"]["net_pnl_usd"]),
        "daily_returns": [d["return"] for d in k["daily"]],
        "max_drawdown_5m": float(k["kpis"]["max_drawdown_5m"] or 0.0),
        "round_trips": len(trips),
        "wins": sum(1 for t in trips if t["pnl_usd"] > 0),
        "days": (k["evaluation"]["end_ms"] - k["evaluation"]["start_ms"]) / 86_400_000,
        "halts": k["kpis"]["halts"],
        "initial_equity_usd": float(settings.strategy.risk.initial_equity),
        "outcomes": dict(k["rejections"]["decision_outcomes"]),
    }


def passive_long(candles: pd.DataFrame, start_ms: int, end_ms: int) -> dict[str, Any]:
    """Buy-and-hold of base_notional from the span's first open to its last close, net of
    one round trip of fee and slippage (a passive figure, not a flow decision)."""
    from operators.config import preset

    risk = preset("ensemble_1_1").risk
    c = candles[(candles["ts_ms"] >= start_ms - BAR_MS) & (candles["ts_ms"] + BAR_MS <= end_ms)]
    ret = float(c["close"].iloc[-1] / c["open"].iloc[0] - 1.0)
    cost = 2 * (FEE_BPS + SLIPPAGE_BPS) / 1e4
    daily = c.assign(day=c["ts_ms"] // 86_400_000).groupby("day")["close"].last()
    eq = risk.initial_equity + risk.base_notional * (daily / float(c["open"].iloc[0]) - 1.0)
    rets = (eq / eq.shift(1).fillna(risk.initial_equity) - 1.0).tolist()
    peak = np.maximum.accumulate(np.concatenate([[risk.initial_equity], eq.to_numpy()]))
    dd = float(np.max(1.0 - np.concatenate([[risk.initial_equity], eq.to_numpy()]) / peak))
    return {
        "net_pnl_usd": risk.base_notional * (ret - cost),
        "daily_returns": rets,
        "max_drawdown_5m": dd,  # daily marks for the passive line
        "round_trips": 1,
        "wins": int(ret - cost > 0),
        "days": (end_ms - start_ms) / 86_400_000,
        "halts": 0,
        "initial_equity_usd": risk.initial_equity,
        "outcomes": {},
    }


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold runs pooled: summed PnL and trips, Sharpe over all days, worst drawdown."""
    rets = np.array([r for run in runs for r in run["daily_returns"]])
    trips = sum(r["round_trips"] for r in runs)
    days = sum(r["days"] for r in runs)
    sd = float(rets.std(ddof=1)) if len(rets) > 1 else 0.0
    reasons: dict[str, int] = {}
    for r in runs:
        for k, n in r["outcomes"].items():
            reasons[k] = reasons.get(k, 0) + n
    return {
        "net_pnl_usd": float(sum(r["net_pnl_usd"] for r in runs)),
        "sharpe": float(rets.mean() / sd * math.sqrt(365)) if sd > 0 else None,  # flat: none
        "max_drawdown": float(max(r["max_drawdown_5m"] for r in runs)),
        "round_trips": int(trips),
        "trades_per_week": trips / days * 7 if days else 0.0,
        "hit_rate": (sum(r["wins"] for r in runs) / trips) if trips else None,
        "halts": int(sum(r["halts"] for r in runs)),
        "per_fold_trips": [r["round_trips"] for r in runs],
        "top_outcomes": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:3]),
    }


# -- the evaluation -----------------------------------------------------------------------
@dataclass
class Fold:
    train: Labelled
    test: Labelled
    start_ms: int  # first test bar's close
    end_ms: int  # last test bar's close


def _take(d: Labelled, idx: np.ndarray) -> Labelled:
    return Labelled(d.x[idx], d.y[idx], d.fwd_ret[idx], d.end_ms[idx], d.past_ret[idx])


def folds_of(d: Labelled, label: LabelSpec, bounds_ms: list[tuple[int, int]]) -> list[Fold]:
    """Folds with the same test spans for every label: rows closing inside each span."""
    out = []
    purge = label.purge_bars * BAR_MS
    for a, b in bounds_ms:
        test_idx = np.flatnonzero((d.end_ms >= a) & (d.end_ms <= b))
        train_idx = np.flatnonzero(d.end_ms <= a - purge)
        out.append(Fold(_take(d, train_idx), _take(d, test_idx), a, b))
    return out


def fold_bounds(dev_end_ms: np.ndarray) -> list[tuple[int, int]]:
    """FOLDS consecutive spans of bar closes over the last 1 - FIRST_TEST of the dev bars."""
    n = len(dev_end_ms)
    edges = np.linspace(int(n * FIRST_TEST), n, FOLDS + 1).astype(int)
    return [
        (int(dev_end_ms[a]), int(dev_end_ms[b - 1]))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def dev_and_block(
    ctxs: list[BarContext], label: LabelSpec, features: tuple[str, ...]
) -> tuple[Labelled, Labelled]:
    d = labelled(
        ctxs,
        label.horizon_bars,
        label.dead_zone_bps,
        features,
        label.dead_zone_sigma,
        label.barrier_sigma,
    )
    horizon_ms = label.horizon_bars * BAR_MS
    dev = np.flatnonzero(d.end_ms + horizon_ms < TEST_BLOCK_START_MS)
    block = np.flatnonzero(d.end_ms >= TEST_BLOCK_START_MS)
    return _take(d, dev), _take(d, block)


def fit_candidate(c: Candidate, train: Labelled, log: Callable[[str], None]) -> dict[str, Any]:
    fitted = fit_ensemble(
        train.x, train.y, train.end_ms, c.label.purge_bars * BAR_MS, SEED, log, HGB_ITER
    )
    return fitted.bundle


def run(
    out_dir: Path = OUT_DIR,
    candidates: tuple[Candidate, ...] = CANDIDATES,
    max_bars: int | None = None,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    with threadpool_limits(limits=1, user_api="openmp"):
        return _run(out_dir, candidates, max_bars, log)


def _label_data(
    ctxs: list[BarContext], labels: list[LabelSpec]
) -> dict[str, tuple[Labelled, Labelled]]:
    return {lab.name: dev_and_block(ctxs, lab, FEATURES_V2) for lab in labels}


def _cols(features: tuple[str, ...]) -> list[int]:
    return [FEATURES_V2.index(f) for f in features]


def _sub(d: Labelled, cols: list[int]) -> Labelled:
    return Labelled(d.x[:, cols], d.y, d.fwd_ret, d.end_ms, d.past_ret)


def _run(
    out_dir: Path,
    candidates: tuple[Candidate, ...],
    max_bars: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctxs = research_contexts(max_bars)
    parity = check_parity(ctxs, display_spec(str(RESEARCH_CANDLES)))
    log(f"{len(ctxs)} 5m bars, v2 feature parity {parity:.1e} ({time.perf_counter() - t0:.0f} s)")
    candles, funding = candle_frame(), funding_frame()
    if max_bars is not None:
        candles = candles.iloc[:max_bars]
    by_name = {SHIPPED_LABEL.name: SHIPPED_LABEL} | {c.label.name: c.label for c in candidates}
    labels = list(by_name.values())
    data = _label_data(ctxs, labels)
    dev_closes = np.array([c.bar.end_ms for c in ctxs if c.bar.end_ms < TEST_BLOCK_START_MS])
    bounds = fold_bounds(dev_closes)
    block_end = int(ctxs[-1].bar.end_ms)
    log("folds: " + "; ".join(f"{utc_text(a)} .. {utc_text(b)}" for a, b in bounds))
    from operators.config import preset

    warmup = preset("ensemble_1_1").warmup_bars
    work = Path(tempfile.mkdtemp(prefix="ensemble-evaluate-"))
    try:
        spans = Spans(candles, funding, work)
        wf = _walk_forward(candidates, labels, data, bounds, spans, candles, warmup, work, log)
        ship = [c for c in candidates if shippable(wf["rows"][c.name])]
        log(f"walk-forward qualifies for the block: {[c.name for c in ship] or 'none'}")
        block = _block(
            ship, labels, data, (TEST_BLOCK_START_MS, block_end), spans, candles, warmup, work, log
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "data": {
            "candles": display_spec(str(RESEARCH_CANDLES)),
            "candles_sha256": sha256_file(RESEARCH_CANDLES),
            "funding": display_spec(str(RESEARCH_FUNDING)),
            "funding_sha256": sha256_file(RESEARCH_FUNDING),
            "bars_5m": len(ctxs),
            "feature_parity_max_abs": parity,
            "span_utc": [utc_text(int(ctxs[0].bar.end_ms)), utc_text(block_end)],
        },
        "test_block_utc": [utc_text(TEST_BLOCK_START_MS), utc_text(block_end)],
        "folds_utc": [[utc_text(a), utc_text(b)] for a, b in bounds],
        "costs": {"fee_bps": FEE_BPS, "slippage_bps": SLIPPAGE_BPS},
        "candidates": {
            c.name: {
                "label": c.label.name,
                "features": "v2" if c.features == FEATURES_V2 else "v1",
                "what": c.what,
            }
            for c in candidates
        },
        "walk_forward": wf,
        "block": block,
        "shipped_new_artifact": False,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(_clean(result), indent=2) + "\n")

    write_research_card(out_dir / "card.md", result)
    log(f"wrote {out_dir / 'card.md'} in {time.perf_counter() - t0:.0f} s")
    return result


def _clean(x: Any) -> Any:
    """JSON-safe: no daily series, floats rounded so reruns diff cleanly."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if k != "daily_returns"}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 8)
    return x


def shippable(row: dict[str, Any]) -> bool:
    """Pre-registered: a candidate goes to the block only if the walk-forward shows skill
    and the 1.1 preset made money trading in every fold."""
    pnl = row["pnl"]["ensemble_1_1"]
    return (
        row["scores"]["brier_skill"] > 0
        and pnl["net_pnl_usd"] > 0
        and min(pnl["per_fold_trips"]) >= 1
    )


def _forecasts_of(
    candidates: tuple[Candidate, ...],
    labels: list[LabelSpec],
    train: dict[str, Labelled],
    log: Callable[[str], None],
) -> dict[str, tuple[dict[str, Any], LabelSpec, tuple[str, ...], Any]]:
    """name -> (bundle, label, features, baseline rule or None), fit on `train` rows."""
    out: dict[str, Any] = {}
    shipped = train[SHIPPED_LABEL.name]
    for b in BASELINES:
        rule = fit_baseline(b, shipped.x, shipped.y, FEATURES_V2)
        out[b] = (rule_bundle(b, rule), SHIPPED_LABEL, FEATURES_V2, rule)
    for c in candidates:
        t = _sub(train[c.label.name], _cols(c.features))
        log(f"  fit {c.name} on {len(t)} rows")
        if c.primary is None:
            out[c.name] = (fit_candidate(c, t, log=lambda _: None), c.label, c.features, None)
            continue
        primary = fit_baseline(c.primary, t.x, t.y, c.features)
        purge_ms = c.label.purge_bars * BAR_MS
        ml = fit_metalabel(primary, t.x, t.y, t.end_ms, purge_ms, SEED, HGB_ITER)
        out[c.name] = (rule_bundle(c.name, ml), c.label, c.features, None)
    return out


def _score(
    name: str, fc: tuple, test: Labelled, p_base: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    from operators.predict import StackedEnsemble

    bundle, label, features, rule = fc
    x = _sub(test, _cols(features)).x
    p = StackedEnsemble(bundle).predict_proba(x)[0]
    return p, forecast_scores(test.y, p, p_base)


def _pnl_runs(
    name: str,
    fc: tuple,
    span: tuple[int, int],
    spans: Spans,
    candles: pd.DataFrame,
    warmup: int,
    work: Path,
) -> dict[str, dict[str, Any]]:
    bundle, label, features, _ = fc
    if name == "buy_and_hold":
        p = passive_long(candles, *span)
        return {pr: p for pr in PRESETS}
    art = write_artifact(work / f"art-{name}-{span[0]}", bundle, features, label.horizon_bars, name)
    spec = spans.input(span[0], span[1], warmup)
    return {
        pr: flow_run(spec, art, pr, work / f"run-{name}-{span[0]}-{pr}", label.horizon_bars)
        for pr in PRESETS
    }


def _walk_forward(
    candidates, labels, data, bounds, spans, candles, warmup, work, log
) -> dict[str, Any]:
    per_name: dict[str, dict[str, Any]] = {}
    for f, (a, b) in enumerate(bounds):
        t0 = time.perf_counter()
        log(f"[fold {f + 1}/{len(bounds)}] test {utc_text(a)} .. {utc_text(b)}")
        folds = {lab.name: folds_of(data[lab.name][0], lab, [(a, b)])[0] for lab in labels}
        fcs = _forecasts_of(candidates, labels, {k: v.train for k, v in folds.items()}, log)
        for name, fc in fcs.items():
            label = fc[1]
            fold = folds[label.name]
            p_base = np.full(len(fold.test), float(fold.train.y.mean()))
            p, _ = _score(name, fc, fold.test, p_base)
            acc = per_name.setdefault(
                name,
                {
                    "p": [],
                    "y": [],
                    "base": [],
                    "runs": {pr: [] for pr in PRESETS},
                    "label": label.name,
                },
            )
            acc["p"].append(p)
            acc["y"].append(fold.test.y)
            acc["base"].append(p_base)
            for pr, r in _pnl_runs(name, fc, (a, b), spans, candles, warmup, work).items():
                acc["runs"][pr].append(r)
        log(f"[fold {f + 1}/{len(bounds)}] done in {time.perf_counter() - t0:.0f} s")
    rows = {}
    for name, acc in per_name.items():
        y, p, base = (np.concatenate(acc[k]) for k in ("y", "p", "base"))
        rows[name] = {
            "label": acc["label"],
            "scores": forecast_scores(y, p, base),
            "pnl": {pr: pool(rs) for pr, rs in acc["runs"].items()},
        }
        s = rows[name]["scores"]
        log(
            f"  {name:<16} Brier skill {s['brier_skill']:+.4f}  AUC {s['auc']:.4f}  "
            f"1.1 PnL {rows[name]['pnl']['ensemble_1_1']['net_pnl_usd']:+.2f}"
        )
    return {"rows": rows}


def _block(ship, labels, data, span, spans, candles, warmup, work, log) -> dict[str, Any]:
    """The untouched block: baselines and qualifying candidates fit on all dev rows, and
    the shipped artifact as it is."""
    a, b = span
    log(f"[block] {utc_text(a)} .. {utc_text(b)}")
    train = {lab.name: data[lab.name][0] for lab in labels}
    tests = {lab.name: data[lab.name][1] for lab in labels}
    fcs = _forecasts_of(tuple(ship), labels, train, log)
    rows = {}
    for name, fc in fcs.items():
        label = fc[1]
        test = tests[label.name]
        p_base = np.full(len(test), float(train[label.name].y.mean()))
        _, s = _score(name, fc, test, p_base)
        rows[name] = {
            "label": label.name,
            "scores": s,
            "pnl": {
                pr: pool([r])
                for pr, r in _pnl_runs(name, fc, span, spans, candles, warmup, work).items()
            },
        }
    # The shipped artifact: trained on other files (2021-22, 2024, 2025-09/10); scored as is.
    from operators.predict import ModelRuntime

    rt = ModelRuntime(DEFAULT_ARTIFACT)
    test = tests[SHIPPED_LABEL.name]
    p = rt.model.predict_proba(_sub(test, _cols(FEATURES)).x)[0]
    p_base = np.full(len(test), float(train[SHIPPED_LABEL.name].y.mean()))
    spec = spans.input(a, b, warmup)
    rows["shipped_artifact"] = {
        "label": SHIPPED_LABEL.name,
        "scores": forecast_scores(test.y, p, p_base),
        "pnl": {
            pr: pool(
                [flow_run(spec, DEFAULT_ARTIFACT, pr, work / f"run-shipped-{pr}", rt.horizon_bars)]
            )
            for pr in PRESETS
        },
    }
    for name, r in rows.items():
        s, pnl = r["scores"], r["pnl"]["ensemble_1_1"]
        r["clears_bar"] = bool(
            s["brier_skill"] >= SHIP_MIN_BRIER_SKILL
            and pnl["net_pnl_usd"] > 0
            and pnl["round_trips"] >= SHIP_MIN_ROUND_TRIPS
        )
        log(
            f"  {name:<16} Brier skill {s['brier_skill']:+.4f}  AUC {s['auc']:.4f}  "
            f"1.1 PnL {pnl['net_pnl_usd']:+.2f} ({pnl['round_trips']} trips)"
        )
    return {
        "span_utc": [utc_text(a), utc_text(b)],
        "candidates_scored": [c.name for c in ship],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where card.md and results.json go")
    a = ap.parse_args(argv)
    for path in (RESEARCH_CANDLES, RESEARCH_FUNDING):
        if not path.is_file():
            raise SystemExit(f"models.evaluate: {path} is missing; it is in ../shared/data")
    try:
        run(a.out)
    except FitError as e:
        raise SystemExit(f"models.evaluate: {e}") from e


if __name__ == "__main__":
    main()
