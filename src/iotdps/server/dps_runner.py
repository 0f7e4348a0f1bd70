"""Running registrations for the DPS device edges (MQTT and HTTPS alike): throttling, the
direct-answer budget, the log lines (assigned and refused, at a bounded rate) and the work in
flight that a graceful shutdown waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iotdps import metrics
from iotdps.attestation.authentication import Authentication
from iotdps.evidence import Credential, TpmEvidence, X509Evidence
from iotdps.provisioning.registration import RegistrationOutcome, RegistrationRequest, new_operation_id
from iotdps.provisioning.service import ProvisioningService
from iotdps.server.dps_replies import DeviceReply, assigning_reply, error_body, outcome_reply
from iotdps.server.logthrottle import WindowedLog
from iotdps.server.ratelimit import TokenBucket

__all__ = ["DIRECT_ANSWER_BUDGET", "AssignedLog", "RegistrationRunner", "run_within"]

log = logging.getLogger("iotdps.dps")

# How long an edge waits for the pipeline before answering 202 + poll. Built-in allocations
# finish in milliseconds, so the device gets `assigned` at once (2.14.0 accepts a direct
# 200 and skips its fixed 2 s wait); a slow custom-allocation webhook gets 202 and polling.
DIRECT_ANSWER_BUDGET = 1.0


class AssignedLog:
    """Info lines for successful registrations, at most `per_window` per `window` seconds;
    past that, one line at the end of the window says how many were not shown.

    Enough to watch a test device arrive; at fleet scale a line per registration was a
    formatted record and a write() each, ~3% of the server's CPU. Every assignment is in the
    registration records anyway (`iotdps registration list`, the service API)."""

    def __init__(self, clock: Callable[[], float], *, per_window: int = 10, window: float = 1.0) -> None:
        self._lines = WindowedLog(
            log, clock, "registrations assigned", per_window=per_window, window=window, event="registration_assigned"
        )

    def __call__(self, registration_id: str, status: str, hub: str | None, device_id: str | None) -> None:
        self._lines("", "registration %s %s on %s as %s", registration_id, status, hub, device_id)

    def flush(self) -> None:
        """Log how many lines were held back (also on shutdown)."""
        self._lines.flush()


T = TypeVar("T")


def _expire(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_result(None)


async def _deliver(work: Awaitable[T], answer: asyncio.Future[T | None], inflight: set[asyncio.Task[Any]]) -> T | None:
    """Run `work` and put its result (or exception) into `answer` if someone still waits."""
    try:
        result = await work
    except Exception as exc:
        if answer.done():
            raise  # nobody waits any more: asyncio reports it, as for any failed task
        answer.set_exception(exc)
        return None
    except asyncio.CancelledError:
        answer.cancel()
        raise
    finally:
        inflight.discard(asyncio.current_task(answer.get_loop()))
    if not answer.done():
        answer.set_result(result)
    return result


async def run_within(
    loop: asyncio.AbstractEventLoop, work: Awaitable[T], budget: float, inflight: set[asyncio.Task[Any]]
) -> T | None:
    """`work`'s result if it finishes within `budget` seconds (its exception if it fails
    within them), else None; the work goes on either way, in a task kept in `inflight` until
    it ends. Cancelling the caller leaves the work alone too: the registration finishes and
    the device can poll for it.

    What a task plus `asyncio.wait({task}, timeout=budget)` does, with one future the task
    settles itself: no done-callbacks to schedule, no sets, once per registration."""
    answer: asyncio.Future[T | None] = loop.create_future()
    inflight.add(loop.create_task(_deliver(work, answer, inflight)))
    timer = loop.call_later(budget, _expire, answer)
    try:
        return await answer
    finally:
        timer.cancel()


def _count_registration(
    request: RegistrationRequest, outcome: RegistrationOutcome, transport: str, seconds: float
) -> None:
    record = outcome.record
    if record is not None and record.attestation_type is not None:
        attestation: str = record.attestation_type
    elif isinstance(request.credential, X509Evidence):
        attestation = "x509"
    elif isinstance(request.credential, TpmEvidence):
        attestation = "tpm"
    elif request.credential is not None or request.authentication is not None:
        attestation = "symmetricKey"  # a SAS token (symmetric key, or TPM's after its challenge)
    else:
        attestation = "none"
    status = "refused" if record is None else str(record.status)
    metrics.registration(status, attestation, transport, seconds)


class RegistrationRunner:
    """Runs registrations for both edges: throttling, the direct-answer budget, logging, and
    tracking of in-flight work so a graceful shutdown can wait for it."""

    def __init__(
        self,
        service: ProvisioningService,
        bucket: TokenBucket,
        clock: Callable[[], float],
        *,
        retry_after: int = 3,
        direct_answer_budget: float = DIRECT_ANSWER_BUDGET,
    ) -> None:
        self.service = service
        self._bucket = bucket
        self._clock = clock
        self._retry_after = retry_after
        self._budget = direct_answer_budget
        self._inflight: set[asyncio.Task[Any]] = set()
        self.accepting = True
        self.assigned_log = AssignedLog(clock)
        # Refused CONNECTs and registrations, DPS and hub alike: an outsider decides how many.
        self.refused_log = WindowedLog(log, clock, "refusals", count=metrics.refusal, event="refused")

    def throttled(self) -> DeviceReply | None:
        wait = self._bucket.take(self._clock())
        if wait:
            metrics.rate_limited("registrations")
            log.info("registration throttled: retry after %d s", max(wait, self._retry_after))
            return DeviceReply(429, error_body(429001, "Too many requests; retry later"), max(wait, self._retry_after))
        return None

    async def register(
        self,
        id_scope: str,
        registration_id: str,
        credential: Credential | None,
        payload: Any,
        csr: str | None,
        authentication: Authentication | None = None,
        *,
        peer: str | None = None,
        transport: str = "mqtt",
        api_version: str | None = None,
    ) -> DeviceReply:
        """`transport`: "mqtt" (also over websockets) or "https", for the metrics."""
        if not self.accepting:
            return DeviceReply(503, error_body(503000, "Service is shutting down; retry later"), self._retry_after)
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        operation_id = new_operation_id()
        request = RegistrationRequest(
            id_scope, registration_id, credential, payload, csr, operation_id, authentication, peer, api_version
        )
        work = self._run(request, transport)
        outcome = await run_within(asyncio.get_running_loop(), work, self._budget, self._inflight)
        if outcome is None:
            # The pipeline goes on; the device polls the operation id it now knows.
            return assigning_reply(operation_id)
        return outcome_reply(outcome)

    async def _run(self, request: RegistrationRequest, transport: str) -> RegistrationOutcome:
        started = time.perf_counter()
        outcome = await self.service.register(request)
        _count_registration(request, outcome, transport, time.perf_counter() - started)
        if outcome.reason is not None:
            self.refused_log(
                outcome.reason.value,
                "registration %s from %s refused: %s (%s)",
                request.registration_id,
                request.peer,
                outcome.reason.value,
                outcome.message,
            )
        else:
            record = outcome.record
            assert record is not None
            self.assigned_log(request.registration_id, record.status, record.assigned_hub, record.device_id)
        return outcome

    async def drain(self, timeout: float) -> None:
        """Stop taking registrations and wait (bounded) for those in flight."""
        self.accepting = False
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        self.assigned_log.flush()
        self.refused_log.flush()
