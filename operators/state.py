"""One symbol's strategy state: plain data (picklable), snapshotted by Bytewax recovery.

State holds data only; the configuration is passed in on every bar and never stored here,
so a restart runs on the configuration its `resume` audit shows.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from operators.bandit import ThompsonBandit
from operators.config import StrategyConfig
from operators.execution import Portfolio
from operators.ledger import OpenTrade, PendingIntent
from operators.risk import RiskState

LOW_CONF_TRADES = 5  # entries averaged for "trading while recent confidence is below 50%"
CALIBRATION_WINDOW = 288  # resolved predictions in the calibration record (1 day)
ADV_BARS = 288  # 5m bars of volume behind the ADV cap (1 day)


@dataclass
class SymbolState:
    symbol: str
    portfolio: Portfolio
    risk: RiskState
    bandit: ThompsonBandit
    rng: np.random.Generator
    bar_index: int = 0
    gap_bars: int = 0
    last_close: float = 0.0
    pending: PendingIntent | None = None
    open_trade: OpenTrade | None = None
    last_entry_bar: int | None = None  # the bar whose open filled the last entry
    last_gap_bar: int | None = None  # the last bar that was not complete
    shadow: bool = False
    started: bool = False
    decisions: int = 0
    trades: int = 0  # closed round trips
    wins: int = 0
    losses: int = 0
    fills: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    daily_equity: deque = field(default_factory=lambda: deque(maxlen=31))  # (day, close equity)
    recent_conf: deque = field(default_factory=lambda: deque(maxlen=50))
    # the model's probability of the side each recent entry took (SPEC 9: confidence < 50%)
    recent_side_p: deque = field(default_factory=lambda: deque(maxlen=LOW_CONF_TRADES))
    volume_usd: deque = field(default_factory=lambda: deque(maxlen=ADV_BARS))
    calib_pending: deque = field(default_factory=deque)  # (bar_index, p_up, close)
    calib_resolved: deque = field(default_factory=lambda: deque(maxlen=CALIBRATION_WINDOW))

    def count_rejection(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


def symbol_seed(seed: int, symbol: str) -> int:
    """A per-symbol RNG seed that does not depend on Python's hash randomisation."""
    return (seed * 1_000_003 + zlib.crc32(symbol.encode())) % (2**32)


def new_state(cfg: StrategyConfig, symbol: str, seed: int) -> SymbolState:
    return SymbolState(
        symbol=symbol,
        portfolio=Portfolio(cash=cfg.risk.initial_equity),
        risk=RiskState(peak_equity=cfg.risk.initial_equity),
        bandit=ThompsonBandit(),
        rng=np.random.default_rng(symbol_seed(seed, symbol)),
    )
