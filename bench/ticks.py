"""Seeded synthetic trade ticks in the nautilus parquet layout, for the throughput benches.

The same ticks feed the flow (`ENSEMBLE_INPUT=trades:FILE`) and NautilusTrader, so the
side-by-side compares the same work. A random walk of prices (1.6 annualised volatility),
exponential inter-arrival times (mean `gap_ms`), log-normal sizes; the layout of
`../shared/data/binance_spot_btcusdt_trades_2021-01-08.parquet` (timestamp ms UTC,
trade_id int64, price, quantity, buyer_maker "True"/"False").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

START_MS = 1_704_067_200_000  # 2024-01-01 UTC
ROW_GROUP = 131_072  # rows per parquet row group (pyarrow's default is 1M)


def synthetic_ticks(n: int, seed: int = 11, px0: float = 42_000.0, gap_ms: float = 400.0):
    rng = np.random.default_rng(seed)
    ts = START_MS + np.cumsum(rng.exponential(gap_ms, n)).astype("int64")
    sigma = 1.6 / np.sqrt(365 * 86_400_000 / gap_ms)
    px = np.round(px0 * np.exp(np.cumsum(sigma * rng.standard_normal(n))), 1)
    qty = np.round(rng.lognormal(np.log(0.01), 1.2, n), 5) + 0.00001
    maker = np.where(rng.random(n) < 0.5, "True", "False")
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(ts, unit="ms", utc=True).astype("datetime64[ms, UTC]"),
            "trade_id": np.arange(1, n + 1, dtype="int64") + 553_000_000,
            "price": px,
            "quantity": qty,
            "buyer_maker": maker,
        }
    )


def write_ticks(path: Path, n: int, seed: int = 11) -> Path:
    """Write `n` ticks to `path` (parquet, row groups of ROW_GROUP) once; reuse it after."""
    if not path.is_file():
        table = pa.Table.from_pandas(synthetic_ticks(n, seed), preserve_index=False)
        pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path
