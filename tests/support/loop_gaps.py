"""How long the event loop went without a turn while a test's code ran on it."""
from __future__ import annotations

import asyncio
import time


class LoopGaps:
    """``async with LoopGaps() as gaps:`` runs a ticker task for the block; ``gaps.longest``
    is then the longest time between two of its turns (a stall of the loop)."""

    def __init__(self, interval: float = 0):
        self.interval, self.gaps = interval, []

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    async def __aenter__(self) -> LoopGaps:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # the ticker's first turn
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._task.cancel()

    @property
    def longest(self) -> float:
        return max(self.gaps, default=0.0)
