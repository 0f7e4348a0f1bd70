"""The hub's credentials topic: certificate renewal for a connected device (wire doc 10.1).

    device -> hub   $iothub/credentials/POST/issueCertificate/?$rid={rid}
                    {"id": "<deviceId>", "csr": "<base64 DER PKCS#10>", "replace": false}
    hub -> device   $iothub/credentials/res/202/?$rid={rid}
                    {"correlationId": "...", "operationExpires": "2026-...Z"}
    then            $iothub/credentials/res/200/?$rid={rid}
                    {"correlationId": "...", "issuedCertificateChain": ["<b64 DER leaf>", ..., "<root>"],
                     "trustBundle": {...}}
    or              $iothub/credentials/res/{4xx|5xx}/?$rid={rid}
                    {"errorCode": 409005, "message": "...", "timestampUtc": "..."}

The 200 body carries the chain as DPS's 2025-07-01-preview `issuedCertificateChain` does (base64
DER, leaf first, ending at the root), under the same name, and the device's trust bundle as a
registration answer's `trustBundle` (left out when there is none). Answers go to the connection that
asked, subscribed to `$iothub/credentials/res/#` or not (as twin responses do).

What is refused at once, before any work (no 202): a body over `MAX_BODY` bytes (413001), a
body that is not the JSON above (400004), an `id` that is not the connection's device (401002),
more than `burst` requests per device in `1/rate` seconds (429001), a second request while one
is active (409005). Then the policy and the CSR are checked (provisioning.hub_certificates,
the same vetting as at DPS; refusal codes from refusals.DEVICE_ANSWERS, e.g. 400020 bad CSR,
400025 no issuance policy, 404001 not provisioned here), still before the 202. After the 202
the CA signs; it may fail with a 5xx (503230 CA unreachable, worth retrying) or 4xx.

`replace: true` does not cancel the active request (a certificate the CA has signed is always
recorded): the new one is accepted and runs when the active one has finished, so its
certificate is the one the hub identity ends with. At most one request waits so.

Active requests and rate buckets are per process: a device is connected to one node at a time.

After a certificate is recorded (and answered), the device's live connection is re-checked
against its new identity (`renewed`, LiveDevices.recheck): one made with a certificate the
renewal dropped (older than the previous one), or with a SAS key a first certificate replaced
without `keepExistingCredential`, is closed; the device reconnects with the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from iotdps import metrics
from iotdps.errors import IotdpsError
from iotdps.jsonload import InvalidJson, load_json
from iotdps.pki.csr_policy import MAX_CSR_TEXT
from iotdps.protocols.mqtt.hub import format_credentials_response_topic
from iotdps.provisioning.hub_certificates import HubCertificateRefused, HubCertificates, PreparedIssue
from iotdps.server.ratelimit import TokenBucket
from iotdps.timestamps import format_time

__all__ = ["MAX_BODY", "CredentialRequests", "Requester"]

log = logging.getLogger(__name__)

# A CSR at most MAX_CSR_TEXT characters, the id (128) and the JSON around them.
MAX_BODY = MAX_CSR_TEXT + 512
# How long the 202 says the operation may take: longer than any issuing CA's timeout (at most
# 300 s), so a device that heard nothing by then knows the answer was lost and asks again.
OPERATION_SECONDS = 330
# Bounds the per-device state of a process with many devices: the oldest buckets go first.
MAX_TRACKED = 65536


class Requester(Protocol):
    """The connection a request came on (hub_mqtt.DeviceEndpoint)."""

    hub: str
    device_id: str
    closed: bool

    def answer_credentials(self, status: int, rid: str, body: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class _Active:
    correlation_id: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: bool = False  # a replace=true request is queued behind this one
    queued: bool = False  # this one waits behind a replaced one


def _error(code: int, message: str) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "timestampUtc": format_time(dt.datetime.now(dt.UTC))}


class _BadRequest(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _parse(payload: bytes, device_id: str) -> tuple[str, bool]:
    """(csr, replace) from a request body, or _BadRequest."""
    if len(payload) > MAX_BODY:
        raise _BadRequest(413, 413001, f"request body over {MAX_BODY} bytes")
    try:
        doc = load_json(payload, what="the request body", max_depth=4)
    except InvalidJson as exc:
        raise _BadRequest(400, 400004, exc.message) from None
    if not isinstance(doc, dict):
        raise _BadRequest(400, 400004, "the request body must be a JSON object")
    csr, replace, who = doc.get("csr"), doc.get("replace", False), doc.get("id")
    if not isinstance(who, str) or not isinstance(csr, str) or not isinstance(replace, bool):
        raise _BadRequest(400, 400004, 'the body needs "id" and "csr" (strings) and an optional "replace" (bool)')
    if who != device_id:
        raise _BadRequest(401, 401002, "the request's id is not this connection's device")
    return csr, replace


class CredentialRequests:
    """The credentials topic of one process's hubs (see the module docstring)."""

    def __init__(
        self,
        certificates: HubCertificates,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        *,
        rate: float = 1 / 60,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        renewed: Callable[[str, str], None] | None = None,
    ) -> None:
        """`rate`/`burst`: requests a device may make (one a minute, five at once by default:
        renewal is a rare event, a device asking more often is broken or hostile). `renewed(hub,
        device_id)`: told once a certificate is recorded, so the device's live connection is
        re-checked against its identity, which no longer accepts certificates older than the
        previous one (LiveDevices.recheck)."""
        self._certificates = certificates
        self._renewed = renewed
        self._spawn = spawn
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._active: dict[tuple[str, str], _Active] = {}

    def _throttled(self, key: tuple[str, str]) -> int:
        now = self._clock()
        bucket = self._buckets.pop(key, None) or TokenBucket(self._rate, self._burst, now)
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    async def handle(self, requester: Requester, rid: str, payload: bytes) -> None:
        """One request: refusals answered at once; otherwise a 202 and the rest in the background."""
        key = (requester.hub, requester.device_id)
        try:
            csr, replace = _parse(payload, requester.device_id)
            wait = self._throttled(key)
            if wait:
                raise _BadRequest(429, 429001, f"too many certificate requests; retry in {wait} s")
            before = self._active.get(key)
            if before is not None and (not replace or before.waiting or before.queued):
                raise _BadRequest(409, 409005, "a certificate request for this device is already active")
        except _BadRequest as exc:
            log.info("hub %s: certificate request of %s refused: %s", key[0], key[1], exc.message)
            metrics.hub_operation(key[0], "certificate", "refused")
            requester.answer_credentials(exc.status, rid, _error(exc.code, exc.message))
            return
        mine = _Active(uuid.uuid4().hex, queued=before is not None)
        if before is not None:
            before.waiting = True
        self._active[key] = mine  # held from here, so a second request is 409005 while we vet
        try:
            prepared = await self._prepare(requester, rid, csr)
        except BaseException:
            self._finish(key, mine, before)
            raise
        if prepared is None:
            self._finish(key, mine, before)
            return
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=OPERATION_SECONDS)
        requester.answer_credentials(
            202, rid, {"correlationId": mine.correlation_id, "operationExpires": format_time(expires)}
        )
        self._spawn(self._complete(requester, rid, prepared, mine, before))

    async def _prepare(self, requester: Requester, rid: str, csr: str) -> PreparedIssue | None:
        try:
            return await self._certificates.prepare(requester.hub, requester.device_id, csr)
        except HubCertificateRefused as exc:
            log.info("hub %s: certificate request of %s refused: %s", requester.hub, requester.device_id, exc.message)
            metrics.hub_operation(requester.hub, "certificate", "refused")
            requester.answer_credentials(exc.status, rid, _error(exc.error_code, exc.device_message))
        except IotdpsError as exc:
            log.warning("hub %s: certificate request of %s failed: %s", requester.hub, requester.device_id, exc)
            requester.answer_credentials(503, rid, _error(503001, "the hub could not read the device's policy"))
        return None

    async def _complete(
        self, requester: Requester, rid: str, prepared: PreparedIssue, mine: _Active, before: _Active | None
    ) -> None:
        key = (requester.hub, requester.device_id)
        try:
            if before is not None:
                await before.done.wait()  # the replaced request ends first: our certificate wins
            chain, bundle = await self._certificates.complete(prepared)
        except HubCertificateRefused as exc:
            log.info("hub %s: no certificate for %s: %s", key[0], key[1], exc.message)
            metrics.hub_operation(key[0], "certificate", "failed")
            self._answer(requester, exc.status, rid, {**_error(exc.error_code, exc.device_message),
                                                      "correlationId": mine.correlation_id})  # fmt: skip
        except IotdpsError as exc:
            log.warning("hub %s: certificate for %s not recorded: %s", key[0], key[1], exc)
            self._answer(requester, 503, rid, {**_error(503001, "the certificate could not be recorded; retry"),
                                               "correlationId": mine.correlation_id})  # fmt: skip
        else:
            body: dict[str, Any] = {
                "correlationId": mine.correlation_id,
                "issuedCertificateChain": chain.issued_certificate_chain(),
            }
            if bundle is not None:
                body["trustBundle"] = bundle.to_wire()
            metrics.hub_operation(key[0], "certificate", "issued")
            self._answer(requester, 200, rid, body)
            if self._renewed is not None:
                self._renewed(*key)
        finally:
            self._finish(key, mine)

    @staticmethod
    def _answer(requester: Requester, status: int, rid: str, body: dict[str, Any]) -> None:
        if requester.closed:
            # The certificate is recorded and is the hub identity's; the device did not hear it
            # and asks again (its previous certificate still opens the hub until then).
            log.info("hub %s: %s left before its certificate answer (%d)", requester.hub, requester.device_id, status)
            return
        requester.answer_credentials(status, rid, body)

    def _finish(self, key: tuple[str, str], mine: _Active, before: _Active | None = None) -> None:
        """`mine` is over; a replaced request it was to follow, still running, is active again."""
        mine.done.set()
        if self._active.get(key) is not mine:
            return
        if before is not None and not before.done.is_set():
            before.waiting = False
            self._active[key] = before
        else:
            del self._active[key]


def response_topic_and_body(status: int, rid: str, body: dict[str, Any]) -> tuple[str, bytes]:
    """What `Requester.answer_credentials` publishes."""
    return format_credentials_response_topic(status, rid), json.dumps(body, separators=(",", ":")).encode()
