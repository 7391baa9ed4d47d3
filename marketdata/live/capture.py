"""Recorded captures (`<recv_ns> <frame json>`) read back through the live parsers, so a
backtest sees exactly the records the live ingestor published."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from marketdata.live.binance import BinanceParser
from marketdata.live.frames import FrameError, Item
from marketdata.live.hyperliquid import HyperliquidParser


def capture_frames(path: Path) -> Iterator[tuple[int, int, list[Item] | FrameError]]:
    """(line number, recv_ns, the frame's records) of every line; a line the live feed
    would dead-letter comes as the FrameError that says why, and reading goes on. A
    truncated `.gz` capture ends with one FrameError after what could be read.

    Hyperliquid and Binance frames are told apart by Hyperliquid's `channel` envelope."""
    hl, bn = HyperliquidParser(), BinanceParser()
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "rt") as f:
        try:
            for n, line in enumerate(f, 1):  # noqa: B007 - n names the line of a bad frame
                stamp, sep, frame = line.rstrip("\n").partition(" ")
                if not sep or not stamp.isdigit():
                    yield n, 0, FrameError("not '<recv_ns> <frame json>'")
                    continue
                recv_ns = int(stamp)
                parser = hl if frame.startswith('{"channel"') else bn
                try:
                    yield n, recv_ns, parser.parse(frame, recv_ns // 1_000_000).items
                except FrameError as e:
                    yield n, recv_ns, e
        except (EOFError, OSError) as e:  # a truncated capture: what was read is kept
            yield n + 1, 0, FrameError(f"the file ends early: {e}")


def capture_items(path: Path) -> Iterator[tuple[int, Item]]:
    """(recv_ns, record) of every frame; frames the live feed dead-lettered are left out."""
    for _, recv_ns, items in capture_frames(path):
        if not isinstance(items, FrameError):
            for item in items:
                yield recv_ns, item
