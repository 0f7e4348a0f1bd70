"""The operator probes (/healthz, /readyz, /metrics) as anyone on the network sees them.

They answer without credentials by design (orchestrators and Prometheus call them), so this
module checks that they give nothing away and open nothing else: no host names, paths, versions
or error texts; only GET; no registration id a device chose ever becomes a metrics label; and
the management API beside them still refuses a caller without a token.

Real parts: `iotdps up` in a subprocess (SQLite), TLS on loopback, the official device SDK
registering with ids an attacker picks and keys nobody holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from azure.iot.device import ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

PROBES = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("ops-attack"))
    yield running
    assert running.stop() == 0, running.log()


def _call(server: RunningServer, method: str, path: str, **kwargs: object) -> requests.Response:
    return requests.request(
        method, f"https://{server.address}:8443{path}", verify=str(server.server_ca_path), timeout=30, **kwargs
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PROBES)
def test_probe_answers_anyone_and_only_get(server: RunningServer, path: str) -> None:
    assert _call(server, "GET", path).status_code == 200
    forged = {"Authorization": "SharedAccessSignature sr=x&sig=forged&se=1&skn=provisioningserviceowner"}
    assert _call(server, "GET", path, headers=forged).status_code == 200  # a token changes nothing
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = _call(server, method, path, data=b"{}")
        assert answer.status_code == 405, (method, path, answer.status_code)
        assert "Traceback" not in answer.text


@pytest.mark.parametrize("path", ("/healthz", "/readyz"))
def test_health_says_nothing_about_the_machine(server: RunningServer, path: str) -> None:
    answer = _call(server, "GET", path + "?verbose=1&debug=true")
    body = answer.text
    assert answer.json()["status"] in ("ok", "ready")
    for secret in (server.address, str(server.data_dir), "iotdps", "sqlite", "python", "version"):
        assert secret not in body.lower()
    assert "Server" not in answer.headers or "iotdps" not in answer.headers["Server"].lower()


def test_neighbours_of_the_probes_still_need_a_token(server: RunningServer) -> None:
    for path in ("/healthz/../enrollments/x", "/metrics/../registrations/x", "/enrollments/x"):
        answer = _call(server, "GET", path + "?api-version=2021-10-01")
        assert answer.status_code in (401, 404), (path, answer.status_code)
    assert _call(server, "GET", "/healthzz").status_code == 404
    assert _call(server, "GET", "/metrics/extra").status_code == 404


def test_attacker_chosen_ids_never_become_labels(server: RunningServer) -> None:
    chosen = ["attacker-label-0001", "attacker-label-0002"]
    for registration_id in chosen:
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=server.address,
            registration_id=registration_id,
            id_scope=server.id_scope,
            symmetric_key="bm9ib2R5IGhvbGRzIHRoaXMga2V5LCBub2JvZHkgYXQgYWxs",
            server_verification_cert=server.server_ca,
        )
        with pytest.raises((ClientError, CredentialError)):
            client.register()
    page = _call(server, "GET", "/metrics").text
    assert "iotdps_refusals_total{" in page
    for registration_id in chosen:
        assert registration_id not in page
    assert "127.0.0.1:" not in page  # no peer addresses either
