"""The backtest command: the dataflow replayed per preset and slippage, report.html + .json."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import quantstats as qs

from backtest import kpis, metrics, records
from backtest.__main__ import main
from backtest.html import SECTIONS, TOP_SECTIONS
from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--data",
    "generator",
    "--days",
    "3",
    "--seed",
    "11",
    "--overrides",
    json.dumps({"warmup_bars": 150}),
    "--slippage-bps",
    "0,5",
]
PRESETS = ["ensemble_1_0", "ensemble_1_1"]


def _command(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backtest", *args],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("ENSEMBLE_")},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """`python -m backtest` on three generated days, both presets, +0 and +5 bps."""
    d = tmp_path_factory.mktemp("backtest")
    done = _command([*ARGS, "--out", str(d)])
    assert done.returncode == 0, done.stderr
    assert "ensemble_1_0" in done.stdout and "Sharpe" in done.stdout, done.stdout
    assert "run 4/4" in done.stderr, "one progress line per run on a non-terminal stderr"
    return d


@pytest.fixture(scope="module")
def report(out) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def meta(out) -> dict:
    return json.loads((out / "run.json").read_text())


class _Page(HTMLParser):
    """Section ids, numbers carrying data-key, charts, and scripts with a src."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.cells: list[tuple[str, str, str, str]] = []  # key, kind, value, text
        self.charts: list[str] = []
        self.external: list[str] = []
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "figure" and "chart" in (a.get("class") or ""):
            self.charts.append(a.get("data-chart", ""))
        for attr in ("src", "href"):
            v = a.get(attr) or ""
            if tag != "a" and v and not v.startswith(("data:", "#")):
                self.external.append(f"{tag} {attr}={v}")
            if tag == "link":
                self.external.append(f"link {a}")
        if "data-key" in a:
            self._cell = [a["data-key"], a["data-kind"], a["data-value"], ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[3] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None


def _page(out: Path) -> _Page:
    p = _Page()
    p.feed((out / "report.html").read_text(encoding="utf-8"))
    return p


def _lookup(doc, key: str):
    for part in key.split("/"):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _printed(text: str) -> tuple[float, int]:
    """The number shown, and how many decimals it was printed with."""
    digits = re.sub(r"[,%]", "", text)
    return float(digits), len(digits.partition(".")[2])


# -- the command writes both files ----------------------------------------------------------
@pytest.mark.slow
def test_the_command_writes_report_html_json_and_the_flows_own_outputs(out, report):
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "run.json").is_file()
    for p in PRESETS:
        flow_out = out / "runs" / "generator" / p
        assert (flow_out / "signals.jsonl").is_file() and (flow_out / "summary.json").is_file()
    assert report["presets"] == PRESETS
    assert report["slippage_added_bps"] == [0.0, 5.0]
    ds = report["datasets"][0]
    assert set(ds["presets"]) == set(PRESETS)
    for p in PRESETS:
        assert ds["presets"][p]["kpis"]["round_trips"] > 0, f"{p} made no trades"


@pytest.mark.slow
def test_the_html_has_every_section_for_every_dataset_and_no_external_resource(out, report):
    page = _page(out)
    for s in TOP_SECTIONS:
        assert s in page.ids, f"section {s} missing"
    for i, _ in enumerate(report["datasets"]):
        for s in SECTIONS:
            assert f"ds{i}-{s}" in page.ids, f"section ds{i}-{s} missing"
    assert {"equity", "drawdown", "calibration", "arms", "slippage", "daily_pnl"} <= set(
        page.charts
    )
    assert page.external == [], "the report must open offline"
    html = (out / "report.html").read_text()
    assert "<svg" in html and "https://" not in html
    no_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert re.findall(r"http://[^\"]+", no_namespaces) == [], "no address outside xmlns names"


@pytest.mark.slow
def test_every_number_in_the_html_is_the_one_in_report_json_or_run_json(out, report, meta):
    page = _page(out)
    assert len(page.cells) > 300
    for key, kind, value, text in page.cells:
        doc, path = (meta, key[4:]) if key.startswith("run:") else (report, key)
        want = _lookup(doc, path)
        assert json.loads(value) == want, key
        if want is None:
            assert text == "n/a", key
            continue
        shown, decimals = _printed(text)
        scale = 100.0 if kind == "pct" else 1.0
        assert shown == pytest.approx(want * scale, abs=0.51 * 10**-decimals), (key, text)


@pytest.mark.slow
def test_every_kpi_is_stated_with_its_formula_in_html_and_json(out, report):
    html = (out / "report.html").read_text()
    defs = {d["key"]: d for d in report["definitions"]}
    for p in PRESETS:
        assert set(report["datasets"][0]["presets"][p]["kpis"]) <= set(defs) | {
            "equity_start_usd",
            "equity_end_usd",
            "eval_days",
            "days",
            "best_day_return",
            "worst_day_return",
            "wins",
            "losses",
            "notional_usd",
            "costs_usd",
            "fills",
        }
    for d in defs.values():
        assert d["formula"] and html_escape(d["formula"], quote=True) in html
    assert "√365" in defs["sharpe"]["formula"] and "risk-free rate 0" in defs["sharpe"]["formula"]
    assert report["conventions"]["periods_per_year"] == 365
    assert report["conventions"]["risk_free_rate"] == 0.0


# -- determinism ---------------------------------------------------------------------------
@pytest.mark.slow
def test_two_runs_over_the_same_data_give_identical_report_json(tmp_path, capsys):
    # Each +0 bps run stamps ts_init with the wall clock: it must not leak into report.json.
    args = ["--data", "generator", "--days", "2", "--overrides", json.dumps({"warmup_bars": 150})]
    args += ["--slippage-bps", "0", "--preset", "ensemble_1_0", "--quiet", "--discard-runs"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = (tmp_path / "a" / "report.json").read_bytes()
    assert first == (tmp_path / "b" / "report.json").read_bytes()
    assert str(tmp_path).encode() not in first and b"started_utc" not in first
    assert (tmp_path / "a" / "run.json").read_bytes() != (tmp_path / "b" / "run.json").read_bytes()
    assert not (tmp_path / "a" / "runs").exists(), "--discard-runs keeps no flow outputs"


# -- the numbers against independent sources --------------------------------------------------
def _qs(returns: np.ndarray) -> tuple[float, float, float]:
    s = pd.Series(returns, index=pd.date_range("2024-01-01", periods=len(returns), freq="D"))
    return (
        qs.stats.sharpe(s, rf=0.0, periods=365, annualize=True),
        qs.stats.sortino(s, rf=0.0, periods=365, annualize=True),
        qs.stats.max_drawdown(s),
    )


@pytest.mark.slow
def test_sharpe_sortino_max_drawdown_equal_quantstats_on_the_reports_daily_returns(report):
    for p in PRESETS:
        block = report["datasets"][0]["presets"][p]
        r = np.array([d["return"] for d in block["daily"]])
        assert len(r) >= 3
        sharpe, sortino, mdd = _qs(r)
        k = block["kpis"]
        assert k["sharpe"] == pytest.approx(sharpe, abs=1e-9)
        if k["sortino"] is None:  # no losing day: quantstats divides by zero
            assert not np.isfinite(sortino) or np.isnan(sortino)
        else:
            assert k["sortino"] == pytest.approx(sortino, abs=1e-9)
        assert k["max_drawdown_daily"] == pytest.approx(-mdd, abs=1e-9)


@pytest.mark.parametrize("first", [0.004, -0.03])
def test_metrics_equal_quantstats_on_a_year_of_daily_returns(first):
    rng = np.random.default_rng(5)
    r = rng.normal(0.0005, 0.01, 365)
    r[0] = first  # a loss on day one is a drawdown from the starting equity
    sharpe, sortino, mdd = _qs(r)
    assert metrics.sharpe(r) == pytest.approx(sharpe, abs=1e-9)
    assert metrics.sortino(r) == pytest.approx(sortino, abs=1e-9)
    assert metrics.max_drawdown(r) == pytest.approx(-mdd, abs=1e-9)
    assert metrics.sharpe(r) == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))


@pytest.mark.slow
def test_trades_fees_and_final_equity_agree_with_the_flows_own_run_summary(out, report):
    for p in PRESETS:
        summary = json.loads((out / "runs" / "generator" / p / "summary.json").read_text())
        syms = summary["symbols"].values()
        k = report["datasets"][0]["presets"][p]["kpis"]
        assert k["round_trips"] == sum(s["round_trips"] for s in syms)
        assert k["wins"] == sum(s["wins"] for s in syms)
        assert k["losses"] == sum(s["losses"] for s in syms)
        assert k["hit_rate"] == pytest.approx(k["wins"] / k["round_trips"])
        assert k["fees_usd"] == pytest.approx(sum(s["fees_usd"] for s in syms), abs=1e-6)
        assert k["equity_end_usd"] == pytest.approx(sum(s["equity"] for s in syms), abs=1e-6)
        assert k["fills"] == sum(s["fills"] for s in syms)


@pytest.mark.slow
def test_daily_table_adds_up_to_the_window_and_deciles_to_the_trades(report):
    for p in PRESETS:
        b = report["datasets"][0]["presets"][p]
        k, daily = b["kpis"], b["daily"]
        assert sum(d["pnl_usd"] for d in daily) == pytest.approx(k["net_pnl_usd"], abs=1e-6)
        growth = np.prod([1 + d["return"] for d in daily])
        assert growth == pytest.approx(1 + k["total_return"], rel=1e-12)
        assert sum(d["round_trips"] for d in daily) == k["round_trips"]
        with_conf = [t for t in b["round_trips"] if t["entry_conf"] is not None]
        assert sum(d["n"] for d in b["deciles"]) == len(with_conf)
        assert sum(d["wins"] for d in b["deciles"]) == sum(1 for t in with_conf if t["pnl_usd"] > 0)
        confs = [d["conf_min"] for d in b["deciles"]]
        assert confs == sorted(confs), "deciles go from low to high confidence"


@pytest.mark.slow
def test_brier_over_the_flows_last_window_equals_its_calibration_record(out, report):
    run = records.load(out / "runs" / "generator" / "ensemble_1_1")
    h = report["model"]["horizon_bars"]
    last = run.calibration[-1]
    pairs = kpis.calibration_pairs(run.signals[run.signals["symbol"] == last["symbol"]], h)
    resolved = pairs[pairs["ts_event_ms"] + h * kpis.BAR_MS <= last["ts_event_ms"]]
    window = resolved.tail(last["window"])
    brier = float(np.mean((window["p_up"] - window["up"]) ** 2))
    assert brier == pytest.approx(last["brier"], abs=1e-12)


@pytest.mark.slow
def test_slippage_runs_fill_worse_by_the_bps_added(report):
    for p in PRESETS:
        rows = report["datasets"][0]["presets"][p]["slippage"]
        assert [r["added_bps"] for r in rows] == [0.0, 5.0]
        assert rows[1]["slippage_bps"] == rows[0]["slippage_bps"] + 5.0
        for r in rows:
            paid_bps = r["slippage_usd"] / r["notional_usd"] * 1e4
            assert paid_bps == pytest.approx(r["slippage_bps"], rel=2e-3)
        assert rows[0]["net_pnl_usd"] == report["datasets"][0]["presets"][p]["kpis"]["net_pnl_usd"]


@pytest.mark.slow
def test_rejections_arms_latency_and_completeness_come_from_the_flow(out, report, meta):
    ds = report["datasets"][0]
    for p in PRESETS:
        b = ds["presets"][p]
        rejections = (out / "runs" / "generator" / p / "rejections.jsonl").read_text().splitlines()
        assert b["rejections"]["total"] == len(rejections)
        assert sum(b["rejections"]["by_reason"].values()) == len(rejections)
        assert sum(b["arms"]["chosen_total"].values()) == sum(
            sum(d["chosen"].values()) for d in b["arms"]["daily"]
        )
        orders = (out / "runs" / "generator" / p / "orders.jsonl").read_text().splitlines()
        lat = meta["processing_latency_ms"]["generator"][p]
        assert lat["n"] == len(orders) and lat["p50"] >= 0 and lat["max"] >= lat["p99"]
        assert b["latency_event_time"]["bar_close_to_order_ms"]["max"] == 0.0
    for s in ds["completeness"]["symbols"]:
        assert s["expected"] == 3 * 288 and s["with_data"] == s["expected"]
        assert s["completeness"] == 1.0


# -- bad input -------------------------------------------------------------------------------
def test_a_missing_data_file_is_a_clear_error(tmp_path, capsys):
    assert main(["--data", f"candles:{tmp_path}/nope.feather", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nope.feather" in err and "no file" in err


def test_an_unknown_override_stops_before_any_replay(tmp_path, capsys):
    args = ["--data", "generator", "--overrides", '{"risk.pos_maxx": 1}', "--out", str(tmp_path)]
    assert main(args) == 2
    assert "pos_maxx" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_data_shorter_than_the_warm_up_says_so(tmp_path, capsys):
    args = ["--data", "generator", "--days", "0.5", "--slippage-bps", "0", "--quiet"]
    assert main([*args, "--preset", "ensemble_1_0", "--out", str(tmp_path)]) == 2
    assert "warm-up" in capsys.readouterr().err


# -- real data ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_the_command_on_a_slice_of_real_perp_candles_matches_quantstats(tmp_path):
    rows = json.loads(
        shared_file("binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json").read_text()
    )
    sliced = tmp_path / "btc_perp_5m_slice.json"
    sliced.write_text(json.dumps(rows[:3000]))
    out = tmp_path / "out"
    done = _command(
        [
            "--data",
            f"candles:{sliced}",
            "--overrides",  # low thresholds so both presets trade whatever the model's edge
            json.dumps(
                {"warmup_bars": 200, "thresholds.CONF_MIN": 0.5, "thresholds.ALPHA_MIN": 0.02}
            ),
            "--slippage-bps",
            "0",
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    ds = report["datasets"][0]
    assert ds["input_records"] == 3000
    assert ds["completeness"]["symbols"][0]["expected"] == 3000
    for p in PRESETS:
        block = ds["presets"][p]
        r = np.array([d["return"] for d in block["daily"]])
        assert len(r) >= 9
        sharpe, sortino, mdd = _qs(r)
        k = block["kpis"]
        assert k["max_drawdown_daily"] == pytest.approx(-mdd, abs=1e-9)
        if k["round_trips"] == 0:  # flat equity: no ratio (quantstats gives NaN)
            assert not r.any() and k["sharpe"] is None and math.isnan(sharpe)
            continue
        assert k["sharpe"] == pytest.approx(sharpe, abs=1e-9)
        assert k["sortino"] == pytest.approx(sortino, abs=1e-9)
    assert ds["presets"]["ensemble_1_0"]["kpis"]["round_trips"] > 0


# -- a real browser ----------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_headless_chromium_renders_every_chart(out):
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,2000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    total = re.search(r'data-charts-total="(\d+)"', dom)
    rendered = re.search(r'data-charts-rendered="(\d+)"', dom)
    assert total and rendered, "the page's load handler did not run"
    assert int(total.group(1)) >= 7
    assert rendered.group(1) == total.group(1), "a chart did not render"
    assert 'data-rendered="no"' not in dom


# -- in-sample vs out of sample ------------------------------------------------------------
@pytest.mark.realdata
def test_a_slice_of_a_training_file_is_in_sample_by_its_time_span_not_only_its_checksum(tmp_path):
    from backtest.report import _dataset_info, _model_info
    from backtest.runner import Dataset
    from operators.predict import DEFAULT_ARTIFACT

    rows = json.loads(
        shared_file("binance_usdm_BTC_USDT_2025-09-19_2025-10-27_5m.json").read_text()
    )
    sliced = tmp_path / "slice.json"
    sliced.write_text(json.dumps(rows[5000:6000]))  # another checksum, the same days
    model = _model_info(DEFAULT_ARTIFACT)
    info = _dataset_info(Dataset.parse(f"candles:{sliced}"), model, 1000)
    assert info["model_in_sample"] is True
    assert info["files"][0]["in_model_training_data"] is True


@pytest.mark.realdata
def test_the_default_backtest_runs_on_the_untouched_block_and_says_it_is_out_of_sample(tmp_path):
    shared_file("binance_usdm_BTC_USDT_2025-08-01_2026-02-19_5m.feather")
    out = tmp_path / "out"
    done = _command(
        ["--preset", "ensemble_1_1", "--slippage-bps", "0", "--discard-runs", "--out", str(out)]
    )
    assert done.returncode == 0, done.stderr
    assert "out of sample" in done.stdout, done.stdout
    report = json.loads((out / "report.json").read_text())
    [ds] = report["datasets"]
    assert ds["model_in_sample"] is False and "test_block" in ds["label"]
    block = ds["presets"]["ensemble_1_1"]
    assert block["evaluation"]["start"].startswith("2026-01-08")
    assert ds["model_training_span"][1] < block["evaluation"]["start"]
    page = (out / "report.html").read_text()
    assert "Out of sample" in page and "2026-01-08" in page


# -- issue 15 §5: what a trader reads first ---------------------------------------------------
@pytest.mark.slow
def test_the_trade_list_is_every_round_trip_with_prices_fees_and_a_csv(out, report):
    import csv

    flow = {}
    for p in PRESETS:
        d = out / "runs" / "generator" / p
        flow[p] = [json.loads(line) for line in (d / "executions.jsonl").read_text().splitlines()]
    csv_rows = list(csv.DictReader((out / "trades.csv").open()))
    for p in PRESETS:
        b = report["datasets"][0]["presets"][p]
        rows = b["trade_list"]
        assert len(rows) == b["kpis"]["round_trips"] > 0
        closing = [e for e in flow[p] if e["trade_pnl_usd"] is not None]
        assert sorted(r["pnl_usd"] for r in rows) == sorted(e["trade_pnl_usd"] for e in closing)
        assert {r["exit_px"] for r in rows} <= {e["fill_px"] for e in flow[p]}
        fees = sum(e["fee_usd"] for e in flow[p])
        assert sum(r["fees_usd"] for r in rows) <= fees + 1e-9  # an open position's entry
        for r in rows:
            assert r["side"] in ("long", "short") and r["exit_reason"]
            assert r["entry_time"] is None or r["entry_time"] < r["exit_time"]
            sign = 1 if r["side"] == "long" else -1
            if r["entry_px"] is not None:  # the price move is what the exit fill realised
                gross = sign * (r["exit_px"] - r["entry_px"]) * r["qty"]
                exit_fill = next(
                    e
                    for e in flow[p]
                    if e["ts_event_ms"] == r["exit_ms"] and e["symbol"] == r["symbol"]
                )
                assert gross == pytest.approx(exit_fill["realized_usd"], rel=1e-6, abs=1e-6), r
        mine = [c for c in csv_rows if c["preset"] == p]
        assert len(mine) == len(rows)
        assert [float(c["pnl_usd"]) for c in mine] == [r["pnl_usd"] for r in rows]


@pytest.mark.slow
def test_per_symbol_monthly_and_buy_and_hold_add_up(out, report):
    ds = report["datasets"][0]
    for p in PRESETS:
        b = ds["presets"][p]
        syms = b["per_symbol"]
        assert sum(s["round_trips"] for s in syms) == b["kpis"]["round_trips"]
        assert sum(s["pnl_usd"] for s in syms) == pytest.approx(
            sum(r["pnl_usd"] for r in b["trade_list"])
        )
        growth = math.prod(1 + m["return"] for m in b["monthly"])
        assert growth - 1 == pytest.approx(b["kpis"]["total_return"], rel=1e-9, abs=1e-12)
    # buy and hold: each symbol's book in the symbol from the window's first close
    lines = (out / "runs" / "generator" / PRESETS[0] / "signals.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    sig = pd.DataFrame(
        {"symbol": r["symbol"], "ts": r["ts_event_ms"], "close": r["bar"]["close"]} for r in recs
    )
    b = ds["presets"][PRESETS[0]]
    t0 = b["evaluation"]["start_ms"]
    per = {s["symbol"]: s["buy_and_hold_return"] for s in b["per_symbol"]}
    start, end = 0.0, 0.0
    for sym, g in sig[sig["ts"] >= t0].groupby("symbol"):
        c = g.sort_values("ts")["close"].to_numpy()
        assert per[sym] == pytest.approx(c[-1] / c[0] - 1)
        start, end = start + 1, end + c[-1] / c[0]
    assert b["benchmark"]["total_return"] == pytest.approx(end / start - 1)


@pytest.mark.slow
def test_a_small_sample_is_flagged_next_to_sharpe_sortino_and_hit_rate(out, report):
    b = report["datasets"][0]["presets"][PRESETS[0]]
    assert b["kpis"]["eval_days"] < 30 and b["sample_warning"].startswith("small sample:")
    assert "days (< 30)" in b["sample_warning"]
    assert ("round trips (< 30)" in b["sample_warning"]) == (b["kpis"]["round_trips"] < 30)
    html = (out / "report.html").read_text()
    headline = html.split('id="ds0-headline"')[1].split("</section>")[0]
    for name in ("Sharpe", "Sortino", "Hit rate"):
        row = next(r for r in headline.split("<tr>") if f"<td>{name}" in r)
        assert 'class="small-sample"' in row, name


@pytest.mark.slow
def test_each_dataset_collapses_and_charts_use_the_page_width(out, report):
    html = (out / "report.html").read_text()
    assert html.count('<details class="dataset" open>') == len(report["datasets"])
    page = _page(out)
    assert {"prices", "exposure"} <= set(page.charts)
    assert 'class="chart wide" data-chart="equity"' in html
    for s in ("tradelist", "prices", "symbols", "monthly"):
        assert f"ds0-{s}" in page.ids


def test_the_equity_axis_shows_whole_dollars_without_an_offset():
    from backtest import charts

    t = pd.Index(np.arange(300, dtype="int64") * 300_000 + 1_704_067_200_000)
    flat = pd.Series(10_000.0 + np.linspace(0.0, 0.05, 300), index=t)  # a quiet day
    svg = charts.equity({"ensemble_1_1": flat})
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg) + re.findall(r"<!-- (.*?) -->", svg)
    assert not [x for x in texts if re.search(r"\de[+−-]?\d|^[+−]\s?\d", x)], texts
    assert any("10000" in x.replace(",", "") for x in texts), texts


def test_the_small_sample_rule_counts_round_trips_and_days():
    from backtest.trades import sample_warning

    assert sample_warning(2, 400.0) == "small sample: 2 round trips (< 30)"
    assert sample_warning(100, 3.0) == "small sample: 3.0 days (< 30)"
    assert sample_warning(30, 30.0) is None


def test_long_curves_are_thinned_but_keep_their_extremes():
    from backtest import charts

    n = 20_000
    y = np.sin(np.arange(n) / 500.0)
    y[12_345] = -5.0  # a drawdown's bottom
    t, yy = charts.thin(np.arange(n), y)
    assert len(yy) <= charts.MAX_POINTS + 2 and yy.min() == -5.0 and t[-1] == n - 1
    assert list(t) == sorted(t)


def test_the_bar_ending_at_24h_on_a_months_last_day_closes_that_month():
    from backtest.trades import monthly

    jan31_2350 = int(pd.Timestamp("2024-01-31 23:50", tz="UTC").value // 1_000_000)
    marks = pd.Index([jan31_2350 + k * 300_000 for k in range(4)])  # 23:50 .. 00:05
    strategy = pd.Series([100.0, 100.0, 110.0, 110.0], index=marks)  # up in Jan's last bar
    benchmark = pd.Series([100.0, 100.0, 120.0, 120.0], index=marks)
    rows = monthly(strategy, benchmark)
    # as the daily table: the mark at Feb 1 00:00 is January 31st's close
    assert [r["month"] for r in rows] == ["2024-01", "2024-02"]
    assert rows[0]["pnl_usd"] == pytest.approx(10.0) and rows[1]["pnl_usd"] == 0.0
    assert rows[0]["return"] == pytest.approx(0.1)
    assert rows[0]["benchmark_return"] == pytest.approx(0.2) and rows[1]["benchmark_return"] == 0.0
    # a window starting at a month's first 00:00 mark has no row for the month before
    assert [r["month"] for r in monthly(strategy.iloc[2:], benchmark.iloc[2:])] == ["2024-02"]


@pytest.mark.slow
def test_the_position_chart_holds_the_flows_own_position_at_every_mark(out, report):
    from backtest import trades

    for p in PRESETS:
        d = out / "runs" / "generator" / p
        run = records.load(d)
        marks = trades.closes(run, report["datasets"][0]["presets"][p]["evaluation"]["start_ms"])
        health = {
            (r["symbol"], r["ts_event_ms"]): r["position_qty"]
            for r in map(json.loads, (d / "health.jsonl").read_text().splitlines())
        }
        assert run.executions, "the generated days trade"
        for sym, pos in trades.positions(run, marks).items():
            flow = np.array([health[(sym, int(t))] for t in pos.index])
            # a fill stamped t opens the bar from t: the mark at t is still before it
            assert np.abs(pos.to_numpy() - flow).max() < 1e-12, (p, sym)
