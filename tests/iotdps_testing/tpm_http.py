"""A TPM device's HTTPS register flow by hand (azure-wire-protocol.md 3.2), for any "TPM" that
can open an activation blob and HMAC with the imported key: the software one (soft_tpm) or a
real swtpm (swtpm.Swtpm through `SwtpmSigner`)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from iotdps_testing.server import RunningServer

__all__ = ["DpsHttp", "Reply", "TpmSigner", "tpm_sas"]


class TpmSigner(Protocol):
    def activate(self, blob_b64: str) -> object: ...

    def sign(self, data: bytes) -> bytes: ...


def tpm_sas(signer: TpmSigner, id_scope: str, registration_id: str, *, lifetime: int = 3600) -> str:
    """The SAS the C and Node SDKs build, HMAC computed by the TPM's imported key."""
    sr = quote(f"{id_scope}/registrations/{registration_id}", safe="")
    se = int(time.time()) + lifetime
    sig = base64.b64encode(signer.sign(f"{sr}\n{se}".encode())).decode("ascii")
    return f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}&skn=registration"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class DpsHttp:
    """HTTPS to the server's 443 with its CA; one connection per request. `api_version`: the
    query's api-version (2025-07-01-preview for a register body with a `csr`)."""

    def __init__(self, server: RunningServer, *, api_version: str = "2019-03-31") -> None:
        self.server = server
        self.api = f"api-version={api_version}"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.load_verify_locations(cadata=server.server_ca)

    def request(self, method: str, path: str, body: object = None, sas: str | None = None) -> Reply:
        conn = http.client.HTTPSConnection(self.server.address, 443, context=self.context, timeout=30)
        headers = {"Content-Type": "application/json"}
        if sas:
            headers["Authorization"] = sas
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        try:
            conn.request(method, f"/{self.server.id_scope}{path}?{self.api}", body=raw, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, json.loads(data) if data else None, dict(response.getheaders()))
        finally:
            conn.close()

    def register(self, registration_id: str, body: object, sas: str | None = None) -> Reply:
        return self.request("PUT", f"/registrations/{registration_id}/register", body, sas)

    def operation(self, registration_id: str, operation_id: str, sas: str) -> Reply:
        return self.request("GET", f"/registrations/{registration_id}/operations/{operation_id}", None, sas)

    def lookup(self, registration_id: str, sas: str) -> Reply:
        return self.request("POST", f"/registrations/{registration_id}", {"registrationId": registration_id}, sas)

    def tpm_register(
        self, registration_id: str, signer: TpmSigner, ek_b64: str, srk_b64: str, **extra: object
    ) -> tuple[Reply, str]:
        """Challenge, activation, answer, polling: the final reply and the SAS used. `extra`:
        more body members (a `csr`), sent with both PUTs as the SDKs repeat the body."""
        body = {"registrationId": registration_id, "tpm": {"endorsementKey": ek_b64, "storageRootKey": srk_b64}}
        body.update(extra)
        challenge = self.register(registration_id, body)
        assert challenge.status == 401, challenge
        assert set(challenge.body) == {"authenticationKey", "keyName"}, challenge.body
        signer.activate(challenge.body["authenticationKey"])
        sas = tpm_sas(signer, self.server.id_scope, registration_id)
        reply = self.register(registration_id, body, sas)
        deadline = time.monotonic() + 30
        while reply.status == 202 and time.monotonic() < deadline:
            time.sleep(0.5)
            reply = self.operation(registration_id, reply.body["operationId"], sas)
        return reply, sas
