"""Pacing of a replay: as fast as possible, a fixed event rate, or event time sped up."""

from __future__ import annotations

import time
from datetime import date


class RateLimiter:
    """Lets ``rate`` events per second through (rate None or 0: no limit)."""

    def __init__(self, rate: float | None, clock=time.monotonic, sleep=time.sleep):
        self.rate = rate if rate and rate > 0 else None
        self._clock, self._sleep = clock, sleep
        self._start: float | None = None
        self._sent = 0

    def wait(self, n: int = 1) -> None:
        if self.rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        self._sent += n
        due = self._start + self._sent / self.rate
        if due > now:
            self._sleep(due - now)


def event_time_gap(previous: date | None, current: date, speedup: float | None) -> float:
    """Seconds to wait between two snapshots so event time runs ``speedup`` times real time."""
    if previous is None or not speedup or speedup <= 0:
        return 0.0
    return max(0.0, (current - previous).total_seconds() / speedup)
