"""What the certificate-issuance end-to-end tests do to a running server: register over HTTPS
with a register body of their choosing, and try the hub with a credential.

Kept here so the issuance, token-issuer, kept-credential and TPM tests ask the same questions
the same way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests

from iotdps.device import HubClient
from iotdps.device.credentials import Credential
from iotdps.device.mqtt import ConnectRefused
from iotdps.sas import make_sas_token
from iotdps_testing.server import RunningServer

__all__ = ["P25", "hub_accepts", "register_https"]

P25 = "2025-07-01-preview"  # the api-version whose register body carries `csr`


def register_https(
    dps: RunningServer, rid: str, key: str, body: dict[str, Any], api_version: str = P25
) -> requests.Response:
    """PUT register with a SAS token from `key` and `body` beside the registration id, then poll
    the operation (at most 30 s) until the answer is not 202; the last response."""
    token = make_sas_token(dps.id_scope, rid, key, int(time.time()) + 600)
    base = f"https://{dps.address}/{dps.id_scope}/registrations/{rid}"
    response = requests.put(
        f"{base}/register?api-version={api_version}",
        json={"registrationId": rid, **body},
        headers={"Authorization": token},
        verify=str(dps.server_ca_path),
        timeout=30,
    )
    for _ in range(30):
        if response.status_code != 202:
            return response
        time.sleep(1)
        operation = response.json()["operationId"]
        response = requests.get(
            f"{base}/operations/{operation}?api-version={api_version}",
            headers={"Authorization": token},
            verify=str(dps.server_ca_path),
            timeout=30,
        )
    return response


def hub_accepts(server: RunningServer, hub: str, device_id: str, credential: Credential) -> bool:
    """CONNECT to the hub with `credential` and send one message: True, or False on CONNACK 5."""

    async def attempt() -> bool:
        client = HubClient(hub, device_id, credential, ca_pem=server.server_ca)
        try:
            await client.connect()
        except ConnectRefused as exc:
            assert exc.code == 5, exc.message
            return False
        try:
            await client.send_telemetry('{"probe": 1}', {})
        finally:
            await client.close()
        return True

    return asyncio.run(attempt())
