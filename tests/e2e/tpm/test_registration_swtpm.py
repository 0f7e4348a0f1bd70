"""A real TPM (swtpm, driven by tpm2-tools as the C and Node SDKs drive theirs) registers with
`iotdps up` over HTTPS, imports the hub key of the second blob, and sends telemetry to its hub
with a hub SAS signed inside the TPM, through the official Python device SDK.

Negative case with a real second TPM: another swtpm claiming the enrolled registration id.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.iot.device import IoTHubDeviceClient

from iotdps.store import open_store
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.swtpm import Swtpm, running_swtpm
from iotdps_testing.tpm_http import DpsHttp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


class SwtpmSigner:
    """tpm_http.TpmSigner over a real TPM: activation and HMAC happen in swtpm."""

    def __init__(self, tpm: Swtpm) -> None:
        self.tpm = tpm

    def activate(self, blob_b64: str) -> None:
        self.tpm.activate(base64.b64decode(blob_b64))

    def sign(self, data: bytes) -> bytes:
        return self.tpm.hmac(data)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tpm-e2e"))
    yield running
    assert running.stop() == 0, running.log()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _telemetry(server: RunningServer, hub: str, device_id: str) -> list[bytes]:
    async def read() -> list[Any]:
        store = await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                return [m.body for m in await uow.telemetry.list(hub, device_id)]  # type: ignore[attr-defined]
        finally:
            await store.close()

    return asyncio.run(read())


def test_swtpm_registers_over_https_then_sends_telemetry_with_a_tpm_signed_hub_token(
    server: RunningServer, tmp_path: Path
) -> None:
    with running_swtpm(tmp_path / "tpm") as tpm:
        ek_file = tmp_path / "ek.pub"
        ek_file.write_bytes(tpm.ek_public)  # as `tpm2_readpublic -c 0x81010001 -o ek.pub` writes it
        server.cli("enrollment", "create", "swtpm-dev-1", "--endorsement-key", str(ek_file))
        signer = SwtpmSigner(tpm)
        reply, sas = DpsHttp(server).tpm_register("swtpm-dev-1", signer, _b64(tpm.ek_public), _b64(tpm.srk_public))
        assert reply.status == 200 and reply.body["status"] == "assigned", reply
        state = reply.body["registrationState"]
        hub, device_id = state["assignedHub"], state["deviceId"]
        # The second blob: the TPM imports it, and its key is now the device's hub key.
        signer.activate(state["tpm"]["authenticationKey"])
        sr = quote(f"{hub}/devices/{device_id}", safe="")
        se = int(time.time()) + 3600
        sig = _b64(tpm.hmac(f"{sr}\n{se}".encode()))
        token = f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}"
        client = IoTHubDeviceClient.create_from_sastoken(token, server_verification_cert=server.server_ca)
        try:
            client.connect()
            client.send_message("signed in the TPM")
        finally:
            client.shutdown()
        # Status lookups take the token signed with the challenge key (3.2 step 4).
        assert DpsHttp(server).lookup("swtpm-dev-1", sas).status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _telemetry(server, hub, device_id):
        time.sleep(0.2)
    assert _telemetry(server, hub, device_id) == [b"signed in the TPM"]


def test_another_swtpm_claiming_the_enrolled_registration_id(server: RunningServer, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "enrolled") as enrolled, running_swtpm(tmp_path / "other") as other:
        server.cli("enrollment", "create", "swtpm-dev-2", "--endorsement-key", _b64(enrolled.ek_public))
        body = {
            "registrationId": "swtpm-dev-2",
            "tpm": {"endorsementKey": _b64(other.ek_public), "storageRootKey": _b64(other.srk_public)},
        }
        reply = DpsHttp(server).register("swtpm-dev-2", body)
        assert reply.status == 401 and "authenticationKey" not in reply.body
        assert server.refusals("swtpm-dev-2")[0].reason == "TPM_EK_MISMATCH"
        # With the enrolled EK but its own SRK, the other TPM gets a blob it cannot activate.
        body["tpm"]["endorsementKey"] = _b64(enrolled.ek_public)  # type: ignore[index]
        challenge = DpsHttp(server).register("swtpm-dev-2", body)
        assert challenge.status == 401
        with pytest.raises(Exception, match=r"tpm2_activatecredential"):
            SwtpmSigner(other).activate(challenge.body["authenticationKey"])
