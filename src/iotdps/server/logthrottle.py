"""Log lines that anyone on the network can cause, through a token bucket per reason.

A failed TLS handshake or a malformed HTTP request costs the peer nothing, so without a budget
a flood of them becomes a flood of log lines (disk, and the lines an operator needs scroll
away). Each reason (OpenSSL's reason string, "timeout", the parse error's kind) has its own
bucket: `burst` lines at once, then `rate` a second. What a bucket holds back is counted, and
the count is logged once the bucket has a token again (by a timer, so a flood that stops
still gets its count reported), with the last peer it came from.

One reason flooding does not silence another: a storm of port scans leaves the one device
whose signature does not verify visible. The number of reasons kept is bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ThrottledLog"]

_MAX_REASONS = 256


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0
    last_peer: str = ""
    timer: asyncio.TimerHandle | None = None


class ThrottledLog:
    """`log(reason, peer, message)` logs `message` unless `reason` is over its budget."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.INFO,
        rate: float = 1.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`what` names the event in the suppression summary ("TLS handshake failures")."""
        self._logger = logger
        self._what = what
        self._level = level
        self._rate = rate
        self._burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def log(self, reason: str, peer: str, message: str, *args: object) -> bool:
        """Log `message % args` (which should name `peer` and `reason`); False if suppressed."""
        if not self._logger.isEnabledFor(self._level):
            return False
        now = self._clock()
        bucket = self._buckets.get(reason)
        if bucket is None:
            if len(self._buckets) >= _MAX_REASONS:
                self._forget_one()
            bucket = self._buckets[reason] = _Bucket(float(self._burst), now)
        if self._take(bucket, now):
            self._report(reason, bucket)
            self._logger.log(self._level, message, *args)
            return True
        bucket.suppressed += 1
        bucket.last_peer = peer
        if bucket.timer is None:
            self._schedule(reason, bucket)
        return False

    def _take(self, bucket: _Bucket, now: float) -> bool:
        bucket.tokens = min(float(self._burst), bucket.tokens + max(0.0, now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _report(self, reason: str, bucket: _Bucket) -> None:
        """Log how many lines of `reason` were held back, if any, and stop its timer."""
        if bucket.timer is not None:
            bucket.timer.cancel()
            bucket.timer = None
        if bucket.suppressed:
            self._logger.log(
                self._level,
                "%d more %s (%s) not logged, the last from %s",
                bucket.suppressed,
                self._what,
                reason,
                bucket.last_peer,
            )
            bucket.suppressed = 0

    def _schedule(self, reason: str, bucket: _Bucket) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): the count goes out with the next line
            return
        delay = (1.0 - bucket.tokens) / self._rate if self._rate > 0 else 1.0
        bucket.timer = loop.call_later(max(0.05, delay), self._flush, reason)

    def _flush(self, reason: str) -> None:
        bucket = self._buckets.get(reason)
        if bucket is None:
            return
        bucket.timer = None
        if bucket.suppressed and self._take(bucket, self._clock()):
            self._report(reason, bucket)
        elif bucket.suppressed:
            self._schedule(reason, bucket)

    def _forget_one(self) -> None:
        """Drop the oldest reason; its pending count is logged first, without a token."""
        reason = next(iter(self._buckets))
        self._report(reason, self._buckets.pop(reason))
