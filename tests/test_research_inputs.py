"""The research harness trains on the features the flow will compute on the same files.

`models.evaluate` builds its training matrix from `_records` (candles and funding merged by
availability time) and then replays each fold's files through the real dataflow, whose
file reader (`marketdata.files`) puts a funding rate before the candle that closes at the
same time. The two must give every bar the same context, or a candidate is trained on
features the flow never shows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from marketdata.files import file_records
from models import evaluate as ev
from models.dataset import contexts, parse_source

HOUR_MS = 3_600_000


def _market(n_bars: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """5m candles from a UTC midnight and an 8-hourly funding rate that changes each time."""
    t0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
    ts = t0 + ev.BAR_MS * np.arange(n_bars)
    close = 90_000 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 1e-3, n_bars)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    candles = pd.DataFrame(
        {
            "ts_ms": ts,
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
            "volume": np.full(n_bars, 10.0),
        }
    )
    f_ts = np.arange(t0, int(ts[-1]) + ev.BAR_MS + 1, 8 * HOUR_MS)
    funding = pd.DataFrame({"ts_ms": f_ts, "rate": 1e-4 * (1 + np.arange(len(f_ts)))})
    return candles, funding


def test_research_records_give_each_bar_the_funding_rate_the_flow_gives_it(tmp_path: Path):
    candles, funding = _market(3 * 96 + 10)  # three funding settlements after the first
    research = list(contexts(ev._records(candles, funding), frozenset({ev.SYMBOL})))

    first_close = int(candles["ts_ms"].iloc[0]) + ev.BAR_MS
    last_close = int(candles["ts_ms"].iloc[-1]) + ev.BAR_MS
    spec = ev.Spans(candles, funding, tmp_path).input(first_close, last_close, 0)
    flow = list(contexts(file_records(parse_source(spec)), frozenset({ev.SYMBOL})))

    rate_at = dict(zip(funding["ts_ms"], funding["rate"], strict=True))
    by_close = {c.bar.end_ms: c.funding_rate for c in flow}
    assert [c.bar.end_ms for c in research] == list(by_close)
    settlements = [c for c in research if c.bar.end_ms in rate_at]
    assert len(settlements) == 3
    for c in settlements:  # a rate stamped T is known at the close at T, as in the flow
        assert by_close[c.bar.end_ms] == rate_at[c.bar.end_ms]
        assert c.funding_rate == rate_at[c.bar.end_ms], ev.utc_text(c.bar.end_ms)
    assert [c.funding_rate for c in research] == list(by_close.values())
