"""report.html: every figure of report.json, the presets side by side, charts inline.

One self-contained file: inline CSS, inline SVG charts, one small inline script that
marks each chart as rendered (used by the headless-browser test); no external script,
font, stylesheet or image. Every number that comes from report.json carries
`data-key` (its path in report.json, "/"-separated) and `data-value` (its JSON value), so
a test can check the page against the JSON; numbers from run.json have keys "run:...".
"""

from __future__ import annotations

import html
import json
from typing import Any

from backtest import charts, definitions

# Sections every dataset has, in page order (ids are ds<i>-<section>).
SECTIONS = (
    "headline",
    "equity",
    "tradelist",
    "prices",
    "symbols",
    "monthly",
    "slippage",
    "trades",
    "calibration",
    "rejections",
    "arms",
    "daily",
    "latency",
    "completeness",
    "config",
)
TOP_SECTIONS = ("summary", "conventions", "definitions", "model", "run")
SUMMARY_KPIS = (
    "net_pnl_usd",
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown_daily",
    "max_drawdown_5m",
    "round_trips",
    "hit_rate",
    "trades_per_day",
    "turnover_per_day",
    "costs_pct_of_gross",
    "brier",
)
# the KPIs a small sample makes meaningless, flagged next to their value
SMALL_SAMPLE_KPIS = ("sharpe", "sortino", "hit_rate")
TRADE_ROWS_SHOWN = 200  # per preset on the page; trades.csv has them all
TITLES = {
    "headline": "KPIs, presets side by side",
    "equity": "Equity and drawdown, against buy and hold",
    "tradelist": "Trade list",
    "prices": "Prices with entries and exits; position over time",
    "symbols": "Per symbol",
    "monthly": "Monthly returns",
    "slippage": "Slippage sensitivity",
    "trades": "Trades and hit rate by confidence decile",
    "calibration": "Model calibration",
    "rejections": "Rejections by reason",
    "arms": "Arm choice frequencies",
    "daily": "Daily PnL",
    "latency": "Decision latency",
    "completeness": "Data completeness",
    "config": "How the presets differ",
}

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1180px;padding:0 18px 60px;color:#222;line-height:1.4}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
h3{margin-top:26px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.formula,p.formula{color:#555;font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:6px 0}figure svg{max-width:100%;height:auto}
figure.wide svg{width:100%}
.small-sample{color:#a05a00;font-size:12px;font-weight:normal;white-space:nowrap}
details.dataset>summary{cursor:pointer}details.dataset>summary h2{display:inline}
.warn{background:#fff4e0;border:1px solid #f0b060;padding:8px 12px;border-radius:4px}
nav a{margin-right:10px}details{margin:6px 0}
code{background:#f4f4f4;padding:0 3px}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var figs = document.querySelectorAll('figure.chart'), ok = 0;
  figs.forEach(function (f) {
    var svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : null;
    var drawn = svg ? svg.querySelectorAll('path,use,rect,text').length : 0;
    var rendered = !!(box && box.width > 50 && box.height > 50 && drawn > 10);
    f.setAttribute('data-rendered', rendered ? 'yes' : 'no');
    if (rendered) { ok += 1; }
  });
  document.body.setAttribute('data-charts-total', String(figs.length));
  document.body.setAttribute('data-charts-rendered', String(ok));
});
"""


_IN_SAMPLE = {True: "yes", False: "no", None: "unknown (the manifest lists no checksums)"}


def fmt(value: Any, kind: str) -> str:
    """How a number is printed; None is n/a."""
    if value is None:
        return "n/a"
    if kind == "usd":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{100 * value:.3f}%"
    if kind == "percent":
        return f"{value:.1f}%"
    if kind == "int":
        return f"{int(value):,d}"
    if kind == "bps":
        return f"{value:.2f}"
    if kind == "prob":
        return f"{value:.5f}"
    if kind == "ms":
        return f"{value:,.1f}"
    return f"{value:.4f}"  # ratio


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _key(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def num(value: Any, kind: str, key: str) -> str:
    return (
        f'<td class="num" data-key="{_e(key)}" data-kind="{kind}" '
        f'data-value="{_e(json.dumps(value))}">{_e(fmt(value, kind))}</td>'
    )


def _table(head: list[str], rows: list[str], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _figure(name: str, svg: str, caption: str, wide: bool = True) -> str:
    cls = "chart wide" if wide else "chart"
    return (
        f'<figure class="{cls}" data-chart="{_e(name)}">{svg}'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _div(title: str, body: str) -> str:
    return f"<div><h4>{_e(title)}</h4>{body}</div>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h3>{_e(title)}</h3>{body}</section>'


# -- per dataset -------------------------------------------------------------------------
def _headline(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    cmp = ds.get("comparison") or {}
    others = list((cmp.get("diff") or {}).keys())
    head = ["KPI", *[_e(p) for p in presets]]
    head += [f"{_e(o)} − {_e(cmp['baseline'])}" for o in others]
    head.append("formula")
    rows = []
    warned = {p: ds["presets"][p].get("sample_warning") for p in presets}
    for k in definitions.KPIS:
        note = ""
        if k.key in SMALL_SAMPLE_KPIS and any(warned.values()):
            note = "".join(
                f'<br><span class="small-sample" data-warning="{_e(p)}">⚠ {_e(p)}: '
                f"{_e(w)}; read it as noise</span>"
                for p, w in warned.items()
                if w
            )
        cells = [f"<td>{_e(k.name)}{note}</td>"]
        for p in presets:
            cells.append(
                num(
                    ds["presets"][p]["kpis"].get(k.key),
                    k.kind,
                    _key("datasets", i, "presets", p, "kpis", k.key),
                )
            )
        for o in others:
            cells.append(
                num(
                    cmp["diff"][o].get(k.key),
                    k.kind,
                    _key("datasets", i, "comparison", "diff", o, k.key),
                )
            )
        cells.append(f'<td class="formula">{_e(k.formula)}</td>')
        rows.append("".join(cells))
    windows = "; ".join(
        f"{_e(p)}: {_e(ds['presets'][p]['evaluation']['start'])} → "
        f"{_e(ds['presets'][p]['evaluation']['end'])} UTC"
        for p in presets
    )
    return f"<p>Evaluation window (after the warm-up): {windows}.</p>" + _table(head, rows)


def _benchmark_table(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    cols = (("net_pnl_usd", "net PnL", "usd"), ("total_return", "total return", "pct"),
            ("max_drawdown_5m", "max drawdown (5m)", "pct"))  # fmt: skip
    rows = []
    for p in presets:
        base = _key("datasets", i, "presets", p, "kpis")
        rows.append(
            f"<td>{_e(p)}</td>"
            + "".join(
                num(ds["presets"][p]["kpis"].get(c), kind, _key(base, c)) for c, _, kind in cols
            )  # fmt: skip
        )
    bench = ds["presets"][presets[0]].get("benchmark")
    if bench:
        base = _key("datasets", i, "presets", presets[0], "benchmark")
        rows.append(
            "<td>buy and hold (same data, each symbol's book held from the first close)</td>"
            + "".join(num(bench.get(c), kind, _key(base, c)) for c, _, kind in cols)
        )
    return _table(["", *[label for _, label, _ in cols]], rows)


def _equity(i: int, ds: dict[str, Any], presets: list[str], ch: Any) -> str:
    curves = {p: ch.equity_5m[(i, p)] for p in presets if (i, p) in ch.equity_5m}
    if not curves:
        return "<p>No equity curve.</p>"
    bench = getattr(ch, "benchmark_5m", {}).get(i)
    return (
        _benchmark_table(i, ds, presets)
        + _figure(
            "equity",
            charts.equity(curves, bench),
            "Account equity, USD, at every 5m close; dashed: buy and hold of the same data.",
        )
        + _figure(
            "drawdown",
            charts.drawdown(curves),
            "Drawdown from the running peak, at every 5m close.",
        )
    )


def _trade_list(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    parts = []
    for p in presets:
        rows_all = ds["presets"][p].get("trade_list") or []
        rows = []
        for j, r in enumerate(rows_all[:TRADE_ROWS_SHOWN]):
            base = _key("datasets", i, "presets", p, "trade_list", j)
            rows.append(
                f"<td>{_e(r['symbol'])}</td><td>{_e(r['side'])}</td>"
                f"<td>{_e(r['entry_time'] or 'before the data')}</td>"
                + num(r["entry_px"], "usd", _key(base, "entry_px"))
                + f"<td>{_e(r['exit_time'])}</td>"
                + num(r["exit_px"], "usd", _key(base, "exit_px"))
                + num(r["qty"], "ratio", _key(base, "qty"))
                + f"<td>{_e(r['arm'] or '')}</td>"
                + num(r["entry_conf"], "prob", _key(base, "entry_conf"))
                + f"<td>{_e(r['exit_reason'])}</td>"
                + num(r["pnl_usd"], "usd", _key(base, "pnl_usd"))
                + num(r["fees_usd"], "usd", _key(base, "fees_usd"))
            )
        more = (
            f"<p>The first {TRADE_ROWS_SHOWN} of {len(rows_all)}; all are in trades.csv.</p>"
            if len(rows_all) > TRADE_ROWS_SHOWN
            else ""
        )
        body = (
            _table(
                [
                    "symbol",
                    "side",
                    "entry (UTC)",
                    "entry px",
                    "exit (UTC)",
                    "exit px",
                    "size",
                    "arm",
                    "conf at entry",
                    "exit reason",
                    "PnL (net)",
                    "fees",
                ],
                rows,
            )  # fmt: skip
            + more
            if rows
            else "<p>No closed round trips.</p>"
        )
        parts.append(_details(f"{p}: {len(rows_all)} round trips", body))
    return (
        "<p>Every closed round trip of the +0 bps runs (also in <code>trades.csv</code> next "
        "to this page). PnL is the flow's realised net PnL of the round trip; fees are the "
        "entry's and exit's fees (a flip's fee split by the quantity it closed and opened).</p>"
        + "".join(parts)
    )


def _prices(i: int, ds: dict[str, Any], presets: list[str], ch: Any) -> str:
    closes = getattr(ch, "closes_5m", {}).get(i)
    if not closes:
        return "<p>No prices.</p>"
    rows = {p: ds["presets"][p].get("trade_list") or [] for p in presets}
    pos = {p: ch.positions_5m[(i, p)] for p in presets if (i, p) in ch.positions_5m}
    return _figure(
        "prices",
        charts.price_trades(closes, rows),
        "5m closes; ▲ long entry, ▼ short entry, × exit, one colour per preset.",
    ) + _figure(
        "exposure",
        charts.exposure(pos, closes),
        "Position notional at every 5m close (position × close), per symbol and preset.",
    )


def _symbols(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    rows = []
    for p in presets:
        for j, r in enumerate(ds["presets"][p].get("per_symbol") or []):
            base = _key("datasets", i, "presets", p, "per_symbol", j)
            rows.append(
                f"<td>{_e(p)}</td><td>{_e(r['symbol'])}</td>"
                + num(r["round_trips"], "int", _key(base, "round_trips"))
                + num(r["longs"], "int", _key(base, "longs"))
                + num(r["shorts"], "int", _key(base, "shorts"))
                + num(r["hit_rate"], "pct", _key(base, "hit_rate"))
                + num(r["pnl_usd"], "usd", _key(base, "pnl_usd"))
                + num(r["fees_usd"], "usd", _key(base, "fees_usd"))
                + num(r["return_on_book"], "pct", _key(base, "return_on_book"))
                + num(r["buy_and_hold_return"], "pct", _key(base, "buy_and_hold_return"))
            )
    return _table(
        ["preset", "symbol", "round trips", "longs", "shorts", "hit rate", "PnL (net)", "fees",
         "PnL / the symbol's book", "buy and hold"],
        rows,
    )  # fmt: skip


def _monthly(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    first = ds["presets"][presets[0]].get("monthly") or []
    rows = []
    for j, m in enumerate(first):
        cells = [f"<td>{_e(m['month'])}</td>"]
        for p in presets:
            base = _key("datasets", i, "presets", p, "monthly", j)
            r = ds["presets"][p]["monthly"][j]
            cells += [
                num(r["return"], "pct", _key(base, "return")),
                num(r["pnl_usd"], "usd", _key(base, "pnl_usd")),
            ]
        base = _key("datasets", i, "presets", presets[0], "monthly", j)
        cells.append(num(m["benchmark_return"], "pct", _key(base, "benchmark_return")))
        rows.append("".join(cells))
    head = ["month (UTC)"]
    for p in presets:
        head += [f"{_e(p)} return", f"{_e(p)} PnL"]
    head.append("buy and hold")
    return (
        "<p>Account return from the previous month's last 5m mark (the window's first mark "
        "for the first month) to this month's last.</p>" + _table(head, rows)
    )


def _slippage(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    adds = [r["added_bps"] for r in ds["presets"][presets[0]]["slippage"]]
    head = ["slippage added (bps)"]
    for p in presets:
        head += [
            f"{_e(p)} slippage (bps)",
            f"{_e(p)} net PnL",
            f"{_e(p)} Δ vs +0",
            f"{_e(p)} Sharpe",
            f"{_e(p)} round trips",
        ]
    rows = []
    for j, x in enumerate(adds):
        cells = [f"<td>+{x:g}</td>"]
        for p in presets:
            r = ds["presets"][p]["slippage"][j]
            base = _key("datasets", i, "presets", p, "slippage", j)
            cells += [
                num(r["slippage_bps"], "bps", _key(base, "slippage_bps")),
                num(r["net_pnl_usd"], "usd", _key(base, "net_pnl_usd")),
                num(r["pnl_change_usd"], "usd", _key(base, "pnl_change_usd")),
                num(r["sharpe"], "ratio", _key(base, "sharpe")),
                num(r["round_trips"], "int", _key(base, "round_trips")),
            ]
        rows.append("".join(cells))
    fig = _figure(
        "slippage",
        charts.slippage({p: ds["presets"][p]["slippage"] for p in presets}),
        "Net PnL against slippage added to every fill.",
        wide=False,
    )
    return f'<p class="formula">{_e(definitions.SLIPPAGE_FORMULA)}</p>' + _table(head, rows) + fig


def _trades(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    tables = []
    for p in presets:
        rows = []
        for j, r in enumerate(ds["presets"][p]["deciles"]):
            base = _key("datasets", i, "presets", p, "deciles", j)
            rows.append(
                f"<td>{r['decile']}</td>"
                + num(r["conf_min"], "prob", _key(base, "conf_min"))
                + num(r["conf_max"], "prob", _key(base, "conf_max"))
                + num(r["n"], "int", _key(base, "n"))
                + num(r["hit_rate"], "pct", _key(base, "hit_rate"))
                + num(r["avg_pnl_usd"], "usd", _key(base, "avg_pnl_usd"))
            )
        body = (
            _table(["decile", "conf from", "conf to", "trades", "hit rate", "avg PnL"], rows)
            if rows
            else "<p>No closed round trips.</p>"
        )
        tables.append(f"<div><h4>{_e(p)}</h4>{body}</div>")
    halts = []
    for p in presets:
        for h in ds["presets"][p]["halts"]:
            halts.append(
                f"<li>{_e(p)}: {_e(h['symbol'])} halted at {_e(h['time'])} UTC "
                f"({_e(h['reason'])})</li>"
            )
    halt_html = (
        f"<p>Kill-switch halts:</p><ul>{''.join(halts)}</ul>"
        if halts
        else "<p>No kill-switch halts.</p>"
    )
    fig = ""
    if any(ds["presets"][p]["deciles"] for p in presets):
        fig = _figure(
            "deciles",
            charts.deciles({p: ds["presets"][p]["deciles"] for p in presets}),
            "Hit rate of round trips by the model confidence at entry.",
            wide=False,
        )
    return (
        f'<p class="formula">{_e(definitions.DECILE_FORMULA)}</p>'
        f'<div class="row">{"".join(tables)}{fig}</div>{halt_html}'
    )


def _calibration(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    head = ["", *[_e(p) for p in presets]]
    fields = [
        ("n", "decided bars scored", "int"),
        ("horizon_bars", "horizon (5m bars)", "int"),
        ("brier", "Brier score", "prob"),
        ("brier_climatology", "Brier of the base rate ȳ(1−ȳ)", "prob"),
        ("brier_skill", "Brier skill", "ratio"),
        ("base_rate_up", "base rate of up", "pct"),
        ("hit_rate", "direction hit rate (p_up ≥ 0.5 ⇔ up)", "pct"),
    ]
    rows = []
    for f, label, kind in fields:
        cells = [f"<td>{_e(label)}</td>"]
        for p in presets:
            cells.append(
                num(
                    ds["presets"][p]["calibration"].get(f),
                    kind,
                    _key("datasets", i, "presets", p, "calibration", f),
                )
            )
        rows.append("".join(cells))
    bins = []
    for p in presets:
        brow = []
        for j, b in enumerate(ds["presets"][p]["calibration"]["bins"]):
            base = _key("datasets", i, "presets", p, "calibration", "bins", j)
            brow.append(
                f"<td>{b['lo']:.1f}–{b['hi']:.1f}</td>"
                + num(b["n"], "int", _key(base, "n"))
                + num(b["mean_p"], "prob", _key(base, "mean_p"))
                + num(b["freq_up"], "prob", _key(base, "freq_up"))
            )
        bins.append(_div(p, _table(["p_up bin", "bars", "mean p_up", "observed up"], brow)))
    fig = _figure(
        "calibration",
        charts.calibration({p: ds["presets"][p]["calibration"] for p in presets}),
        "Reliability diagram of p_up.",
        wide=False,
    )
    return (
        f'<p class="formula">{_e(definitions.KPI_BY_KEY["brier"].formula)}. '
        f"{_e(definitions.CALIBRATION_FORMULA)}</p>"
        + _table(head, rows)
        + f'<div class="row">{fig}{"".join(bins)}</div>'
    )


def _count_table(i: int, ds: dict[str, Any], presets: list[str], field: str, label: str) -> str:
    reasons = sorted(set().union(*(ds["presets"][p]["rejections"][field].keys() for p in presets)))
    if not reasons:
        return f"<p>{_e(label)}: none.</p>"
    rows = []
    for r in reasons:
        cells = [f"<td>{_e(r)}</td>"]
        for p in presets:
            v = ds["presets"][p]["rejections"][field].get(r)
            cells.append(
                num(v, "int", _key("datasets", i, "presets", p, "rejections", field, r))
                if v is not None
                else '<td class="num">0</td>'
            )
        rows.append("".join(cells))
    return f"<h4>{_e(label)}</h4>" + _table([label, *[_e(p) for p in presets]], rows)


def _rejections(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    total = "".join(
        num(
            ds["presets"][p]["rejections"]["total"],
            "int",
            _key("datasets", i, "presets", p, "rejections", "total"),
        )
        for p in presets
    )
    return (
        _table(["", *[_e(p) for p in presets]], [f"<td>rejections</td>{total}"])
        + _count_table(i, ds, presets, "by_reason", "reason")
        + _count_table(i, ds, presets, "by_stage", "stage")
        + _count_table(
            i, ds, presets, "shadow_would_veto", "shadow guard (would have vetoed, traded anyway)"
        )
        + _count_table(i, ds, presets, "decision_outcomes", "decision outcome after the warm-up")
    )


def _arms(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    arms = sorted(set().union(*(ds["presets"][p]["arms"]["arms"] for p in presets)))
    rows = []
    for a in arms:
        cells = [f"<td>{_e(a)}</td>"]
        for p in presets:
            for field in ("chosen_total", "entered_total"):
                v = ds["presets"][p]["arms"][field].get(a)
                cells.append(
                    num(v, "int", _key("datasets", i, "presets", p, "arms", field, a))
                    if v is not None
                    else '<td class="num">0</td>'
                )
        rows.append("".join(cells))
    head = ["arm"]
    for p in presets:
        head += [f"{_e(p)} chosen", f"{_e(p)} entries"]
    daily = []
    for p in presets:
        drows = []
        for j, d in enumerate(ds["presets"][p]["arms"]["daily"]):
            cells = [f"<td>{_e(d['date'])}</td>"]
            for a in arms:
                v = d["chosen"].get(a)
                cells.append(
                    num(
                        v, "int", _key("datasets", i, "presets", p, "arms", "daily", j, "chosen", a)
                    )
                    if v is not None
                    else '<td class="num">0</td>'
                )
            drows.append("".join(cells))
        daily.append(
            _details(f"{p}: choices per day", _table(["date", *[_e(a) for a in arms]], drows))
        )
    days = sorted({d["date"] for p in presets for d in ds["presets"][p]["daily"]})
    window = (days[0], days[-1]) if days else None
    fig = (
        _figure(
            "arms",
            charts.arms({p: ds["presets"][p]["arms"] for p in presets}, window),
            "Which arm the Thompson bandit chose, share per UTC day.",
        )
        if arms
        else "<p>The bandit chose no arm.</p>"
    )
    return (
        '<p class="formula">chosen = decisions where the bandit sampled an eligible arm; '
        "entries = order intents that opened or flipped a position, by the arm behind them.</p>"
        + (_table(head, rows) if rows else "")
        + fig
        + "".join(daily)
    )


def _daily(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    by_date: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
    for p in presets:
        for j, r in enumerate(ds["presets"][p]["daily"]):
            by_date.setdefault(r["date"], {})[p] = (j, r)
    head = ["date (UTC)"]
    for p in presets:
        head += [
            f"{_e(p)} PnL",
            f"{_e(p)} return",
            f"{_e(p)} equity",
            f"{_e(p)} fills",
            f"{_e(p)} round trips",
            f"{_e(p)} turnover",
            f"{_e(p)} fees",
        ]
    rows = []
    for date in sorted(by_date):
        cells = [f"<td>{_e(date)}</td>"]
        for p in presets:
            if p not in by_date[date]:
                cells += ["<td></td>"] * 7
                continue
            j, r = by_date[date][p]
            base = _key("datasets", i, "presets", p, "daily", j)
            cells += [
                num(r["pnl_usd"], "usd", _key(base, "pnl_usd")),
                num(r["return"], "pct", _key(base, "return")),
                num(r["equity_end_usd"], "usd", _key(base, "equity_end_usd")),
                num(r["fills"], "int", _key(base, "fills")),
                num(r["round_trips"], "int", _key(base, "round_trips")),
                num(r["turnover"], "ratio", _key(base, "turnover")),
                num(r["fees_usd"], "usd", _key(base, "fees_usd")),
            ]
        rows.append("".join(cells))
    fig = _figure(
        "daily_pnl",
        charts.daily_pnl({p: ds["presets"][p]["daily"] for p in presets}),
        "Net PnL per UTC day.",
    )
    return (
        fig
        + f'<p class="formula">turnover = {_e(definitions.TURNOVER_FORMULA)}</p>'
        + _table(head, rows)
    )


def _latency(i: int, ds: dict[str, Any], presets: list[str], meta: dict[str, Any]) -> str:
    stats = ("n", "p50", "p90", "p99", "max")
    head = ["measure", "preset", *stats]
    rows = []
    for p in presets:
        for m in ("bar_close_to_order_ms", "order_to_fill_ms"):
            d = ds["presets"][p]["latency_event_time"][m]
            cells = [f"<td>event time: {_e(m)}</td><td>{_e(p)}</td>"]
            cells += [
                num(
                    d[s],
                    "int" if s == "n" else "ms",
                    _key("datasets", i, "presets", p, "latency_event_time", m, s),
                )
                for s in stats
            ]
            rows.append("".join(cells))
        d = meta.get("processing_latency_ms", {}).get(ds["label"], {}).get(p)
        if d is not None:
            cells = [f"<td>processing: 5m bar emitted → order intent, ms</td><td>{_e(p)}</td>"]
            cells += [
                num(
                    d[s],
                    "int" if s == "n" else "ms",
                    "run:" + _key("processing_latency_ms", ds["label"], p, s),
                )
                for s in stats
            ]
            rows.append("".join(cells))
    return f'<p class="formula">{_e(definitions.LATENCY_FORMULA)}</p>' + _table(head, rows)


def _completeness(i: int, ds: dict[str, Any]) -> str:
    c = ds.get("completeness") or {"symbols": []}
    rows, details = [], []
    for j, s in enumerate(c["symbols"]):
        base = _key("datasets", i, "completeness", "symbols", j)
        rows.append(
            f"<td>{_e(s['symbol'])}</td>"
            f"<td>{_e(s['first_bar_start'])} → {_e(s['last_bar_end'])}</td>"
            + num(s["expected"], "int", _key(base, "expected"))
            + num(s["emitted"], "int", _key(base, "emitted"))
            + num(s["with_data"], "int", _key(base, "with_data"))
            + num(s["gap_bars"], "int", _key(base, "gap_bars"))
            + num(s["completeness"], "pct", _key(base, "completeness"))
            + num(s["days_below_100pct"], "int", _key(base, "days_below_100pct"))
        )
        drows = [
            f"<td>{_e(d['date'])}</td>"
            + num(d["expected"], "int", _key(base, "daily", k, "expected"))
            + num(d["with_data"], "int", _key(base, "daily", k, "with_data"))
            + num(d["completeness"], "pct", _key(base, "daily", k, "completeness"))
            for k, d in enumerate(s["daily"])
        ]
        details.append(
            _details(
                f"{s['symbol']}: per day",
                _table(["date", "expected", "with data", "completeness"], drows),
            )
        )
    dl = num(ds.get("dead_letters", 0), "int", _key("datasets", i, "dead_letters"))
    ir = num(ds["input_records"], "int", _key("datasets", i, "input_records"))
    reasons = ", ".join(
        f"{_e(k)} {v}" for k, v in sorted((ds.get("dead_letter_reasons") or {}).items())
    )
    return (
        f'<p class="formula">{_e(definitions.COMPLETENESS_FORMULA)}</p>'
        + _table(
            [
                "symbol",
                "span (UTC)",
                "expected",
                "emitted",
                "with data",
                "gap bars",
                "completeness",
                "days < 100%",
            ],
            rows,
        )
        + "".join(details)
        + _table(["input records", "dead letters"], [ir + dl])
        + (f"<p>Dead letters by reason: {reasons}</p>" if reasons else "")
    )


def _config(i: int, ds: dict[str, Any], presets: list[str]) -> str:
    rows = [
        f"<td><code>{_e(r['setting'])}</code></td>"
        + "".join(f"<td>{_e(json.dumps(r['values'].get(p)))}</td>" for p in presets)
        for r in ds["config_differences"]
    ]
    if not rows:
        return "<p>The presets run with identical settings.</p>"
    return _table(["setting", *[_e(p) for p in presets]], rows)


def _dataset(i: int, ds: dict[str, Any], presets: list[str], meta: dict[str, Any], ch: Any) -> str:
    files = (
        _table(
            ["kind", "file", "symbol", "sha256", "in the model's training data"],
            [
                f"<td>{_e(f['kind'])}</td><td>{_e(f['path'])}</td><td>{_e(f['symbol'])}</td>"
                f"<td><code>{_e(f['sha256'][:16])}…</code></td>"
                f"<td>{_IN_SAMPLE[f['in_model_training_data']]}</td>"
                for f in ds["files"]
            ],
        )
        if ds["files"]
        else "<p>Input: the embedded generator (synthetic market).</p>"
    )
    span = ds.get("model_training_span") or [None, None]
    warn = (
        '<p class="warn">In-sample: the model artifact was trained on this data (its manifest '
        "lists the same file checksum, or candles of the same days), so these results flatter "
        "the model.</p>"
        if ds["model_in_sample"]
        else (
            "<p><b>Out of sample</b>: no file of this dataset, nor any of its days, is in the "
            f"model's training data (trained on {_e(str(span[0]))} .. {_e(str(span[1]))}, "
            "from the files its manifest lists).</p>"
            if ds["model_in_sample"] is False
            else ""
        )
    )
    parts = {
        "headline": _headline(i, ds, presets),
        "equity": _equity(i, ds, presets, ch),
        "tradelist": _trade_list(i, ds, presets),
        "prices": _prices(i, ds, presets, ch),
        "symbols": _symbols(i, ds, presets),
        "monthly": _monthly(i, ds, presets),
        "slippage": _slippage(i, ds, presets),
        "trades": _trades(i, ds, presets),
        "calibration": _calibration(i, ds, presets),
        "rejections": _rejections(i, ds, presets),
        "arms": _arms(i, ds, presets),
        "daily": _daily(i, ds, presets),
        "latency": _latency(i, ds, presets, meta),
        "completeness": _completeness(i, ds),
        "config": _config(i, ds, presets),
    }
    body = "".join(_section(f"ds{i}-{s}", TITLES[s], parts[s]) for s in SECTIONS)
    # one collapsible block per dataset, open: collapse the ones not being read
    return (
        f'<section id="ds{i}"><details class="dataset" open><summary><h2>{_e(ds["label"])}'
        f"</h2></summary><p>Input: <code>{_e(ds['input'])}</code></p>{files}{warn}{body}"
        "</details></section>"
    )


# -- the page ------------------------------------------------------------------------------
def _top(report: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    conv = report["conventions"]
    conventions = (
        "<ul>"
        + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in sorted(conv.items()))
        + "</ul>"
    )
    defs = _table(
        ["key", "KPI", "unit", "formula"],
        [
            f"<td><code>{_e(d['key'])}</code></td><td>{_e(d['name'])}</td>"
            f'<td>{_e(d["unit"])}</td><td class="formula">{_e(d["formula"])}</td>'
            for d in report["definitions"]
        ],
    )
    m = report["model"]
    hold = m.get("holdout_metrics") or {}
    model = (
        f"<p>Model <code>{_e(m['model_id'])}</code> "
        f"(sha256 <code>{_e(str(m['model_sha256'])[:16])}…</code>), "
        f"horizon {m['horizon_bars']} bars, trained on {_e(m['training_span'][0])} → "
        f"{_e(m['training_span'][1])} UTC. "
        f"Holdout at training: Brier {_e(fmt(hold.get('brier'), 'prob'))}, "
        f"AUC {_e(fmt(hold.get('auc'), 'ratio'))}, "
        f"accuracy {_e(fmt(hold.get('accuracy'), 'pct'))}.</p>"
        f"<p>Presets: {_e(', '.join(report['presets']))}; overrides on top of each: "
        f"<code>{_e(json.dumps(report['overrides'], sort_keys=True))}</code>; "
        f"seed {report['seed']}.</p>"
    )
    runs = _table(
        ["run", "seconds"],
        [
            f"<td>{_e(r['run'])}</td>"
            + num(r["seconds"], "ratio", "run:" + _key("runs", j, "seconds"))
            for j, r in enumerate(meta.get("runs", []))
        ],
    )
    versions = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(meta.get("versions", {}).items()))
    run = (
        f"<p>Generated {_e(meta.get('started_utc'))} in {_e(meta.get('seconds_total'))} s; "
        f"{versions}. "
        "These facts vary from run to run and live in run.json, not report.json.</p>"
        f"<details><summary>runs</summary>{runs}</details>"
    )
    return {"conventions": conventions, "definitions": defs, "model": model, "run": run}


def _summary(report: dict[str, Any]) -> str:
    head = ["dataset", "preset", *[_e(definitions.KPI_BY_KEY[k].name) for k in SUMMARY_KPIS]]
    head += ["net PnL at the largest slippage added", "Sharpe, Sortino, hit rate"]
    rows = []
    for i, ds in enumerate(report["datasets"]):
        for p in report["presets"]:
            b = ds["presets"][p]
            cells = [f'<td><a href="#ds{i}">{_e(ds["label"])}</a></td><td>{_e(p)}</td>']
            cells += [
                num(
                    b["kpis"].get(k),
                    definitions.KPI_BY_KEY[k].kind,
                    _key("datasets", i, "presets", p, "kpis", k),
                )
                for k in SUMMARY_KPIS
            ]
            j = len(b["slippage"]) - 1
            cells.append(
                num(
                    b["slippage"][j]["net_pnl_usd"],
                    "usd",
                    _key("datasets", i, "presets", p, "slippage", j, "net_pnl_usd"),
                )
            )
            w = b.get("sample_warning")
            cells.append(f'<td class="small-sample">{_e("⚠ " + w) if w else ""}</td>')
            rows.append("".join(cells))
    return _table(head, rows)


def render(report: dict[str, Any], meta: dict[str, Any], ch: Any) -> str:
    presets = report["presets"]
    top = _top(report, meta)
    top["summary"] = _summary(report)
    titles = {
        "summary": "Summary",
        "conventions": "Conventions",
        "definitions": "KPI definitions",
        "model": "Model and presets",
        "run": "This run",
    }
    links = [f'<a href="#{t}">{titles[t]}</a>' for t in ("summary",)]
    links += [f'<a href="#ds{i}">{_e(d["label"])}</a>' for i, d in enumerate(report["datasets"])]
    links += [f'<a href="#{t}">{titles[t]}</a>' for t in TOP_SECTIONS[1:]]
    warn = ""
    if any(d["model_in_sample"] for d in report["datasets"]):
        warn = (
            '<p class="warn">Some datasets are in the model\'s training data (marked below): '
            "read their KPIs as in-sample.</p>"
        )

    def top_section(t: str) -> str:
        return f'<section id="{t}"><h2>{titles[t]}</h2>{top[t]}</section>'

    datasets = "".join(_dataset(i, d, presets, meta, ch) for i, d in enumerate(report["datasets"]))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Ensemble backtest: {_e(' vs '.join(presets))}</title>"
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>"
        f"<h1>Ensemble backtest: {_e(' vs '.join(presets))}</h1>"
        "<p>The Ensemble dataflow replayed over historical data (paper fills), once per preset "
        "and per slippage setting; every figure below is also in report.json.</p>"
        f"{warn}<nav>{' '.join(links)}</nav>{top_section('summary')}{datasets}"
        + "".join(top_section(t) for t in TOP_SECTIONS[1:])
        + "</body></html>\n"
    )
