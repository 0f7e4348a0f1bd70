"""Registration throttling: a token bucket answered with 429 and an integer retry-after.

The Azure SDKs retry 429 after `retry-after` seconds without limit (azure-wire-protocol.md
1.7), so throttling sheds load instead of failing devices. The clock is passed in so the
bucket is testable without sleeping.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens per second up to `burst`; rate 0 means unlimited."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = now

    def take(self, now: float) -> int:
        """Take one token. Return 0 when allowed, else whole seconds until one is available."""
        if self.rate <= 0:
            return 0
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0
        # Integer seconds, at least 1: the SDK parses retry-after with int(x, 10).
        return max(1, math.ceil((1.0 - self._tokens) / self.rate))
