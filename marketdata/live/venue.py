"""What the shared feed machinery needs from a venue module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from marketdata.live.frames import Item, Parsed
from marketdata.live.rest import RestClient


@dataclass(frozen=True, slots=True)
class Gap:
    """A window the backfill could not cover: reported, never hidden."""

    stream: str
    symbol: str
    from_ms: int
    to_ms: int
    reason: str


@dataclass(slots=True)
class Backfill:
    items: list[Item] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


@dataclass(slots=True)
class FeedPosition:
    """Where the feed was when it was cut, per symbol: what the backfill starts from."""

    last_event_ms: int
    last_trade_ms: dict[str, int] = field(default_factory=dict)
    last_trade_id: dict[str, str] = field(default_factory=dict)


class FrameParser(Protocol):
    def parse(self, frame: str | bytes, recv_ms: int) -> Parsed: ...


class Venue(Protocol):
    name: str
    default_ws_url: str
    default_rest_url: str
    rest_weight_per_minute: int
    keepalive_interval_s: float  # 0 = the venue pings us
    max_connection_age_s: float  # the venue closes connections older than this

    def ws_url(self, base: str, symbols: list[str]) -> str: ...
    def subscribe_messages(self, symbols: list[str]) -> list[str]: ...
    def keepalive_message(self) -> str | None: ...
    def parser(self) -> FrameParser: ...
    async def backfill(
        self, rest: RestClient, symbols: list[str], pos: FeedPosition, now_ms: int
    ) -> Backfill:
        """What was missed since `pos`; `now_ms` (our clock, after the new subscription)
        is where a window the backfill cannot fetch ends."""
        ...
