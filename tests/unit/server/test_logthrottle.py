"""The log throttle: a per-reason budget (a burst, then a steady rate, and a count of what was
held back) and a windowed budget (lines counted by kind once a window)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from iotdps.server.logthrottle import PerReasonLog, WindowedLog


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: _Clock) -> PerReasonLog:
    return PerReasonLog(logging.getLogger("test.throttle"), "test failures", rate=1.0, burst=3, clock=clock)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.throttle"]


def test_a_burst_then_the_rate_then_the_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.throttle")
    clock = _Clock()
    throttle = _throttle(clock)
    logged = [throttle.log("bad signature", f"peer-{i}", "failed %d", i) for i in range(10)]
    assert logged == [True] * 3 + [False] * 7
    assert _messages(caplog) == ["failed 0", "failed 1", "failed 2"]
    clock.now += 1.0  # one token back: the count of the 7 goes out before the next line
    assert throttle.log("bad signature", "peer-10", "failed %d", 10)
    summary = "7 more test failures (bad signature) not logged, the last from peer-9"
    assert _messages(caplog)[3:] == [summary, "failed 10"]


def test_reasons_have_separate_budgets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.throttle")
    clock = _Clock()
    throttle = _throttle(clock)
    for i in range(20):
        throttle.log("http request", "scanner", "scan %d", i)
    assert throttle.log("bad signature", "device-7", "the one that matters")
    assert "the one that matters" in _messages(caplog)


def test_nothing_is_counted_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "test.throttle")
    throttle = _throttle(_Clock())
    assert not any(throttle.log("r", "p", "x") for _ in range(10))
    assert _messages(caplog) == []


async def test_a_flood_that_stops_still_gets_its_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.throttle")
    throttle = PerReasonLog(logging.getLogger("test.throttle"), "test failures", rate=20.0, burst=2)
    for i in range(5):
        throttle.log("timeout", f"peer-{i}", "timed out %d", i)
    for _ in range(100):  # the timer fires once a token is back (1/20 s); bounded wait
        if any("not logged" in m for m in _messages(caplog)):
            break
        await asyncio.sleep(0.02)
    assert "3 more test failures (timeout) not logged, the last from peer-4" in _messages(caplog)


# --------------------------------------------------------------------------- WindowedLog

log = logging.getLogger("iotdps.test.throttled")


async def test_held_back_lines_are_counted_by_kind_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    lines = WindowedLog(log, lambda: clock[0], "refusals", per_window=2, window=0.05)
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
    lines = WindowedLog(log, lambda: 1.0, "refusals", per_window=1, window=60)
    with caplog.at_level(logging.INFO, logger=log.name):
        lines("A", "first")
        lines("A", "second")
        lines.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "first",
        "1 more refusals (logged one by one up to 1 per 60 s): A 1",
    ]
