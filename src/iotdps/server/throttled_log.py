"""Log lines an outsider can cause, at a bounded rate.

Every refused CONNECT or registration used to be one info line, so anyone who could open TLS
connections could write to the operator's log as fast as the server could refuse (10,000
lines in half a minute in a test). A `ThrottledLog` writes the first `per_window` lines of each
`window` seconds one by one; past that it counts them, by kind (a refusal reason), and writes
one line at the end of the window with the counts. So the log grows by at most
`per_window + 1` lines a window, and nothing goes unmentioned: the refusals themselves are in
the refusal history (`iotdps refusals`), counted per device and peer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

__all__ = ["ThrottledLog"]


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        what: str,
        *,
        per_window: int = 10,
        window: float = 1.0,
    ) -> None:
        """`what` names the held-back lines in the summary ("more <what>")."""
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
        now = self._clock()
        if now >= self._window_start + self._window:
            self._window_start = now
            self._shown = 0
        if self._shown < self._per_window:
            self._shown += 1
            self._log.info(message, *args)
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
