"""Telemetry routes: a route that is down buffers within its bound, drops the oldest beyond it
(counted), and catches up in order once it is back; NATS subject tokens are escaped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from iotdps.hub.records import TelemetryMessage
from iotdps.server.telemetry_routes import TelemetryRoutes, subject_token


class _Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.up = False
        self.got: list[bytes] = []

    async def send(self, messages: Sequence[TelemetryMessage]) -> None:
        if not self.up:
            raise ConnectionError("down")
        self.got.extend(m.body for m in messages)

    async def close(self) -> None:
        return None


def _msgs(start: int, count: int) -> list[TelemetryMessage]:
    now = datetime.now(UTC)
    return [TelemetryMessage("hub", "dev", str(i).encode(), now) for i in range(start, start + count)]


async def test_a_down_route_buffers_within_its_bound_then_catches_up_in_order() -> None:
    route = _Flaky()
    routes = TelemetryRoutes([route], buffer=10)
    routes.start()
    try:
        routes.offer(_msgs(0, 6))
        routes.offer(_msgs(6, 9))  # 15 offered, 10 fit: the 5 oldest are dropped
        await asyncio.sleep(0.05)
        status = routes.status()["flaky"]
        assert status["down"] is True and status["buffered"] == 10 and status["dropped"] == 5
        route.up = True
        for _ in range(100):
            if routes.status()["flaky"]["sent"] == 10:
                break
            await asyncio.sleep(0.05)
        assert route.got == [str(i).encode() for i in range(5, 15)]
        assert routes.status()["flaky"] == {"buffered": 0, "dropped": 5, "sent": 10, "down": False}
    finally:
        await routes.stop(grace=1)


def test_subject_tokens_cannot_change_the_subject() -> None:
    assert subject_token("hub.example.net") == "hub%2Eexample%2Enet"
    assert subject_token("a*b>c d%") == "a%2Ab%3Ec%20d%25"
    assert subject_token("plain-device_1") == "plain-device_1"
    assert subject_token("") == "%00"
