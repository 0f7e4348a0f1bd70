"""The management API's HTTP edge over real loopback TLS: refusals are JSON 400s that say what
is wrong and store nothing; CA proof of possession; linked hubs; settings; trust callbacks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from iotdps.access import make_service_sas
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key, issue_verification_certificate
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("edge"), max_body=4096).start()
    try:
        yield srv
    finally:
        srv.stop()


def _call(
    server: ManagementServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    policy: str = "provisioningserviceowner",
) -> requests.Response:
    token = make_service_sas(server.host, policy, server.policies.get(policy).primary_key.reveal())
    sent = {"Authorization": token, "Content-Type": "application/json", **(headers or {})}
    return requests.request(
        method,
        server.base_url + path,
        json=body if raw is None else None,
        data=raw,
        headers=sent,
        verify=str(server.ca_path),
        timeout=30,
    )


def _error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errorCode", "trackingId", "message", "timestampUtc"}
    assert response.headers["x-ms-error-code"]
    return str(body["message"])


def _absent(server: ManagementServer, path: str) -> None:
    assert _call(server, "GET", path).status_code == 404


def test_bad_bodies_are_400_that_say_why_and_store_nothing(server: ManagementServer) -> None:
    assert "not valid JSON" in _error(_call(server, "PUT", "/enrollments/e1", raw=b'{"registrationId": '), 400)
    assert "UTF-8" in _error(_call(server, "PUT", "/enrollments/e1", raw=b"\xff\xfe{}"), 400)
    assert "must be a JSON object" in _error(_call(server, "PUT", "/enrollments/e1", raw=b"[1, 2]"), 400)
    big = {"registrationId": "e1", "attestation": {"type": "symmetricKey"}, "pad": "x" * 5000}
    assert "at most 4096" in _error(_call(server, "PUT", "/enrollments/e1", big), 400)
    wrong_type = {"registrationId": "e1", "attestation": {"type": "symmetricKey"}, "capabilities": {"iotEdge": "yes"}}
    assert "capabilities.iotEdge must be true or false" in _error(
        _call(server, "PUT", "/enrollments/e1", wrong_type), 400
    )
    bad_cert = {
        "registrationId": "e1",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "not a cert"}}}},
    }
    assert "certificate" in _error(_call(server, "PUT", "/enrollments/e1", bad_cert), 400).lower()
    other_id = {"registrationId": "e2", "attestation": {"type": "symmetricKey"}}
    assert "differs" in _error(_call(server, "PUT", "/enrollments/e1", other_id), 400)
    assert "NaN is not JSON" in _error(_call(server, "PUT", "/enrollments/e1", raw=b'{"x": NaN}'), 400)
    assert "only letters" in _error(_call(server, "GET", "/enrollments/bad%20id"), 400)
    _absent(server, "/enrollments/e1")
    _absent(server, "/enrollments/e2")


def test_unknown_paths_methods_and_query(server: ManagementServer) -> None:
    _error(_call(server, "GET", "/nothing/here"), 404)
    _error(_call(server, "PATCH", "/enrollments/e1"), 405)
    assert "SELECT *" in _error(
        _call(server, "POST", "/enrollments/query", {"query": "SELECT * FROM enrollments WHERE x=1"}), 400
    )
    assert "continuation" in _error(
        _call(server, "POST", "/enrollments/query", {}, headers={"x-ms-continuation": "zz"}), 400
    )
    assert "at most 10" in _error(
        _call(server, "POST", "/enrollments", {"mode": "create", "enrollments": [{}] * 11}), 400
    )
    assert (
        _call(server, "GET", "/openapi.json").json()["paths"]["/enrollments/{id}"]["put"]["x-permission"]
        == "EnrollmentWrite"
    )


def test_etags_quoted_unquoted_and_wildcard(server: ManagementServer) -> None:
    doc = {"registrationId": "etag-1", "attestation": {"type": "symmetricKey"}}
    missing = _call(server, "PUT", "/enrollments/etag-1", doc, headers={"If-Match": "*"})
    _error(missing, 412)  # If-Match on a record that does not exist
    first = _call(server, "PUT", "/enrollments/etag-1", doc).json()
    got = _call(server, "GET", "/enrollments/etag-1")
    assert got.headers["ETag"] == f'"{first["etag"]}"'
    second = _call(server, "PUT", "/enrollments/etag-1", doc, headers={"If-Match": f'W/"{first["etag"]}"'}).json()
    _error(_call(server, "DELETE", "/enrollments/etag-1", headers={"If-Match": first["etag"]}), 412)
    assert _call(server, "DELETE", "/enrollments/etag-1", headers={"If-Match": "*"}).status_code == 204
    assert second["etag"] != first["etag"]


def test_ca_proof_of_possession_over_http(server: ManagementServer) -> None:
    key = generate_private_key()
    ca = create_root_ca("pop-root", key, Validity.days(10))
    pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    assert "not a CA" in _error(_call(server, "PUT", "/certificates/leafy", {"certificate": _leaf_pem()}), 400)
    _absent(server, "/certificates/leafy")

    uploaded = _call(server, "PUT", "/certificates/pop-root", {"properties": {"certificate": pem}}).json()
    assert uploaded["properties"]["isVerified"] is False and uploaded["properties"]["subject"] == "CN=pop-root"
    _error(_call(server, "POST", "/certificates/pop-root/generateVerificationCode", headers={"If-Match": "stale"}), 412)
    coded = _call(
        server, "POST", "/certificates/pop-root/generateVerificationCode", headers={"If-Match": uploaded["etag"]}
    ).json()
    code = coded["properties"]["verificationCode"]
    assert len(code) >= 32 and coded["properties"]["verificationCodeExpiry"]

    other = generate_private_key()
    wrong_signer = Issuer(create_root_ca("impostor", other, Validity.days(10)), other)
    forged = issue_verification_certificate(wrong_signer, code, generate_private_key().public_key(), Validity.days(1))
    forged_pem = forged.public_bytes(serialization.Encoding.PEM).decode()
    assert "not signed by CA" in _error(
        _call(server, "POST", "/certificates/pop-root/verify", {"certificate": forged_pem}), 400
    )
    wrong_cn = issue_verification_certificate(
        Issuer(ca, key), "not-the-code", generate_private_key().public_key(), Validity.days(1)
    )
    wrong_pem = wrong_cn.public_bytes(serialization.Encoding.PEM).decode()
    assert "outstanding verification code" in _error(
        _call(server, "POST", "/certificates/pop-root/verify", {"certificate": wrong_pem}), 400
    )

    before = server.trust_changes
    good = issue_verification_certificate(Issuer(ca, key), code, generate_private_key().public_key(), Validity.days(1))
    verified = _call(
        server,
        "POST",
        "/certificates/pop-root/verify",
        {"certificate": good.public_bytes(serialization.Encoding.PEM).decode()},
    )
    assert verified.status_code == 200 and verified.json()["properties"]["isVerified"] is True
    assert server.trust_changes == before + 1
    assert [c["name"] for c in _call(server, "GET", "/certificates").json()["value"]] == ["pop-root"]
    assert _call(server, "DELETE", "/certificates/pop-root").status_code == 204
    assert server.trust_changes == before + 2
    # The configuration needs ServiceConfig.
    assert "ServiceConfig" in _error(_call(server, "GET", "/certificates", policy="enrollmentwrite"), 401)


def _leaf_pem() -> str:
    from iotdps.pki import issue_device_certificate

    key = generate_private_key()
    root = create_root_ca("leaf-issuer", key, Validity.days(10))
    leaf = issue_device_certificate(Issuer(root, key), "dev-1", generate_private_key().public_key(), Validity.days(1))
    return leaf.public_bytes(serialization.Encoding.PEM).decode()


def test_linked_hubs_and_settings(server: ManagementServer) -> None:
    linked = _call(server, "PUT", "/linkedHubs/Hub-1.example.net", {"allocationWeight": 7}).json()
    assert linked == {"name": "hub-1.example.net", "allocationWeight": 7, "applyAllocationPolicy": True}
    patched = _call(server, "PATCH", "/linkedHubs/hub-1.example.net", {"applyAllocationPolicy": False}).json()
    assert patched["allocationWeight"] == 7 and patched["applyAllocationPolicy"] is False
    assert "1..1000" in _error(_call(server, "PATCH", "/linkedHubs/hub-1.example.net", {"allocationWeight": 0}), 400)
    assert _call(server, "GET", "/linkedHubs").json() == [patched]
    assert _call(server, "DELETE", "/linkedHubs/hub-1.example.net").status_code == 204
    _error(_call(server, "PATCH", "/linkedHubs/hub-1.example.net", {"allocationWeight": 2}), 404)

    assert "custom" not in _call(server, "GET", "/settings").json()["allocationPolicy"]
    _error(_call(server, "PUT", "/settings", {"idScope": "0ne1", "allocationPolicy": "custom"}), 400)
    assert _call(server, "PUT", "/settings", {"idScope": "0ne1", "allocationPolicy": "static"}).json() == {
        "idScope": "0ne1",
        "allocationPolicy": "static",
    }
