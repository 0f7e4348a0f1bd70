"""The operator probes (/healthz, /readyz) and /metrics as anyone on the network sees them.

The probes answer without credentials by design (orchestrators call them), so this module checks
that they give nothing away and open nothing else: no host names, paths, versions or error
texts; only GET; and the management API beside them still refuses a caller without a token.
/metrics names hubs and listeners, so it wants the bearer token (server/metrics_http.py), on
the management port and on its own port alike: no token, a wrong one, a SAS token, odd bytes
all get a bare 401; the metrics port serves nothing else; and no registration id a device chose
ever becomes a metrics label.

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

PROBES = ("/healthz", "/readyz")
METRICS_PORT = 9464


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("ops-attack"), config=f"[metrics]\nport = {METRICS_PORT}\n")
    yield running
    assert running.stop() == 0, running.log()


def _call(server: RunningServer, method: str, path: str, port: int = 8443, **kwargs: object) -> requests.Response:
    return requests.request(
        method, f"https://{server.address}:{port}{path}", verify=str(server.server_ca_path), timeout=30, **kwargs
    )  # type: ignore[arg-type]


def _token(server: RunningServer) -> str:
    return (server.data_dir / "metrics-token").read_text().strip()


@pytest.mark.parametrize("port", (8443, METRICS_PORT))
def test_metrics_wants_the_bearer_token(server: RunningServer, port: int) -> None:
    token = _token(server)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")  # same length, one character off
    refused = [
        {},
        {"Authorization": "SharedAccessSignature sr=x&sig=forged&se=1&skn=provisioningserviceowner"},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "\u00e9" * 43},
    ]
    for headers in refused:
        answer = _call(server, "GET", "/metrics", port, headers=headers)
        assert answer.status_code == 401, (headers, answer.status_code)
        assert "iotdps_" not in answer.text and "Traceback" not in answer.text
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="iotdps metrics"'
    # Bytes no encoding accepts, straight onto the wire.
    answer = _call(server, "GET", "/metrics", port, headers={"Authorization": b"Bearer \xff\xfe\x80"})
    assert answer.status_code in (400, 401) and "Traceback" not in answer.text
    good = _call(server, "GET", "/metrics", port, headers={"Authorization": f"Bearer {token}"})
    assert good.status_code == 200 and "iotdps_registrations_total" in good.text
    assert _call(server, "GET", "/metrics", port, headers={"authorization": f"bearer  {token} "}).status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = _call(server, method, "/metrics", port, data=b"{}", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 405, (method, answer.status_code)


def test_the_metrics_port_serves_nothing_else(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {_token(server)}"}
    for path in ("/healthz", "/readyz", "/enrollments/x?api-version=2021-10-01", "/console/", "/metrics/x", "/"):
        answer = _call(server, "GET", path, METRICS_PORT, headers=headers)
        assert answer.status_code == 404, (path, answer.status_code)


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
    page = _call(server, "GET", "/metrics", METRICS_PORT, headers={"Authorization": f"Bearer {_token(server)}"}).text
    assert "iotdps_refusals_total{" in page
    for registration_id in chosen:
        assert registration_id not in page
    assert "127.0.0.1:" not in page  # no peer addresses either
