"""REST request weight budgets: a per-minute token bucket, corrected by the venue's own count.

Binance reports the weight used in the current minute (`X-MBX-USED-WEIGHT-1M`) on every
response; Hyperliquid documents a per-IP budget (1200 per minute) and a weight per info
request. A request waits until its weight fits; a 429/418 waits the venue's Retry-After.
"""

from __future__ import annotations

import asyncio
import time


class WeightBudget:
    def __init__(self, weight_per_minute: int, clock=time.monotonic) -> None:
        if weight_per_minute <= 0:
            raise ValueError(f"weight_per_minute={weight_per_minute} must be > 0")
        self.capacity = float(weight_per_minute)
        self.tokens = float(weight_per_minute)
        self.refill_per_s = weight_per_minute / 60.0
        self._clock = clock
        self._last = clock()
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.refill_per_s)
        self._last = now

    def delay_for(self, weight: int) -> float:
        """Seconds until `weight` fits (0 when it fits now); takes it when it does."""
        self._refill()
        if self.tokens >= weight:
            self.tokens -= weight
            return 0.0
        return (weight - self.tokens) / self.refill_per_s

    async def acquire(self, weight: int) -> None:
        while (delay := self.delay_for(weight)) > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def observe_used(self, used_in_minute: int) -> None:
        """The venue's count of weight used this minute overrides our estimate when higher."""
        self._refill()
        self.tokens = min(self.tokens, max(0.0, self.capacity - used_in_minute))
