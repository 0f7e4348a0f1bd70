"""Custom allocation: ask the operator's webhook which hub (azure-wire-protocol.md 6.1, 6.2).

The request carries the enrollment as the service API shows it, with no keys; the device's
runtime context (current hub and device id only when it was assigned before); and `linkedHubs`
(only the current hub when the reprovision policy says never to move). Any bad answer (non-2xx,
not an object, no or unknown `iotHubHostName`, malformed `initialTwin`, timeout, connection
failure, a destination the allowlist refuses) refuses the registration with WEBHOOK_FAILED and
words for the operator. Webhook URLs often carry a secret (`?code=...`), so messages name only
the URL's host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iotdps.allocation.destinations import DestinationRefused
from iotdps.enrollment.models import (
    CustomAllocationDefinition,
    EnrollmentGroup,
    IndividualEnrollment,
    InitialTwin,
)
from iotdps.errors import InvalidInput
from iotdps.ports import WebhookTransport
from iotdps.refusals import RefusalReason, Refused

__all__ = ["DEFAULT_WEBHOOK_TIMEOUT", "WebhookAllocation", "build_request", "call_webhook", "parse_response"]

DEFAULT_WEBHOOK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class WebhookAllocation:
    hub: str
    initial_twin: InitialTwin | None = None
    payload: Any = None


def _enrollment_doc(enrollment: IndividualEnrollment | EnrollmentGroup) -> dict[str, Any]:
    doc = enrollment.to_json(include_keys=False)
    attestation = dict(doc.get("attestation") or {})
    # `symmetricKey: {}` is what to_json leaves without keys; Azure sends just the type.
    if attestation.get("symmetricKey") == {}:
        attestation.pop("symmetricKey")
    doc["attestation"] = attestation
    return doc


def build_request(
    enrollment: IndividualEnrollment | EnrollmentGroup,
    registration_id: str,
    linked_hubs: Sequence[str],
    *,
    attestation_context: Mapping[str, Any],
    current_hub: str | None = None,
    current_device_id: str | None = None,
    payload: Any = None,
) -> dict[str, Any]:
    """The AllocationRequest body. `attestation_context`: `{"symmetricKey": {}}` or `{"x509": {...}}`."""
    context: dict[str, Any] = {"registrationId": registration_id, **attestation_context}
    if current_hub is not None:
        context["currentIotHubHostName"] = current_hub
        if current_device_id is not None:
            context["currentDeviceId"] = current_device_id
    if payload is not None:
        context["payload"] = payload
    key = "individualEnrollment" if isinstance(enrollment, IndividualEnrollment) else "enrollmentGroup"
    return {key: _enrollment_doc(enrollment), "deviceRuntimeContext": context, "linkedHubs": list(linked_hubs)}


def parse_response(
    status: int, body: Mapping[str, Any] | None, linked_hubs: Sequence[str], host: str
) -> WebhookAllocation:
    if not 200 <= status < 300:
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} answered HTTP {status}")
    if not isinstance(body, Mapping):
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} did not answer a JSON object")
    hub = body.get("iotHubHostName")
    if not isinstance(hub, str) or not hub:
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} answered no iotHubHostName")
    by_name = {h.lower(): h for h in linked_hubs}
    if hub.lower() not in by_name:
        raise Refused(
            RefusalReason.WEBHOOK_FAILED,
            f"webhook at {host} chose hub {hub!r}, not one of the hubs offered ({', '.join(linked_hubs)})",
        )
    try:
        twin = InitialTwin.from_json(body.get("initialTwin"), "initialTwin")
    except InvalidInput as exc:
        raise Refused(
            RefusalReason.WEBHOOK_FAILED, f"webhook at {host} answered a bad initialTwin: {exc.message}"
        ) from exc
    return WebhookAllocation(by_name[hub.lower()], twin, body.get("payload"))


async def call_webhook(
    transport: WebhookTransport,
    definition: CustomAllocationDefinition,
    request: Mapping[str, Any],
    linked_hubs: Sequence[str],
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
) -> WebhookAllocation:
    host = urlsplit(definition.webhook_url).netloc or "(no host)"
    try:
        response = await transport.post_json(definition.webhook_url, request, timeout)
    except TimeoutError as exc:
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} timed out after {timeout:g} s") from exc
    except DestinationRefused as exc:
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} not called: {exc}") from exc
    except OSError as exc:
        raise Refused(RefusalReason.WEBHOOK_FAILED, f"webhook at {host} unreachable ({type(exc).__name__})") from exc
    return parse_response(response.status, response.body, linked_hubs, host)
