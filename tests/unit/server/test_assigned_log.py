"""Successful registrations are logged one by one up to a rate, then counted in one line."""

from __future__ import annotations

import asyncio
import logging

import pytest

from iotdps.server.dps_runner import AssignedLog


async def test_lines_past_the_rate_are_summed_up_at_the_end_of_the_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    assigned = AssignedLog(lambda: clock[0], per_window=3, window=0.05)
    with caplog.at_level(logging.INFO, logger="iotdps.dps"):
        for i in range(8):
            assigned(f"dev-{i}", "assigned", "hub-1", f"dev-{i}")
        one_by_one = [r.getMessage() for r in caplog.records]
        assert one_by_one == [f"registration dev-{i} assigned on hub-1 as dev-{i}" for i in range(3)]
        await asyncio.sleep(0.1)  # the window ends: one line for the other five
        assert caplog.records[-1].getMessage() == "5 more registrations assigned (logged one by one up to 3 per 0.05 s)"
        clock[0] += 1.0  # a new window shows lines again
        assigned("dev-9", "assigned", "hub-1", "dev-9")
        assert caplog.records[-1].getMessage() == "registration dev-9 assigned on hub-1 as dev-9"
        assert len(caplog.records) == 5


async def test_flush_says_what_was_held_back_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    assigned = AssignedLog(lambda: 5.0, per_window=1, window=60)
    with caplog.at_level(logging.INFO, logger="iotdps.dps"):
        for i in range(3):
            assigned(f"dev-{i}", "assigned", "hub-1", f"dev-{i}")
        assigned.flush()
        assigned.flush()  # nothing more to say
    assert [r.getMessage() for r in caplog.records][
        -1
    ] == "2 more registrations assigned (logged one by one up to 1 per 60 s)"
    assert len(caplog.records) == 2
