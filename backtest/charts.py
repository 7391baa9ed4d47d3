"""The report's pictures: matplotlib (Agg) drawn to inline SVG, so the HTML needs no files.

Text stays text (`svg.fonttype=none`, rendered in the page's own sans-serif font), ids are
salted with a constant and the SVG carries no date, so the same data gives the same SVG.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from backtest import metrics  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
ARM_COLORS = {
    "pros": "#2ca02c",
    "amateurs": "#ff7f0e",
    "model_meta": "#1f77b4",
    "model_bma": "#9467bd",
    "pros_size_proxy": "#17becf",  # the trade-size cohort proxy (operators/size_proxy.py)
    "amateurs_size_proxy": "#e377c2",
    "none": "#7f7f7f",
}
RC = {
    "svg.hashsalt": "ensemble-backtest",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


WIDE = 12.0  # inches: the page's width (CSS stretches wide charts to it)
MAX_POINTS = 1500  # per line: more than a page's width of pixels adds bytes, not detail


def _plain_y(ax: Any) -> None:
    """Full numbers on the y axis: no "+1e4" offset that leaves the reader to add it back."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def thin(t: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, Any]:
    """At most about `max_points` points, keeping each bucket's lowest and highest (in time
    order), so peaks and troughs (a drawdown's bottom) survive."""
    n = len(y)
    if n <= max_points:
        return t, y
    edges = np.linspace(0, n, max_points // 2 + 1, dtype=int)
    keep = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b > a:
            seg = y[a:b]
            keep.extend(sorted({a + int(np.argmin(seg)), a + int(np.argmax(seg))}))
    keep[-1:] = [keep[-1]] if keep[-1] == n - 1 else [keep[-1], n - 1]
    idx = np.array(keep)
    return t[idx], y[idx]


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    with warnings.catch_warnings():  # AutoDateLocator notes its fallback interval on short spans
        warnings.filterwarnings("ignore", "AutoDateLocator was unable", UserWarning)
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)  # RDF boilerplate
    return text[text.index("<svg") :]


def _times(index: pd.Index) -> np.ndarray:
    return pd.to_datetime(np.asarray(index, dtype="int64"), unit="ms").to_numpy()


def _noon(date: str) -> pd.Timestamp:
    """Where a day's bar is centred, so it covers its own day."""
    return pd.Timestamp(date) + pd.Timedelta(hours=12)


def _date_axis(ax: Any) -> None:
    loc = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def equity(curves: dict[str, pd.Series], benchmark: pd.Series | None = None) -> str:
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(WIDE, 3.4))
        for i, (name, s) in enumerate(curves.items()):
            ax.plot(*thin(_times(s.index), s.to_numpy()), color=color(i), lw=1.1, label=name)
        if benchmark is not None:
            ax.plot(
                *thin(_times(benchmark.index), benchmark.to_numpy()),
                color="#555555",
                lw=1.0,
                ls="--",
                label="buy and hold",
            )
        _plain_y(ax)
        ax.set_ylabel("account equity, USD")
        ax.set_title("Equity at every 5m close (UTC)")
        _date_axis(ax)
        ax.legend(loc="best", frameon=False)
        return _svg(fig)


def drawdown(curves: dict[str, pd.Series]) -> str:
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(WIDE, 2.6))
        for i, (name, s) in enumerate(curves.items()):
            t, dd = thin(_times(s.index), -100.0 * metrics.drawdowns(s.to_numpy()))
            ax.fill_between(t, dd, 0.0, color=color(i), alpha=0.25, lw=0)
            ax.plot(t, dd, color=color(i), lw=0.9, label=name)
        ax.set_ylabel("drawdown, %")
        ax.set_title("Drawdown from the running peak (every 5m close)")
        _date_axis(ax)
        ax.legend(loc="lower left", frameon=False)
        return _svg(fig)


def calibration(cals: dict[str, dict[str, Any]]) -> str:
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--", label="perfectly calibrated")
        markers = ("o", "s", "^", "D")
        for i, (name, cal) in enumerate(cals.items()):
            bins = cal.get("bins") or []
            if not bins:
                continue
            x = [b["mean_p"] for b in bins]
            y = [b["freq_up"] for b in bins]
            n = np.array([b["n"] for b in bins], dtype=float)
            sizes = 12 + 200 * n / n.max()
            ax.plot(x, y, color=color(i), lw=0.9)
            ax.scatter(x, y, s=sizes, color=color(i), marker=markers[i % 4], alpha=0.7, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted p_up (bin)")
        ax.set_ylabel("observed frequency of up")
        ax.set_title("Calibration (marker area ∝ bars in bin)")
        ax.legend(loc="upper left", frameon=False)
        return _svg(fig)


def arms(arm_blocks: dict[str, dict[str, Any]], window: tuple[str, str] | None = None) -> str:
    """Share of each arm among the bandit's choices, per UTC day, one panel per preset.

    `window` is the first and last day of the evaluation, so quiet days show as gaps.
    """
    names = list(arm_blocks)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(names), 1, figsize=(WIDE, 1.9 * len(names) + 0.4), sharex=True, squeeze=False
        )
        for ax, name in zip(axes[:, 0], names, strict=True):
            block = arm_blocks[name]
            days = [_noon(d["date"]) for d in block["daily"]]
            bottom = np.zeros(len(days))
            for arm in block["arms"]:
                vals = np.array([d["chosen"].get(arm, 0) for d in block["daily"]], dtype=float)
                tot = np.array([sum(d["chosen"].values()) for d in block["daily"]], dtype=float)
                share = np.divide(vals, tot, out=np.zeros_like(vals), where=tot > 0)
                ax.bar(
                    days,
                    share,
                    bottom=bottom,
                    width=0.9,
                    color=ARM_COLORS.get(arm, "#bcbd22"),
                    label=arm,
                )
                bottom += share
            ax.set_ylim(0, 1)
            ax.set_ylabel("share of choices")
            ax.set_title(f"{name}: arm chosen by the bandit, per day", loc="left")
            if block["arms"]:
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        if window is not None:
            lo, hi = pd.Timestamp(window[0]), pd.Timestamp(window[1])
            axes[-1, 0].set_xlim(lo - pd.Timedelta(hours=12), hi + pd.Timedelta(hours=12))
        _date_axis(axes[-1, 0])
        return _svg(fig)


def slippage(rows: dict[str, list[dict[str, Any]]]) -> str:
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for i, (name, rs) in enumerate(rows.items()):
            x = [r["added_bps"] for r in rs]
            y = [r["net_pnl_usd"] for r in rs]
            ax.plot(x, y, marker="o", color=color(i), label=name)
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_xlabel("slippage added, bps")
        ax.set_ylabel("net PnL, USD")
        ax.set_title("Slippage sensitivity")
        ax.legend(loc="best", frameon=False)
        return _svg(fig)


def daily_pnl(daily: dict[str, list[dict[str, Any]]]) -> str:
    names = list(daily)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(WIDE, 2.8))
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            days = mdates.date2num([_noon(r["date"]) for r in daily[name]])
            pnl = [r["pnl_usd"] for r in daily[name]]
            ax.bar(
                days + (i - (len(names) - 1) / 2) * width, pnl, width, color=color(i), label=name
            )
        ax.axhline(0, color="#999999", lw=0.8)
        ax.xaxis_date()
        ax.set_ylabel("PnL, USD")
        ax.set_title("Daily PnL (UTC days)")
        _date_axis(ax)
        ax.legend(loc="best", frameon=False)
        return _svg(fig)


def deciles(blocks: dict[str, list[dict[str, Any]]]) -> str:
    names = list(blocks)
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            x = np.array([r["decile"] for r in blocks[name]], dtype=float)
            y = [100.0 * r["hit_rate"] for r in blocks[name]]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, y, width, color=color(i), label=name)
        ax.axhline(50, color="#999999", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("confidence decile at entry (1 = lowest)")
        ax.set_ylabel("hit rate, %")
        ax.set_ylim(0, 100)
        ax.set_title("Hit rate by confidence decile")
        ax.legend(loc="best", frameon=False)
        return _svg(fig)


MARKERS = ("o", "s", "D", "P")


def price_trades(closes: dict[str, pd.Series], trade_rows: dict[str, list[dict[str, Any]]]) -> str:
    """Each symbol's 5m close with every round trip's entry (▲ long, ▼ short) and exit (×),
    one colour per preset."""
    syms = list(closes)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(syms), 1, figsize=(WIDE, 2.8 * len(syms) + 0.3), squeeze=False)
        for ax, sym in zip(axes[:, 0], syms, strict=True):
            px = closes[sym]
            ax.plot(*thin(_times(px.index), px.to_numpy()), color="#444444", lw=0.8, label="close")
            for i, (name, rows) in enumerate(trade_rows.items()):
                mine = [r for r in rows if r["symbol"] == sym]
                for side, mark in (("long", "^"), ("short", "v")):
                    ent = [r for r in mine if r["side"] == side and r["entry_ms"] is not None]
                    if ent:
                        ax.scatter(
                            _times(pd.Index([r["entry_ms"] for r in ent])),
                            [r["entry_px"] for r in ent],
                            marker=mark, s=28, color=color(i), zorder=3,
                            label=f"{name} {side} entry",
                        )  # fmt: skip
                if mine:
                    ax.scatter(
                        _times(pd.Index([r["exit_ms"] for r in mine])),
                        [r["exit_px"] for r in mine],
                        marker="x", s=22, color=color(i), zorder=3, label=f"{name} exit",
                    )  # fmt: skip
            _plain_y(ax)
            ax.set_ylabel(f"{sym}, USD")
            ax.set_title(f"{sym}: 5m close with entries and exits", loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            _date_axis(ax)
        return _svg(fig)


def exposure(positions: dict[str, dict[str, pd.Series]], closes: dict[str, pd.Series]) -> str:
    """Position notional (base units × 5m close) per symbol over time, one line per preset."""
    syms = list(closes)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(syms), 1, figsize=(WIDE, 2.0 * len(syms) + 0.3), sharex=True, squeeze=False
        )
        for ax, sym in zip(axes[:, 0], syms, strict=True):
            for i, (name, pos) in enumerate(positions.items()):
                q = pos.get(sym)
                if q is None:
                    continue
                notional = q.to_numpy() * closes[sym].reindex(q.index).to_numpy()
                ax.step(*thin(_times(q.index), notional), where="post", color=color(i), lw=0.9,
                        label=name)  # fmt: skip
            ax.axhline(0, color="#999999", lw=0.6)
            _plain_y(ax)
            ax.set_ylabel("USD")
            ax.set_title(f"{sym}: position notional (+ long, − short)", loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        _date_axis(axes[-1, 0])
        return _svg(fig)
