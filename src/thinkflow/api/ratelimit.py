"""Client-side rate limits: token buckets for requests per minute and tokens per minute.

Each bucket refills continuously at ``limit / 60`` per second and holds at most one second's
worth (so a burst never exceeds what the provider's per-minute limit allows in that second):
over any window of T seconds at most ``capacity + T * limit / 60`` units pass. A request larger
than the capacity waits for a full bucket and then goes (the bucket goes into debt).
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, per_minute: float | None, clock=time.monotonic) -> None:
        self.rate = None if per_minute is None else per_minute / 60.0
        self.capacity = None if self.rate is None else max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._t = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    async def take(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` units may pass (first come, first served), then take them."""
        if self.rate is None:
            return
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Correct an earlier estimate: positive ``delta`` charges more, negative refunds."""
        if self.rate is not None:
            self._refill()
            self.level = min(self.capacity, self.level - delta)
