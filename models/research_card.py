"""The research card (models/research/card.md): every candidate and baseline side by side.

Written by `python -m models.evaluate` from its results; nothing here computes a figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PRESET_SHORT = {"ensemble_1_0": "1.0", "ensemble_1_1": "1.1"}


def _num(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(rows: dict[str, Any]) -> list[str]:
    """One row per forecaster: forecast scores, then each preset's trading figures."""
    head = ["forecaster", "label", "n", "Brier", "skill", "log loss", "AUC", "ECE", "conf≥0.60"]
    for short in PRESET_SHORT.values():
        head += [
            f"{short} net PnL $",
            f"{short} Sharpe",
            f"{short} max DD",
            f"{short} trips/wk",
            f"{short} hit",
        ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        s = r["scores"]
        cells = [
            name,
            r["label"],
            str(s["n"]),
            _num(s["brier"], ".5f"),
            _num(s["brier_skill"], "+.2%"),
            _num(s["log_loss"], ".5f"),
            _num(s["auc"], ".4f"),
            _num(s["ece"], ".4f"),
            _num(s["share_conf_060"], ".2%"),
        ]
        for preset in PRESET_SHORT:
            p = r["pnl"][preset]
            cells += [
                _num(p["net_pnl_usd"], ",.2f"),
                _num(p["sharpe"], ".2f"),
                _num(p["max_drawdown"], ".2%"),
                _num(p["trades_per_week"], ".1f"),
                _num(p["hit_rate"], ".0%"),
            ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def outcomes(rows: dict[str, Any]) -> list[str]:
    """What the 1.1 preset decided at each bar, most frequent first (from the flow)."""
    out = []
    for name, r in rows.items():
        top = r["pnl"]["ensemble_1_1"].get("top_outcomes") or {}
        if top:
            out.append(f"- `{name}`: " + ", ".join(f"{k} {n}" for k, n in top.items()))
    return out


def write_research_card(path: Path, res: dict[str, Any]) -> None:
    d, block = res["data"], res["block"]
    wf_rows = res["walk_forward"]["rows"]
    lines = [
        "# Signal research card (issue 13)",
        "",
        "Written by `python -m models.evaluate` (reproduce from a clean clone with "
        "`make evaluate`); every figure below is in `results.json` beside this file.",
        "",
        "## Data and the untouched test block",
        "",
        f"- Candles: `{d['candles']}` ({d['bars_5m']} 5m bars, {d['span_utc'][0]} .. "
        f"{d['span_utc'][1]}), funding: `{d['funding']}`; streaming vs batch features "
        f"(v1 and v2) agree to {d['feature_parity_max_abs']:.1e}.",
        f"- **Test block: bars closing {res['test_block_utc'][0]} .. {res['test_block_utc'][1]} "
        "(the final 6 weeks), set aside before any result was looked at.** Nothing was tuned "
        "on it. Walk-forward rows are the bars before it whose label window also ends before it.",
        "- Walk-forward test folds (expanding, purged by max(12, horizon) bars): "
        + "; ".join(f"{a} .. {b}" for a, b in res["folds_utc"])
        + ".",
        f"- Costs in every PnL figure: fee {res['costs']['fee_bps']:g} bps + slippage "
        f"{res['costs']['slippage_bps']:g} bps per fill. PnL, Sharpe (daily returns, √365), "
        "max drawdown (5m marks), round trips per week and hit rate come from the real "
        "dataflow (`dataflows.ensemble` via `backtest/runner.py`) replaying each fold with "
        "the fold's fitted model as its artifact; presets ensemble_1_0 and ensemble_1_1 "
        "with SPEC's thresholds, unchanged. buy_and_hold's PnL is the passive long of "
        "base_notional (5,000 USD) net of one round trip, not a flow decision.",
        "- Brier skill = 1 − Brier / Brier of always the training base rate; ECE over 10 "
        "equal-count bins; `conf≥0.60` is the share of rows where max(p, 1−p) ≥ 0.60 "
        "(CONF_MIN of 1.0).",
        "",
        "## Candidates",
        "",
    ]
    for name, c in res["candidates"].items():
        lines.append(f"- `{name}`: {c['what']} (label {c['label']}, features {c['features']})")
    lines += [
        "- Baselines (fit on each fold's training rows): `base_rate`, `buy_and_hold` (always "
        "up), `momentum_1h` (sign of the last hour), `reversal_15m` (against the last 15 "
        "minutes); their probability is their training hit rate. Scored on label h3/5bps.",
        "",
        "## Walk-forward (development data only)",
        "",
        *table(wf_rows),
        "",
        "The flow's decisions under 1.1 (bars, most frequent outcomes first; a model arm "
        "needs conf ≥ CONF_MIN 0.65 and alpha ≥ ALPHA_MIN 0.10, the cohort arms need "
        "addresses, which candles do not have):",
        "",
        *outcomes(wf_rows),
        "",
        "The trade-size cohort proxy (issue 13 item 3: arms `pros_size_proxy` / "
        "`amateurs_size_proxy`, from large vs small prints ranked by their own past skill) is "
        "not in these tables: it classifies prints, a candle has none, so its arms never "
        "exist in a candle replay. It is measured where prints exist, on the generator with "
        "its addresses stripped and on the two real Binance trade samples (46 s and 6 min "
        "long, so unmeasured on real data), in [size_proxy.md](size_proxy.md) "
        "(`python -m models.size_proxy_eval`).",
        "",
        "## The test block",
        "",
        "Pre-registered rule: a candidate is scored on the block only if its walk-forward "
        "Brier skill is positive and the 1.1 preset made money with trades in every fold. "
        "Qualified: "
        + (", ".join(f"`{n}`" for n in block["candidates_scored"]) or "**none**")
        + ". The shipped artifact (trained on the other files, never on this one) and the "
        "baselines are scored as the reference.",
        "",
        *table(block["rows"]),
        "",
        *outcomes(block["rows"]),
        "",
        "## Verdict",
        "",
    ]
    clear = [
        n for n, r in block["rows"].items() if r["clears_bar"] and n in block["candidates_scored"]
    ]
    if clear:
        lines.append(
            f"Cleared the bar (Brier skill ≥ +1%, 1.1 net positive with ≥ 100 trips): {clear}."
        )
    else:
        lines.append(
            "**No edge found; nothing new shipped.** No candidate cleared issue 13's bar on the "
            "block (Brier skill ≥ +1% over the base rate and the 1.1 preset net positive after "
            "costs with ≥ 100 round trips); the shipped artifact stays. The tables above are "
            "what each tried and scored."
        )
    lines.append("")
    path.write_text("\n".join(lines))
