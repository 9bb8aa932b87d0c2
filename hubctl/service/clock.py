"""The service's clock: monotonic and wall-clock time, optionally accelerated.

What it is: `Clock`, the one source of time of `hubctl run`. With `--speed` and `--start-utc`
(`hubctl demo`, the tests against `hubctl simulate --speed`) both clocks run `speed` times faster
from `start_utc`, so cycles, poll intervals, staleness, revert timers and quarter-hours are all in
simulated seconds; `real_s` turns such seconds back into real ones for `asyncio.sleep`.
"""

from __future__ import annotations

import math
import time


class Clock:
    """Monotonic and wall-clock time, optionally accelerated (`speed`) from `start_utc`."""

    def __init__(self, speed: float = 1.0, start_utc: float | None = None) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._m0 = time.monotonic()
        self._u0 = start_utc
        self.accelerated = speed != 1.0 or start_utc is not None

    def mono(self) -> float:
        """Seconds on the service's monotonic clock (simulated seconds when accelerated)."""
        return self._m0 + (time.monotonic() - self._m0) * self.speed

    def utc(self) -> float:
        if self._u0 is None and self.speed == 1.0:
            return time.time()
        start = time.time() if self._u0 is None else self._u0
        return start + (time.monotonic() - self._m0) * self.speed

    def real_s(self, seconds: float) -> float:
        """Real seconds for `seconds` on this clock."""
        return seconds / self.speed
