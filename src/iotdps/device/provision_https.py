"""Register a TPM device over HTTPS (azure-wire-protocol.md 3.2), as the C and Node SDKs do.

TPM attestation is HTTPS (or AMQP) only, on Azure and here, so this is the one flow of our
client that does not use MQTT:

1. PUT register with `{registrationId, tpm: {endorsementKey, storageRootKey}}` and no
   Authorization; the service answers 401 with `authenticationKey`, a blob only this TPM opens.
2. The TPM imports it; the same PUT goes again with a SAS signed in the TPM.
3. 202 and polling (`Retry-After` honoured) until assigned or refused, with the same SAS.
4. On `assigned`, `registrationState.tpm.authenticationKey` is imported too: its key is the
   hub key, so from then on the TPM signs the device's hub tokens.

With a `csr` (issue 18, `iotdps device run --tpm --csr`) every request of the flow uses
api-version 2025-07-01-preview and both PUTs carry the same body with the `csr`, as the SDKs
repeat the body after the challenge. The service vets and signs it on the authenticated PUT
only (the challenge looks at the EK alone), and the assigned answer carries the
`issuedCertificateChain` and trust bundle, returned in the Assignment like provision() does.

The HTTP exchange is a few blocking requests and the TPM calls block as well, so the whole flow
runs in a worker thread with stdlib http.client; every request has a timeout and the polling
loop a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import time
from typing import Any
from urllib.parse import quote

from iotdps.device.credentials import TpmCredential, tls_context
from iotdps.device.provision import (
    CLIENT_VERSION,
    DPS_API_VERSION,
    ISSUANCE_API_VERSION,
    Assignment,
    ProvisioningFailed,
)
from iotdps.errors import Unauthorized

__all__ = ["provision_tpm"]

_MAX_RETRY_AFTER = 10
_MAX_BODY = 1 << 20  # a DPS answer is a few kB; refuse to buffer more


async def provision_tpm(
    provisioning_host: str,
    id_scope: str,
    registration_id: str,
    credential: TpmCredential,
    *,
    ca_pem: str | None = None,
    port: int = 443,
    payload: Any = None,
    timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    csr: str | None = None,
) -> Assignment:
    """Register over HTTPS with the TPM's challenge; the hub key ends up in the TPM. `csr`:
    base64 DER; registers with api-version 2025-07-01-preview and returns the issued chain too."""
    context = ssl_context or tls_context(ca_pem, credential)
    flow = _Flow(provisioning_host, port, context, id_scope, registration_id, credential, timeout, csr)
    return await asyncio.to_thread(flow.run, payload)


class _Flow:
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        id_scope: str,
        registration_id: str,
        credential: TpmCredential,
        timeout: float,
        csr: str | None,
    ) -> None:
        self.host, self.port, self.context = host, port, context
        self.id_scope, self.registration_id = id_scope, registration_id
        self.credential = credential
        self.csr = csr
        # Status polls too: the issued chain is rendered per api-version, on the poll's answer.
        self.api_version = ISSUANCE_API_VERSION if csr is not None else DPS_API_VERSION
        self.deadline = time.monotonic() + timeout

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"provisioning {self.registration_id} did not finish in time")
        return left

    def _request(self, method: str, path: str, body: Any, sas: str | None) -> tuple[int, dict[str, Any], float | None]:
        """(status, JSON body or {}, Retry-After seconds)."""
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self._remaining())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": CLIENT_VERSION,
        }
        if sas is not None:
            headers["Authorization"] = sas
        data = json.dumps(body).encode() if body is not None else None
        url = f"/{quote(self.id_scope, safe='')}/registrations/{quote(self.registration_id, safe='')}{path}"
        try:
            connection.request(method, f"{url}?api-version={self.api_version}", body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read(_MAX_BODY + 1)
            retry_after = response.getheader("Retry-After")
        finally:
            connection.close()
        if len(raw) > _MAX_BODY:
            raise ProvisioningFailed("the provisioning service's answer is too large")
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except ValueError:
            doc = {}
        return response.status, doc if isinstance(doc, dict) else {}, _seconds(retry_after)

    def run(self, payload: Any) -> Assignment:
        tpm = self.credential.tpm
        body: dict[str, Any] = {
            "registrationId": self.registration_id,
            "tpm": {
                "endorsementKey": base64.b64encode(tpm.endorsement_key()).decode("ascii"),
                "storageRootKey": base64.b64encode(tpm.storage_root_key()).decode("ascii"),
            },
        }
        if payload is not None:
            body["payload"] = payload
        if self.csr is not None:
            body["csr"] = self.csr
        status, doc, _ = self._request("PUT", "/register", body, None)
        challenge = doc.get("authenticationKey")
        if status != 401 or not isinstance(challenge, str):
            raise Unauthorized(
                f"the provisioning service sent no TPM challenge for {self.registration_id}: "
                f"HTTP {status} {_message(doc)}".strip()
            )
        tpm.activate(_b64(challenge, "authenticationKey"))
        sas = self.credential.dps_token(self.id_scope, self.registration_id)
        request: tuple[str, str, Any] = ("PUT", "/register", body)
        for _ in range(1000):  # bounded by the deadline long before this
            status, doc, retry_after = self._request(*request, sas)
            if status == 429 or status >= 500:
                time.sleep(min(retry_after or 2, _MAX_RETRY_AFTER, self._remaining()))
                continue
            if status == 401:
                raise Unauthorized(f"the provisioning service refused {self.registration_id}: {_message(doc)}")
            if status >= 300:
                raise ProvisioningFailed(f"provisioning refused: HTTP {status} {_message(doc)}".strip())
            state = doc.get("registrationState") if status == 200 else None
            if doc.get("status") == "assigned" or (isinstance(state, dict) and state.get("status") == "assigned"):
                return self._assigned(doc)
            if doc.get("status") not in (None, "assigning", "unassigned"):
                reason = state or {}
                raise ProvisioningFailed(
                    f"provisioning {doc.get('status')}: "
                    f"{reason.get('errorMessage') or reason.get('errorCode') or 'no reason'}"
                )
            operation = doc.get("operationId")
            if not isinstance(operation, str) or not operation:
                raise ProvisioningFailed("the provisioning service's answer has no operationId")
            time.sleep(min(retry_after or 2, _MAX_RETRY_AFTER, self._remaining()))
            request = ("GET", f"/operations/{quote(operation, safe='')}", None)
        raise ProvisioningFailed("provisioning did not finish")

    def _assigned(self, doc: dict[str, Any]) -> Assignment:
        state = doc.get("registrationState") if "registrationState" in doc else doc
        if not isinstance(state, dict):
            raise ProvisioningFailed("the provisioning service's answer has no registrationState")
        hub, device_id = state.get("assignedHub"), state.get("deviceId")
        hub_blob = (state.get("tpm") or {}).get("authenticationKey")
        if not isinstance(hub, str) or not isinstance(device_id, str) or not isinstance(hub_blob, str):
            raise ProvisioningFailed("the assignment lacks the hub, the device id or the TPM's hub key")
        chain = state.get("issuedCertificateChain")
        chain = chain if isinstance(chain, list) else []
        if self.csr is not None and not chain:
            raise ProvisioningFailed("provisioning assigned the device but issued no certificate")
        bundle = state.get("trustBundle")
        # The second blob: imported, its key replaces the challenge key and signs hub tokens.
        # With an issued certificate the hub may not accept that key any more (the policy's
        # keepExistingCredential); imported all the same, as the SDKs do, and left unused then.
        self.credential.tpm.activate(_b64(hub_blob, "registrationState.tpm.authenticationKey"))
        return Assignment(
            self.registration_id,
            hub,
            device_id,
            state.get("substatus"),
            tuple(str(c) for c in chain),
            bundle if isinstance(bundle, dict) else None,
        )


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProvisioningFailed(f"the provisioning service's {what} is not base64") from None


def _message(doc: dict[str, Any]) -> str:
    message = doc.get("message") or doc.get("errorMessage") or ""
    return str(message)[:300]


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
