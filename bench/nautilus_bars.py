"""NautilusTrader's side of bench/bench_nautilus.py: trade ticks → 5m/15m/1h bars, an EMA
on each bar type, in a BacktestEngine. Runs in NautilusTrader's own venv (it is not a
project dependency); imports nothing from the project.

    NAUTILUS_PYTHON bench/nautilus_bars.py TICKS.parquet

Prints one JSON line: ticks, bars, the seconds of `engine.run()` and of loading (parquet →
TradeTicks), both in this process.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.indicators import ExponentialMovingAverage
from nautilus_trader.model.currencies import BTC, USDT
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType
from nautilus_trader.model.identifiers import Venue
from nautilus_trader.model.objects import Money
from nautilus_trader.persistence.wranglers import TradeTickDataWrangler
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy


class BarsConfig(StrategyConfig, frozen=True):
    instrument_id: str


class BarsWithEma(Strategy):
    """Subscribes to 5m, 15m and 1h bars built from the trades, with a 20-bar EMA each."""

    def __init__(self, config: BarsConfig) -> None:
        super().__init__(config)
        steps = ("5-MINUTE", "15-MINUTE", "1-HOUR")
        self.bar_types = [
            BarType.from_str(f"{config.instrument_id}-{s}-LAST-INTERNAL") for s in steps
        ]
        self.emas = [ExponentialMovingAverage(20) for _ in self.bar_types]
        self.bars = 0

    def on_start(self) -> None:
        for bar_type, ema in zip(self.bar_types, self.emas, strict=True):
            self.register_indicator_for_bars(bar_type, ema)
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        self.bars += 1


def main() -> None:
    t0 = time.perf_counter()
    instrument = TestInstrumentProvider.btcusdt_binance()
    df = pd.read_parquet(sys.argv[1])
    df = df.set_index("timestamp")
    df["buyer_maker"] = df["buyer_maker"] == "True"
    df["trade_id"] = df["trade_id"].astype(str)
    ticks = TradeTickDataWrangler(instrument).process(df)
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR")))
    engine.add_venue(
        venue=Venue("BINANCE"),
        oms_type=OmsType.NETTING,
        account_type=AccountType.CASH,
        base_currency=None,
        starting_balances=[Money(1_000_000, USDT), Money(10, BTC)],
    )
    engine.add_instrument(instrument)
    engine.add_data(ticks)
    strategy = BarsWithEma(BarsConfig(instrument_id=str(instrument.id)))
    engine.add_strategy(strategy)
    loaded = time.perf_counter()
    engine.run()
    ran = time.perf_counter()
    print(
        json.dumps(
            {
                "ticks": len(ticks),
                "bars": strategy.bars,
                "run_s": ran - loaded,
                "load_s": loaded - t0,
            }
        )
    )
    engine.dispose()


if __name__ == "__main__":
    main()
