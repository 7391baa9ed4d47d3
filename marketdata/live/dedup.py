"""Bounded memory of what was published, so a trade or candle is never published twice
across reconnects and backfills, and a feed that runs for months holds a fixed amount."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SeenWindow:
    """The last `capacity` keys, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"dedup capacity={capacity} must be > 0")
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True when the key is new (and now remembered); False for a duplicate."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)
