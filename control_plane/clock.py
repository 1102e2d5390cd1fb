"""Time as the control plane sees it: wall-clock UTC for records, a monotonic clock for rate limits.

Services and limiters take a `Clock` so tests drive time forward instead of sleeping.
Invariant: `now()` is timezone-aware UTC with whole microseconds; `monotonic()` never goes back.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
