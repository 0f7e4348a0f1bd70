"""The direct-answer budget: how long a register call waits for its pipeline."""

from __future__ import annotations

import asyncio

from iotdps.server.dps_common import _finished_within


async def test_a_task_that_finishes_in_time_is_reported_finished() -> None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(asyncio.sleep(0.01, result="done"))
    assert await _finished_within(loop, task, 5.0)
    assert task.result() == "done"


async def test_a_slow_task_runs_on_after_the_budget() -> None:
    loop = asyncio.get_running_loop()
    release = loop.create_future()
    task = loop.create_task(asyncio.wait_for(release, 10))
    started = loop.time()
    assert not await _finished_within(loop, task, 0.05)
    assert 0.04 <= loop.time() - started < 2
    assert not task.done()  # the registration goes on; the device polls for it
    release.set_result("late")
    assert await task == "late"


async def test_cancelling_the_waiter_leaves_the_task_running() -> None:
    loop = asyncio.get_running_loop()
    release = loop.create_future()
    task = loop.create_task(asyncio.wait_for(release, 10))
    waiting = loop.create_task(_finished_within(loop, task, 10))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    assert not task.done()
    release.set_result(1)
    assert await task == 1
