"""Recorded captures (`<recv_ns> <frame json>`) read back through the live parsers, so a
backtest sees exactly the records the live ingestor published."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from marketdata.live.binance import BinanceParser
from marketdata.live.frames import FrameError, Item, capture_lines
from marketdata.live.hyperliquid import HyperliquidParser


def capture_items(path: Path) -> Iterator[tuple[int, Item]]:
    """(recv_ns, record) of every frame; Hyperliquid and Binance frames are told apart by
    Hyperliquid's `channel` envelope. Frames the live feed dead-lettered are left out."""
    hl, bn = HyperliquidParser(), BinanceParser()
    for recv_ns, frame in capture_lines(path):
        parser = hl if frame.startswith('{"channel"') else bn
        try:
            parsed = parser.parse(frame, recv_ns // 1_000_000)
        except FrameError:
            continue
        for item in parsed.items:
            yield recv_ns, item
