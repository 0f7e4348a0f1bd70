"""Log lines that anyone on the network can cause, at a bounded rate: the one log throttle.

A failed TLS handshake, a malformed HTTP request or a refused CONNECT costs the peer nothing, so
without a budget a flood of them becomes a flood of log lines (disk, and the lines an operator
needs scroll away: 10,000 refusal lines in half a minute in a test). Nothing goes unmentioned:
what a budget holds back is counted and the count is logged.

Two budgets, for two kinds of line:
- `PerReasonLog`: a token bucket per reason (OpenSSL's reason string, "timeout", the parse
  error's kind), so a storm of port scans leaves the one device whose signature does not verify
  visible. Summary: "N more <what> (<reason>) not logged, the last from <peer>".
- `WindowedLog`: one budget a window for all kinds, counted by kind (a refusal reason), so the
  total is bounded however many kinds a flood uses. Summary, once a window: "N more <what>
  (logged one by one up to P per W s): KIND n, ...".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PerReasonLog", "WindowedLog"]

_MAX_REASONS = 256


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0
    last_peer: str = ""
    timer: asyncio.TimerHandle | None = None


class PerReasonLog:
    """`log(reason, peer, message)` logs `message` unless `reason` is over its own budget.

    For failures where one kind must not hide another (TLS handshakes, malformed HTTP): each
    reason has a token bucket, `burst` lines at once then `rate` a second; what a bucket held
    back is counted and logged, with the last peer, once it has a token again (by a timer, so
    a flood that stops still gets its count). At most `_MAX_REASONS` reasons are kept."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.INFO,
        rate: float = 1.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
        event: str | None = None,
    ) -> None:
        """`what` names the event in the suppression summary ("TLS handshake failures")."""
        self._logger = logger
        self._what = what
        self._level = level
        self._rate = rate
        self._burst = max(1, burst)
        self._clock = clock
        self._event = event  # the lines' event name in JSON logs (iotdps.logformat)
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
            self._logger.log(self._level, message, *args, extra=self._fields(reason, peer))
            return True
        bucket.suppressed += 1
        bucket.last_peer = peer
        if bucket.timer is None:
            self._schedule(reason, bucket)
        return False

    def _fields(self, reason: str, peer: str) -> dict[str, str]:
        fields = {"reason": reason, "peer": peer}
        if self._event:
            fields["event"] = self._event
        return fields

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


class WindowedLog:
    """`lines(kind, message)` (a call): the first `per_window` lines of each `window` seconds one by one,
    whatever their kind; past that they are counted by kind and summed up in one line at the end
    of the window, so the log grows by at most `per_window + 1` lines a window.

    For lines whose total must stay bounded (refused CONNECTs and registrations, registrations
    assigned): the refusals themselves are in the refusal history, counted per device and peer."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        what: str,
        *,
        per_window: int = 10,
        window: float = 1.0,
        count: Callable[[str], None] | None = None,
        event: str | None = None,
    ) -> None:
        """`what` names the held-back lines in the summary ("more <what>"). `count(kind)` is
        called for every line, shown or held back (the refusal metrics: iotdps.metrics).
        `event`: the lines' event name in JSON logs (iotdps.logformat)."""
        self._count = count
        self._event = event
        self._log = logger
        self._clock = clock
        self._what = what
        self._per_window = per_window
        self._window = window
        self._window_start = float("-inf")
        self._shown = 0
        self._hidden: Counter[str] = Counter()
        self._summary: asyncio.TimerHandle | None = None

    def __call__(self, kind: str, message: str, *args: object) -> None:
        """Log `message % args` at info level, or count it under `kind` when over the rate."""
        if self._count is not None:
            self._count(kind)
        now = self._clock()
        if now >= self._window_start + self._window:
            self._window_start = now
            self._shown = 0
        if self._shown < self._per_window:
            self._shown += 1
            extra: dict[str, str] = {"event": self._event} if self._event else {}
            if kind:
                extra["kind"] = kind
            self._log.info(message, *args, extra=extra)
            return
        self._hidden[kind] += 1
        if self._summary is None:
            delay = max(0.0, self._window_start + self._window - now)
            try:
                self._summary = asyncio.get_running_loop().call_later(delay, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): the next flush says it
                pass

    def flush(self) -> None:
        """Log how many lines were held back, by kind (also called on shutdown)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if not self._hidden:
            return
        total = sum(self._hidden.values())
        kinds = [k for k in self._hidden if k]
        detail = ": " + ", ".join(f"{k} {n}" for k, n in self._hidden.most_common()) if kinds else ""
        self._log.info(
            "%d more %s (logged one by one up to %d per %g s)%s",
            total,
            self._what,
            self._per_window,
            self._window,
            detail,
        )
        self._hidden.clear()
