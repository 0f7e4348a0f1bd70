"""Lines an outsider can cause (refusals) come at a bounded rate; the rest are counted by kind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from iotdps.server.throttled_log import ThrottledLog

log = logging.getLogger("iotdps.test.throttled")


async def test_held_back_lines_are_counted_by_kind_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    lines = ThrottledLog(log, lambda: clock[0], "refusals", per_window=2, window=0.05)
    with caplog.at_level(logging.INFO, logger=log.name):
        for n in range(7):
            lines("NO_ENROLLMENT" if n % 3 else "CHAIN_INVALID", "refused %d", n)
        assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1"]
        await asyncio.sleep(0.1)  # the window's end: one line with the counts, most first
        assert caplog.records[-1].getMessage() == (
            "5 more refusals (logged one by one up to 2 per 0.05 s): NO_ENROLLMENT 3, CHAIN_INVALID 2"
        )
        lines.flush()  # nothing held back any more: no line
        assert len(caplog.records) == 3


def test_without_an_event_loop_the_count_waits_for_flush(caplog: pytest.LogCaptureFixture) -> None:
    lines = ThrottledLog(log, lambda: 1.0, "refusals", per_window=1, window=60)
    with caplog.at_level(logging.INFO, logger=log.name):
        lines("A", "first")
        lines("A", "second")
        lines.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "first",
        "1 more refusals (logged one by one up to 1 per 60 s): A 1",
    ]
