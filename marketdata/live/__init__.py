"""Live market data: one ingestor per venue publishing onto the input topics
(`python -m marketdata.live --venue hyperliquid --symbols BTC-PERP --bootstrap HOST:PORT`)."""

from __future__ import annotations

from marketdata.live.binance import Binance
from marketdata.live.hyperliquid import Hyperliquid

VENUE_CLASSES = {"hyperliquid": Hyperliquid, "binance": Binance}
