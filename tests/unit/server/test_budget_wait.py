"""The direct-answer budget: how long a register call waits for its pipeline (run_within)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from iotdps.server.dps_runner import run_within


async def _after(delay: float, value: Any) -> Any:
    await asyncio.sleep(delay)
    return value


async def test_work_that_finishes_in_time_gives_its_result() -> None:
    inflight: set[asyncio.Task[Any]] = set()
    assert await run_within(asyncio.get_running_loop(), _after(0.01, "done"), 5.0, inflight) == "done"
    assert inflight == set()


async def test_slow_work_gives_none_and_runs_on() -> None:
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task[Any]] = set()
    release: asyncio.Future[str] = loop.create_future()
    started = loop.time()
    assert await run_within(loop, release, 0.05, inflight) is None
    assert 0.04 <= loop.time() - started < 2
    (task,) = inflight  # the registration goes on; the device polls for it
    release.set_result("late")
    assert await task == "late"
    assert inflight == set()


async def test_a_failure_within_the_budget_reaches_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("store down")

    inflight: set[asyncio.Task[Any]] = set()
    with pytest.raises(ValueError, match="store down"):
        await run_within(asyncio.get_running_loop(), fails(), 5.0, inflight)
    await asyncio.sleep(0)
    assert inflight == set()


async def test_cancelling_the_caller_leaves_the_work_running() -> None:
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task[Any]] = set()
    release: asyncio.Future[int] = loop.create_future()
    waiting = loop.create_task(run_within(loop, release, 10, inflight))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    (task,) = inflight
    assert not task.done()
    release.set_result(1)
    assert await task == 1
