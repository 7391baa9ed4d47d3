"""The default backtest dataset: the research file's untouched test block.

The final 6 weeks of the Binance USD-M BTCUSDT perp 5m candles (bars closing from
models.evaluate.TEST_BLOCK_START_MS to the end of the file, 2026-01-08 .. 2026-02-19)
with their funding: after the shipped model's training range and never used to tune
anything. The flow needs `warmup_bars` bars before its first decision, so the slice
starts that many bars before the block (bars of 2026-01-04 .. 01-07, also outside the
training range); decisions, and every KPI, start at the block's first bar.

The slice is written next to the report (DIR/data/), never into the repository; the
funding feather is handed to the flow as freqtrade JSON (the file reader takes JSON).
"""

from __future__ import annotations

from pathlib import Path

from backtest.runner import BacktestError, Dataset
from models.card import utc_text
from models.evaluate import (
    RESEARCH_CANDLES,
    RESEARCH_FUNDING,
    TEST_BLOCK_START_MS,
    Spans,
    candle_frame,
    funding_frame,
)

BAR_MS = 300_000


def block_dataset(data_dir: Path, warmup_bars: int) -> Dataset:
    """The test block as a dataset, its files written to `data_dir`."""
    for path in (RESEARCH_CANDLES, RESEARCH_FUNDING):
        if not path.is_file():
            raise BacktestError(
                f"the default dataset needs {path} (the shared data directory); "
                "give --data to replay other files"
            )
    data_dir.mkdir(parents=True, exist_ok=True)
    candles = candle_frame()
    end_ms = int(candles["ts_ms"].iloc[-1]) + BAR_MS
    spec = Spans(candles, funding_frame(), data_dir).input(TEST_BLOCK_START_MS, end_ms, warmup_bars)
    day = utc_text(TEST_BLOCK_START_MS)[:10]
    return Dataset(f"binance_usdm_BTC_USDT_test_block_{day}_{utc_text(end_ms)[:10]}", spec)
