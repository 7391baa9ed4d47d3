"""The backtest: replay every dataset under every preset and slippage, then write the report.

Output directory:
  report.json   every figure of the report; identical for identical inputs (no wall clock)
  report.html   the same figures with charts, one file that opens offline
  trades.csv    every closed round trip of every dataset and preset (+0 bps runs)
  run.json      what varies from run to run: when, how long, processing latency, versions
  runs/<dataset>/<preset>/   the flow's own JSON-lines outputs of each +0 bps run
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from backtest import definitions, kpis, records, trades
from backtest.progress import Progress
from backtest.runner import BacktestError, Dataset, Options, Run, count_messages, replay
from marketdata.files import FileSpec, candle_interval_ms, load_candles
from operators.predict import ArtifactError, load_runtime, sha256_file

DEFAULT_SLIPPAGE_BPS = (0.0, 2.0, 5.0, 10.0)
REPORT_VERSION = 1


@dataclass
class Charts:
    """What the charts need beyond report.json: every 5m mark of each equity curve."""

    equity_5m: dict[tuple[int, str], pd.Series] = field(default_factory=dict)
    benchmark_5m: dict[int, pd.Series] = field(default_factory=dict)  # buy-and-hold, per dataset
    closes_5m: dict[int, dict[str, pd.Series]] = field(default_factory=dict)  # symbol -> closes
    positions_5m: dict[tuple[int, str], dict[str, pd.Series]] = field(default_factory=dict)


def _jsonable(v: Any) -> Any:
    """report.json has no NaN or infinity: they become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        return _jsonable(v.item())
    return v


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(_jsonable(report), indent=1, sort_keys=True, allow_nan=False) + "\n"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Settings whose values differ between the presets as run (after overrides)."""
    flat = {p: _flatten(c) for p, c in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values())))
    rows = []
    for k in keys:
        values = {p: f.get(k) for p, f in flat.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            rows.append({"setting": k, "values": values})
    return rows


def _model_info(model_dir: Path) -> dict[str, Any]:
    try:
        rt = load_runtime(str(model_dir))
    except ArtifactError as e:
        raise BacktestError(f"model artifact: {e}") from None
    m = rt.manifest
    span = m.get("training_span_ms") or [None, None]
    return {
        "model_id": rt.model_id,
        "model_sha256": m.get("model_sha256"),
        "horizon_bars": rt.horizon_bars,
        "training_span": [None if t is None else kpis.iso_time(t) for t in span],
        "training_data_sha256": sorted(d["sha256"] for d in m.get("data", []) if "sha256" in d),
        "training_spans_ms": sorted(
            {tuple(_utc_ms(t) for t in d["span_utc"]) for d in m.get("data", []) if "span_utc" in d}
        ),
        "holdout_metrics": m.get("metrics", {}).get("holdout_calibrated"),
    }


def _utc_ms(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value // 1_000_000)


def _candle_span_ms(spec: FileSpec) -> tuple[int, int] | None:
    """First open and last close of a candle file; None for other kinds."""
    if spec.kind != "candles":
        return None
    ts = load_candles(spec)["ts_ms"].to_numpy()
    return int(ts[0]), int(ts[-1]) + candle_interval_ms(ts)


def _dataset_info(ds: Dataset, model: dict[str, Any], n_records: int) -> dict[str, Any]:
    """Which files the model was trained on: the same checksum, or candles of the same days
    (a slice or another download of a training file is in-sample too)."""
    known = model["training_data_sha256"]  # empty: the manifest lists no checksums
    spans = model.get("training_spans_ms", [])
    files = []
    for spec in ds.files:
        sha = sha256_file(spec.path)
        span = _candle_span_ms(spec)
        overlaps = span is not None and any(a < span[1] and span[0] < b for a, b in spans)
        files.append(
            {
                "kind": spec.kind,
                "path": str(spec.path),
                "symbol": spec.symbol,
                "sha256": sha,
                "span": None if span is None else [kpis.iso_time(t) for t in span],
                "in_model_training_data": (sha in known or overlaps) if known or spans else None,
            }
        )
    flags = [f["in_model_training_data"] for f in files]
    return {
        "label": ds.label,
        "input": ds.input,
        "files": files,
        "input_records": n_records,
        "model_in_sample": True if any(flags) else (None if None in flags else False),
        "model_training_span": model["training_span"],
    }


def _comparison(presets: dict[str, Any]) -> dict[str, Any]:
    """Each preset's headline KPIs minus the first preset's."""
    names = list(presets)
    if len(names) < 2:
        return {}
    base = presets[names[0]]["kpis"]
    out: dict[str, Any] = {"baseline": names[0], "diff": {}}
    for p in names[1:]:
        k = presets[p]["kpis"]
        out["diff"][p] = {
            key.key: (
                None
                if not isinstance(k.get(key.key), (int, float))
                or not isinstance(base.get(key.key), (int, float))
                else k[key.key] - base[key.key]
            )
            for key in definitions.KPIS
        }
    return out


def _replay(
    run: Run,
    opts: Options,
    out: Path,
    wall_clock: bool,
    progress: Progress | None,
    meta: dict[str, Any],
) -> float:
    """One replay into `out`; returns the initial equity of each symbol's book."""
    if out.exists():
        shutil.rmtree(out)
    settings = run.settings(opts, out, wall_clock=wall_clock)
    if progress:
        progress.start_run(run.label)
    t0 = time.perf_counter()
    replay(settings, progress)
    meta["runs"].append(
        {"run": run.label, "seconds": round(time.perf_counter() - t0, 3), "out": str(out)}
    )
    if progress:
        progress.end_run()
    return settings.strategy.risk.initial_equity


def _preset_block(
    i: int,
    ds: Dataset,
    preset_name: str,
    adds: list[float],
    opts: Options,
    model: dict[str, Any],
    tmp: Path,
    keep: Path | None,
    progress: Progress | None,
    meta: dict[str, Any],
    charts: Charts,
    info: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of one preset on one dataset: the +0 bps run in full, then slippage."""
    base = Run(ds, preset_name)
    base_dir = keep or tmp / f"{i}-{preset_name}-base"
    initial = _replay(base, opts, base_dir, True, progress, meta)  # wall clock: latency
    out = records.load(base_dir)
    try:
        block = kpis.run_kpis(out, initial, model["horizon_bars"])
    except kpis.NothingDecided as e:
        raise BacktestError(f"{base.label}: {e}") from None
    block["config"] = out.config
    t_start = block["evaluation"]["start_ms"]
    meta["processing_latency_ms"].setdefault(ds.label, {})[preset_name] = kpis.processing_latency(
        out
    )
    equity = kpis.Book(out, initial, t_start).equity
    charts.equity_5m[(i, preset_name)] = equity
    _trader_view(i, preset_name, block, out, initial, equity, charts)
    if "completeness" not in info:  # bars do not depend on the preset
        info["completeness"] = kpis.completeness(out.bars_5m)
        info["dead_letters"] = out.summary.get("dead_letters", 0)
        info["dead_letter_reasons"] = out.summary.get("dead_letter_reasons", {})
    rows = []
    for x in adds:
        run = Run(ds, preset_name, x)
        if x == 0.0:
            sens = out
        else:
            run_dir = tmp / f"{i}-{preset_name}-{x:g}"
            _replay(run, opts, run_dir, False, progress, meta)
            sens = records.load(run_dir, full=False)
            shutil.rmtree(run_dir)
        rows.append(
            {
                "added_bps": x,
                "slippage_bps": run.slippage_bps(opts),
                **kpis.slippage_kpis(sens, initial, t_start),
            }
        )
    if keep is None:
        shutil.rmtree(base_dir)
    for r in rows:
        r["pnl_change_usd"] = r["net_pnl_usd"] - rows[0]["net_pnl_usd"]
    block["slippage"] = rows
    return block


def _trader_view(
    i: int,
    preset_name: str,
    block: dict[str, Any],
    out: records.RunOutputs,
    initial: float,
    equity: pd.Series,
    charts: Charts,
) -> None:
    """The trade list, per-symbol breakdown, monthly returns, buy-and-hold benchmark and
    the small-sample warning of one preset, added to its block; price, position and the
    benchmark curve kept for the charts."""
    t_start = block["evaluation"]["start_ms"]
    marks = trades.closes(out, t_start)
    bench = trades.buy_and_hold(marks, initial, equity.index)
    rows = trades.trade_list(out, block["round_trips"])
    block["trade_list"] = rows
    block["per_symbol"] = trades.per_symbol(rows, marks, initial)
    block["monthly"] = trades.monthly(equity, bench)
    block["benchmark"] = trades.curve_kpis(bench)
    k = block["kpis"]
    block["sample_warning"] = trades.sample_warning(k["round_trips"], k["eval_days"])
    charts.benchmark_5m[i] = bench
    charts.closes_5m[i] = marks
    charts.positions_5m[(i, preset_name)] = trades.positions(out, marks)


def run_backtest(
    datasets: list[Dataset],
    presets: list[str],
    out_dir: Path,
    opts: Options,
    slippage_bps: tuple[float, ...] = DEFAULT_SLIPPAGE_BPS,
    show_progress: bool = True,
    keep_runs: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], Charts]:
    """Run everything; returns (report, run metadata, chart data).

    With `keep_runs` the flow's outputs of each +0 bps run stay in out_dir/runs/.
    """
    if not datasets:
        raise BacktestError("no --data given")
    if not presets:
        raise BacktestError("no --preset given")
    if len(set(presets)) != len(presets):
        raise BacktestError(f"--preset repeated: {presets}")
    adds = sorted(set(slippage_bps) | {0.0})
    if any(not (0 <= x < 100) for x in adds):
        raise BacktestError(f"--slippage-bps {list(slippage_bps)}: each must be in [0, 100)")
    model = _model_info(opts.model_dir)
    runs_dir = out_dir / "runs"
    plan = [Run(d, p, x) for d in datasets for p in presets for x in adds]
    for r in plan:  # every setting is checked before the first replay starts
        r.settings(opts, runs_dir)
    counts = {d: count_messages(Run(d, presets[0]).settings(opts, runs_dir)) for d in datasets}
    progress = Progress(sum(counts[r.dataset] for r in plan), len(plan)) if show_progress else None
    charts = Charts()
    meta: dict[str, Any] = {
        "started_utc": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "argv": sys.argv,
        "out_dir": str(out_dir),
        "versions": _versions(),
        "runs": [],
        "processing_latency_ms": {},
    }
    t_all = time.perf_counter()
    report_sets = []
    with tempfile.TemporaryDirectory(prefix="backtest-") as tmp:
        for i, ds in enumerate(datasets):
            info = _dataset_info(ds, model, counts[ds])
            per_preset: dict[str, Any] = {}
            for p in presets:
                keep = runs_dir / _safe(ds.label) / p if keep_runs else None
                per_preset[p] = _preset_block(
                    i, ds, p, adds, opts, model, Path(tmp), keep, progress, meta, charts, info
                )
            report_sets.append(
                {
                    **info,
                    "presets": per_preset,
                    "comparison": _comparison(per_preset),
                    "config_differences": config_differences(
                        {p: b["config"] for p, b in per_preset.items()}
                    ),
                }
            )
    if progress:
        progress.close()
    meta["seconds_total"] = round(time.perf_counter() - t_all, 3)
    report = {
        "report": "Ensemble backtest",
        "version": REPORT_VERSION,
        "presets": presets,
        "slippage_added_bps": adds,
        "overrides": opts.overrides,
        "seed": opts.seed,
        "model": model,
        "conventions": {
            "annualisation": definitions.ANNUALISATION,
            "periods_per_year": 365,
            "risk_free_rate": 0.0,
            "day": "UTC calendar day; equity of a day = mark at the close of its last 5m bar",
            "evaluation_window": "from the first 5m close after the warm-up to the last close",
            "account": "sum of every symbol's book, each starting at risk.initial_equity",
            "slippage": definitions.SLIPPAGE_FORMULA,
            "deciles": definitions.DECILE_FORMULA,
            "calibration": definitions.CALIBRATION_FORMULA,
            "latency": definitions.LATENCY_FORMULA,
            "completeness": definitions.COMPLETENESS_FORMULA,
        },
        "definitions": [
            {"key": k.key, "name": k.name, "unit": k.kind, "formula": k.formula}
            for k in definitions.KPIS
        ],
        "datasets": report_sets,
    }
    return _jsonable(report), _jsonable(meta), charts


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("bytewax", "numpy", "pandas", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def write(out_dir: Path, report: dict[str, Any], meta: dict[str, Any], charts: Charts) -> None:
    from backtest.html import render

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(dumps(report), encoding="utf-8")
    (out_dir / "run.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    (out_dir / "report.html").write_text(render(report, meta, charts), encoding="utf-8")
    rows = [
        {"dataset": ds["label"], "preset": p, **r}
        for ds in report["datasets"]
        for p in report["presets"]
        for r in ds["presets"][p].get("trade_list", [])
    ]
    (out_dir / "trades.csv").write_text(trades.to_csv(rows), encoding="utf-8")
