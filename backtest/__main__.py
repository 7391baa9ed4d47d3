"""`python -m backtest`: replay the Ensemble dataflow over history and write the report.

    python -m backtest --data candles:FILE[,funding:FILE] [--data ...] \\
        --preset ensemble_1_0 --preset ensemble_1_1 --out DIR

Each --data is one dataset: the value of ENSEMBLE_INPUT for its runs (comma-separated
file specs, see marketdata/files.py, or `generator`). Every dataset is replayed under
every preset at +0 bps and at each --slippage-bps added, through dataflows.ensemble
itself. Writes DIR/report.html, DIR/report.json (every figure; identical for identical
inputs), DIR/run.json (timings, processing latency, versions) and DIR/runs/ (the flow's
outputs of each +0 bps run). A progress bar goes to stderr, the headline to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backtest.holdout import block_dataset
from backtest.report import DEFAULT_SLIPPAGE_BPS, run_backtest, write
from backtest.runner import BacktestError, Dataset, Options, unique_labels
from marketdata.files import FileSpecError
from operators.config import PRESETS, ConfigError, preset
from operators.predict import DEFAULT_ARTIFACT

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# The real files the shipped model was trained on: `--data in-sample` replays them.
IN_SAMPLE_DATA = (
    f"candles:{SHARED}/binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json,"
    f"funding:{SHARED}/binance_usdm_BTC_USDT_funding_8h.json",
    f"candles:{SHARED}/ftx_btc-perp_2021-12-31_2022-02-01_1m.csv?volume=quote",
    f"candles:{SHARED}/binance_spot_BTC_USDT_2024-07-26_2024-08-25_1m.feather",
)


def _slippages(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated numbers of bps, e.g. 0,2,5,10"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no slippage")
    return values


def _overrides(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object of dotted settings")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m backtest",
        description="Replay the Ensemble dataflow over historical files under several presets "
        "and write report.html and report.json.",
    )
    p.add_argument(
        "--data",
        action="extend",
        nargs="+",
        metavar="SPEC[,SPEC...]",
        help="one dataset per value: file specs KIND:PATH[?symbol=..&volume=quote] joined "
        "by commas (as ENSEMBLE_INPUT), `generator`, or `in-sample` (the three real files "
        "the shipped model was trained on). Default: the untouched test block of the "
        "research file (perp 5m candles and funding, 2026-01-08 .. 2026-02-19), outside "
        "the model's training range",
    )
    p.add_argument(
        "--preset",
        action="append",
        choices=sorted(PRESETS),
        help="preset to run (repeat for several; default: all, side by side)",
    )
    p.add_argument("--out", type=Path, default=Path("out/backtest"), help="report directory")
    p.add_argument(
        "--slippage-bps",
        type=_slippages,
        default=DEFAULT_SLIPPAGE_BPS,
        help="bps added to the preset's slippage for the sensitivity runs (default 0,2,5,10)",
    )
    p.add_argument(
        "--overrides",
        type=_overrides,
        default={},
        help="JSON of dotted settings applied on top of every preset, "
        "e.g. '{\"warmup_bars\": 300}'",
    )
    p.add_argument("--seed", type=int, default=7, help="bandit (and generator) seed")
    p.add_argument("--days", type=float, default=6.0, help="days of the generator dataset")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_ARTIFACT, help="model artifact")
    p.add_argument(
        "--discard-runs",
        action="store_true",
        help="do not keep the flow's outputs of the +0 bps runs in DIR/runs/",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


HEADLINE = (  # column, key in kpis, format, width
    ("net PnL", "net_pnl_usd", ",.2f", 10),
    ("return", "total_return", ".3%", 9),
    ("Sharpe", "sharpe", ".2f", 8),
    ("Sortino", "sortino", ".2f", 9),
    ("max DD", "max_drawdown_daily", ".2%", 8),
    ("trips", "round_trips", "d", 7),
    ("hit", "hit_rate", ".0%", 6),
    ("costs/gross %", "costs_pct_of_gross", ".0f", 15),
    ("Brier", "brier", ".4f", 8),
)


def _cell(value: object, spec: str, width: int) -> str:
    return format("n/a" if value is None else format(value, spec), f">{width}")


def headline(report: dict) -> str:
    """The few numbers to read first, per dataset and preset (the rest is in the report)."""
    lines = []
    for ds in report["datasets"]:
        note = {
            True: "  (in-sample for the model)",
            False: "  (out of sample: not in the model's training data or its days)",
        }.get(ds["model_in_sample"], "")
        worst = report["slippage_added_bps"][-1]
        lines.append(f"{ds['label']}{note}")
        lines.append(
            f"  {'preset':<14}"
            + "".join(format(name, f">{w}") for name, _, _, w in HEADLINE)
            + format(f"PnL +{worst:g}bps", ">14")
        )
        for p, b in ds["presets"].items():
            k = b["kpis"]
            lines.append(
                f"  {p:<14}"
                + "".join(_cell(k[key], spec, w) for _, key, spec, w in HEADLINE)
                + _cell(b["slippage"][-1]["net_pnl_usd"], ",.2f", 14)
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        presets = args.preset or sorted(PRESETS)
        specs = [x for s in args.data or [] for x in (IN_SAMPLE_DATA if s == "in-sample" else [s])]
        if specs:
            datasets = unique_labels([Dataset.parse(s) for s in specs])
        else:
            warmup = max(preset(p).with_overrides(args.overrides).warmup_bars for p in presets)
            datasets = [block_dataset(args.out / "data", warmup)]
        opts = Options(
            overrides=args.overrides, seed=args.seed, days=args.days, model_dir=args.model_dir
        )
        report, meta, charts = run_backtest(
            datasets,
            presets,
            args.out,
            opts,
            slippage_bps=args.slippage_bps,
            show_progress=not args.quiet,
            keep_runs=not args.discard_runs,
        )
    except (BacktestError, ConfigError, FileSpecError) as e:
        print(f"backtest: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"writing the report to {args.out} ...", file=sys.stderr)
    write(args.out, report, meta, charts)
    print(headline(report))
    print(f"report: {args.out / 'report.html'}  figures: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
