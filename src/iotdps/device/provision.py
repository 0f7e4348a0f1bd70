"""Register with a DPS over MQTT, the way azure-iot-device does it (azure-wire-protocol.md 1).

CONNECT as the registration id, subscribe `$dps/registrations/res/#`, publish the register
request (all three in one write), then poll the operation (honouring `retry-after`) until it
is assigned or refused.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from iotdps.device.credentials import Credential, SymmetricKey, TpmCredential, tls_context
from iotdps.device.mqtt import MqttClient, open_mqtt
from iotdps.errors import IotdpsError, Unauthorized
from iotdps.protocols.mqtt.dps import (
    DPS_RESPONSE_FILTER,
    format_register_topic,
    format_status_topic,
    parse_dps_response_topic,
)
from iotdps.protocols.mqtt.events import PublishReceived

__all__ = ["CLIENT_VERSION", "Assignment", "ProvisioningFailed", "provision"]

CLIENT_VERSION = "iotdps-device/0.1"
DPS_API_VERSION = "2019-03-31"
# The api-version whose register request carries a CSR (azure-wire-protocol.md 10.1).
ISSUANCE_API_VERSION = "2025-07-01-preview"
_MAX_RETRY_AFTER = 10


class ProvisioningFailed(IotdpsError):
    """The service answered, and the answer was no (failed, disabled, or a 4xx error)."""


@dataclass(frozen=True, slots=True)
class Assignment:
    registration_id: str
    assigned_hub: str
    device_id: str
    substatus: str | None = None
    # Certificate issuance (a register with a CSR): base64 DER, leaf first; the trust bundle.
    issued_chain: tuple[str, ...] = ()
    trust_bundle: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "registrationId": self.registration_id,
            "assignedHub": self.assigned_hub,
            "deviceId": self.device_id,
            "substatus": self.substatus,
        }


async def provision(
    provisioning_host: str,
    id_scope: str,
    registration_id: str,
    credential: Credential,
    *,
    ca_pem: str | None = None,
    port: int = 8883,
    payload: Any = None,
    timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    csr: str | None = None,
) -> Assignment:
    """Register and return the assignment. `ssl_context`: a context made beforehand with
    `credentials.tls_context` (the fleet simulator builds them before it starts the clock);
    by default one is made from `ca_pem` and `credential` for this call. `csr`: base64 DER;
    registers with api-version 2025-07-01-preview and returns the issued chain too."""
    if isinstance(credential, TpmCredential):
        # As on Azure: TPM attestation is HTTPS (or AMQP) only; provision_https.provision_tpm.
        raise ProvisioningFailed("TPM attestation is not supported over MQTT: register over HTTPS (provision_tpm)")
    responses: asyncio.Queue[PublishReceived] = asyncio.Queue()
    context = ssl_context or tls_context(ca_pem, credential)
    api_version = ISSUANCE_API_VERSION if csr is not None else DPS_API_VERSION
    username = f"{id_scope}/registrations/{registration_id}/api-version={api_version}&ClientVersion=" + quote(
        CLIENT_VERSION, safe=""
    )
    password = credential.dps_token(id_scope, registration_id) if isinstance(credential, SymmetricKey) else None
    request: dict[str, Any] = {"registrationId": registration_id, "payload": payload}
    if csr is not None:
        request["csr"] = csr
    body = json.dumps(request).encode()
    topic = format_register_topic(str(uuid.uuid4()))
    client: MqttClient | None = None
    try:
        # One deadline for the whole call, connection included; the steps inside take no
        # timers of their own (one timer per device instead of three: bench/PROFILE.md).
        async with asyncio.timeout(timeout):
            client = await open_mqtt(provisioning_host, port, context, on_publish=responses.put_nowait, timeout=None)
            # CONNECT, SUBSCRIBE and the register PUBLISH leave in one TLS record (MQTT 3.1.1
            # lets a client send behind CONNECT before its CONNACK): one round trip instead of
            # three before the service starts working, which is what a device on a slow link
            # feels. A refused CONNECT makes the server drop the rest.
            with client.batch():
                client.send_connect(registration_id, username, password)
                subscribed = client.subscribe_nowait([DPS_RESPONSE_FILTER])
                acked = client.publish_nowait(topic, body)
            try:
                await client.connected(timeout=None)
            except IotdpsError as exc:
                raise Unauthorized(f"the provisioning service refused {registration_id}: {exc.message}") from None
            await subscribed
            for attempt in range(1000):  # bounded by the timeout long before this
                if attempt:  # the first request went out with CONNECT
                    acked = client.publish_nowait(topic, body)
                if acked is not None:
                    await acked
                answer = await responses.get()
                response = parse_dps_response_topic(answer.topic)
                doc = json.loads(answer.payload) if answer.payload.strip() else {}
                if response.status >= 300:
                    if response.status == 429 or response.status >= 500:
                        await asyncio.sleep(min(response.retry_after or 2, _MAX_RETRY_AFTER))
                        continue
                    message = doc.get("message") if isinstance(doc, dict) else None
                    raise ProvisioningFailed(f"provisioning refused: HTTP {response.status} {message or ''}".strip())
                status = doc.get("status")
                if status == "assigned":
                    state = doc.get("registrationState") or {}
                    chain = state.get("issuedCertificateChain") or []
                    if csr is not None and not chain:
                        raise ProvisioningFailed("provisioning assigned the device but issued no certificate")
                    return Assignment(
                        registration_id,
                        str(state["assignedHub"]),
                        str(state["deviceId"]),
                        state.get("substatus"),
                        tuple(str(c) for c in chain),
                        state.get("trustBundle"),
                    )
                if status != "assigning":
                    state = doc.get("registrationState") or {}
                    raise ProvisioningFailed(
                        f"provisioning {status}: {state.get('errorMessage') or state.get('errorCode') or 'no reason'}"
                    )
                await asyncio.sleep(min(response.retry_after or 2, _MAX_RETRY_AFTER))
                topic = format_status_topic(str(uuid.uuid4()), str(doc["operationId"]))
                body = b" "
            raise ProvisioningFailed("provisioning did not finish")
    finally:
        if client is not None:
            await client.disconnect()
