"""The management API as an attacker holding one credential (or none) sees it.

Every route of the route table (the one that also generates `/openapi.json`) is tried with every
shared access policy, with no Authorization header and with a forged signature; the rights each
route needs are written down HERE, independently of the route table, so a route whose required
right drifts (or a new route nobody classified) fails this module. A refused request is a 401 or
403; an admitted one is anything else but a 500 (404 and 400 are fine: the handler ran).

Then the enrollment certificates that could change another device's outcome, and the webhook
destinations an enrollment may name.

Real parts: the management app over loopback TLS (iotdps_testing.mgmt) on a SQLite file, and a
real `iotdps up` with the official device SDK for the end-to-end cases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import ipaddress
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError

from iotdps.access import DEFAULT_POLICIES, AccessPolicies, Permission, make_service_sas
from iotdps.api.routes import ROUTES, Route
from iotdps_testing.mgmt import ManagementServer
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

_ER, _EW = Permission.ENROLLMENT_READ, Permission.ENROLLMENT_WRITE
_RR, _RW = Permission.REGISTRATION_READ, Permission.REGISTRATION_WRITE
_SC = Permission.SERVICE_CONFIG
_GR, _GW, _SV = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, Permission.SERVICE_CONNECT

# The right each operation needs. Reading an attestation mechanism returns symmetric keys (an
# enrollment group's master key lets its holder register any id): it needs EnrollmentWrite, so
# the read-only policy reads no secret.
REQUIRED: dict[str, Permission] = {
    "IndividualEnrollment_Get": _ER,
    "IndividualEnrollment_CreateOrUpdate": _EW,
    "IndividualEnrollment_Delete": _EW,
    "IndividualEnrollment_GetAttestationMechanism": _EW,
    "IndividualEnrollment_Query": _ER,
    "IndividualEnrollment_RunBulkOperation": _EW,
    "EnrollmentGroup_Get": _ER,
    "EnrollmentGroup_CreateOrUpdate": _EW,
    "EnrollmentGroup_Delete": _EW,
    "EnrollmentGroup_GetAttestationMechanism": _EW,
    "EnrollmentGroup_Query": _ER,
    "EnrollmentGroup_RunBulkOperation": _EW,
    "DeviceRegistrationState_QueryAll": _RR,
    "DeviceRegistrationState_Get": _RR,
    "DeviceRegistrationState_Delete": _RW,
    "DeviceRegistrationState_Query": _RR,
    "Certificates_List": _SC,
    "Certificates_Get": _SC,
    "Certificates_CreateOrUpdate": _SC,
    "Certificates_Delete": _SC,
    "Certificates_GenerateVerificationCode": _SC,
    "Certificates_VerifyCertificate": _SC,
    "Certificates_UploadCrl": _SC,
    "Crls_List": _SC,
    "LinkedHubs_List": _SC,
    "LinkedHubs_Get": _SC,
    "LinkedHubs_CreateOrUpdate": _SC,
    "LinkedHubs_Update": _SC,
    "LinkedHubs_Delete": _SC,
    "TrustBundles_List": _SC,
    "TrustBundles_Get": _SC,
    "TrustBundles_CreateOrUpdate": _SC,
    "TrustBundles_Delete": _SC,
    "CertificateAuthorities_List": _SC,
    "CertificateAuthorities_Get": _SC,
    "CertificateAuthorities_CreateOrUpdate": _SC,
    "CertificateAuthorities_Delete": _SC,
    "IssuedCertificates_List": _RR,
    "Settings_Get": _SC,
    "Settings_Set": _SC,
    "Refusals_List": _RR,
    "Audit_List": _SC,
    "Explain": _ER,
    "Devices_GetDevices": _GR,
    "Devices_GetIdentity": _GR,
    "Devices_CreateOrUpdateIdentity": _GW,
    "Devices_DeleteIdentity": _GW,
    "Devices_GetTwin": _GR,
    "Devices_UpdateTwin": _SV,
    "Devices_ReplaceTwin": _SV,
    "Devices_InvokeMethod": _SV,
    "CloudToDevice_Send": _SV,
    "Telemetry_Read": _SV,
    "Telemetry_ReadHub": _SV,
    "Telemetry_Stream": _SV,
    "Status_Get": _RR,
    "Statistics_GetDeviceStatistics": _GR,
    "Statistics_GetServiceStatistics": _SV,
}

# Who asks: each default policy by name, nobody, and a token signed with a key nobody holds.
NO_AUTH = "<no Authorization>"
FORGED = "<forged signature>"
CALLERS = (*sorted(DEFAULT_POLICIES), NO_AUTH, FORGED)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    work = tmp_path_factory.mktemp("mgmt-attack")
    srv = ManagementServer(work, dsn=f"sqlite:///{work / 'iotdps.db'}").start()
    try:
        yield srv
    finally:
        srv.stop()


def _authorization(server: ManagementServer, caller: str) -> dict[str, str]:
    if caller == NO_AUTH:
        return {}
    if caller == FORGED:
        foreign = base64.b64encode(secrets.token_bytes(32)).decode()
        return {"Authorization": make_service_sas(server.host_port, "provisioningserviceowner", foreign)}
    key = server.policies.get(caller).primary_key.reveal()
    return {"Authorization": make_service_sas(server.host_port, caller, key)}


def _request(server: ManagementServer, route: Route, caller: str) -> requests.Response:
    path = route.path.replace("{id}", "attack-dev-1").replace("{name}", "attack-name")
    body: Any = {} if route.body is not None else None
    # A stream stays open until its timeout: one second is enough to see it was admitted.
    query = "?api-version=2021-10-01" + ("&timeout=1" if route.content_type == "text/event-stream" else "")
    return requests.request(
        route.method,
        server.base_url + path + query,
        headers={**_authorization(server, caller), "Content-Type": "application/json"},
        data=json.dumps(body) if body is not None else None,
        verify=str(server.ca_path),
        timeout=30,
    )


def test_every_route_is_classified() -> None:
    """A route nobody wrote down here is a route nobody decided the rights of."""
    assert {r.operation_id for r in ROUTES} == set(REQUIRED)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.operation_id)
def test_route_against_every_policy(server: ManagementServer, route: Route) -> None:
    needed = REQUIRED[route.operation_id]
    wrong: list[str] = []
    for caller in CALLERS:
        allowed = caller in DEFAULT_POLICIES and needed in DEFAULT_POLICIES[caller]
        answer = _request(server, route, caller)
        refused = answer.status_code in (401, 403)
        if answer.status_code >= 500:
            wrong.append(f"{caller}: {answer.status_code} {answer.text[:200]}")
        elif refused == allowed:
            verdict, expected = ("refused", "admitted") if refused else ("admitted", "refused")
            wrong.append(f"{caller}: {verdict} ({answer.status_code}) but should be {expected}")
    assert not wrong, f"{route.method} {route.path} needs {needed.value}:\n" + "\n".join(wrong)


def test_openapi_documents_the_same_rights(server: ManagementServer) -> None:
    doc = requests.get(server.base_url + "/openapi.json", verify=str(server.ca_path), timeout=30).json()
    documented = {op["operationId"]: op.get("x-permission") for ops in doc["paths"].values() for op in ops.values()}
    assert documented == {name: right.value for name, right in REQUIRED.items()}


def test_read_only_policy_reads_no_key(server: ManagementServer) -> None:
    """With `enrollmentread`, nothing it may read carries a symmetric key."""
    owner = _authorization(server, "provisioningserviceowner")
    reader = _authorization(server, "enrollmentread")
    base, verify = server.base_url, str(server.ca_path)
    for path, doc in (
        ("/enrollments/ro-key-1", {"registrationId": "ro-key-1", "attestation": {"type": "symmetricKey"}}),
        ("/enrollmentGroups/ro-grp-1", {"enrollmentGroupId": "ro-grp-1", "attestation": {"type": "symmetricKey"}}),
    ):
        assert requests.put(base + path, json=doc, headers=owner, verify=verify, timeout=30).status_code == 200
        keys = requests.post(base + path + "/attestationmechanism", headers=owner, verify=verify, timeout=30).json()
        secrets_ = (keys["symmetricKey"]["primaryKey"], keys["symmetricKey"]["secondaryKey"])
        answers = [
            requests.get(base + path, headers=reader, verify=verify, timeout=30),
            requests.post(base + path.rsplit("/", 1)[0] + "/query", headers=reader, verify=verify, timeout=30),
        ]
        for answer in answers:
            assert answer.status_code == 200
            assert not any(s in answer.text for s in secrets_)
        refused = requests.post(base + path + "/attestationmechanism", headers=reader, verify=verify, timeout=30)
        assert refused.status_code == 401
        assert not any(s in refused.text for s in secrets_)


# --------------------------------------------------------------------------- enrollment certificates
#
# An individual enrollment's certificates are TLS anchors (with PARTIAL_CHAIN), so a CA
# certificate slipped into one (a bundle our own CLI writes, or a CA certificate alone) would
# stop every chain through it there, short of the verified root: every device under that
# intermediate refused. An enrollment's certificate is exactly one certificate, a device's own.

PASSPHRASE = "factory-passphrase-for-attack-tests"


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("dps-certs"))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def line(dps: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root (proven to the service, a group on it) and intermediate line-a, not uploaded."""
    ca_dir = tmp_path_factory.mktemp("ca")
    dps.env.update({"IOTDPS_CA_DIR": str(ca_dir), "IOTDPS_CA_PASSPHRASE": PASSPHRASE})
    dps.cli("create-ca-root", "--name", "root")
    dps.cli("create-ca-intermediate", "--name", "line-a", "--parent", "root")
    dps.cli("ca", "upload", "root", str(ca_dir / "root.cert.pem"))
    code = next(t for t in dps.cli("ca", "verification-code", "root").replace(":", " ").split() if len(t) >= 32)
    proof = ca_dir / "proof.pem"
    dps.cli("proof-ca-root-possession", "--ca", "root", "--verification-code", code, "--out", str(proof))
    dps.cli("ca", "verify", "root", str(proof))
    dps.cli("group", "create", "factory", "--ca-ref", "root")
    return ca_dir


def _line_device(dps: RunningServer, ca_dir: Path, registration_id: str) -> tuple[X509, Path]:
    out = ca_dir / "devices"
    dps.cli("create-device-cert", "--registration-id", registration_id, "--ca", "line-a", "--out", str(out))
    bundle = out / f"{registration_id}.cert.pem"
    return X509(str(bundle), str(out / f"{registration_id}.key.pem")), bundle


def _register(dps: RunningServer, registration_id: str, cert: X509) -> str:
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=dps.address,
        registration_id=registration_id,
        id_scope=dps.id_scope,
        x509=cert,
        server_verification_cert=dps.server_ca,
    )
    return str(client.register().status)


def _reloads(dps: RunningServer) -> int:
    return dps.log().count("TLS trust anchors reloaded")


def _wait_for_reload(dps: RunningServer, before: int) -> None:
    """A local CLI write reaches the TLS trust store at the server's next poll (3 s)."""
    deadline = time.monotonic() + 15
    while _reloads(dps) <= before and time.monotonic() < deadline:
        time.sleep(0.1)


def _management(dps: RunningServer, policy: str) -> tuple[str, dict[str, str]]:
    policies = AccessPolicies.load(dps.data_dir / "access-policies.json")
    host = f"{dps.address}:8443"
    token = make_service_sas(host, policy, policies.get(policy).primary_key.reveal())
    return f"https://{host}", {"Authorization": token}


def _put_enrollment(dps: RunningServer, registration_id: str, pem: str) -> requests.Response:
    base, auth = _management(dps, "enrollmentwrite")
    doc = {
        "registrationId": registration_id,
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}},
    }
    server_ca = dps.data_dir / "tls" / "server-ca.pem"
    return requests.put(f"{base}/enrollments/{registration_id}", json=doc, headers=auth, verify=server_ca, timeout=30)


def test_cli_bundle_enrollment_keeps_only_the_device_certificate(dps: RunningServer, line: Path) -> None:
    first, _ = _line_device(dps, line, "line-dev-1")
    assert _register(dps, "line-dev-1", first) == "assigned"

    # Our own CLI's output file (leaf + intermediate) given to `enrollment create --cert`.
    cert, bundle = _line_device(dps, line, "line-dev-9")
    assert bundle.read_text().count("BEGIN CERTIFICATE") >= 2
    before = _reloads(dps)
    dps.cli("enrollment", "create", "line-dev-9", "--cert", str(bundle))
    stored = dps.cli_json("enrollment", "show", "line-dev-9")["attestation"]["x509"]["clientCertificates"]
    assert stored["primary"]["certificate"].count("BEGIN CERTIFICATE") == 1
    assert stored["primary"]["info"]["subjectName"] == "CN=line-dev-9"
    _wait_for_reload(dps, before)

    # Every other device of the line still provisions, and so does the enrolled one.
    newcomer, _ = _line_device(dps, line, "line-dev-2")
    assert _register(dps, "line-dev-2", newcomer) == "assigned"
    assert _register(dps, "line-dev-1", first) == "assigned"
    assert _register(dps, "line-dev-9", cert) == "assigned"


def test_api_refuses_a_bundle_and_a_ca_certificate(dps: RunningServer, line: Path) -> None:
    _, bundle = _line_device(dps, line, "line-dev-8")
    answer = _put_enrollment(dps, "line-dev-8", bundle.read_text())
    assert answer.status_code == 400, answer.text
    assert "exactly one certificate" in answer.json()["message"]

    # The intermediate itself, alone, as "its own" enrollment (its CN is a valid registration id).
    intermediate = (line / "line-a.cert.pem").read_text()
    answer = _put_enrollment(dps, "line-a", intermediate)
    assert answer.status_code == 400, answer.text
    assert "CA certificate" in answer.json()["message"]
    base, auth = _management(dps, "provisioningserviceowner")
    server_ca = dps.data_dir / "tls" / "server-ca.pem"
    for rid in ("line-dev-8", "line-a"):
        missing = requests.get(f"{base}/enrollments/{rid}", headers=auth, verify=server_ca, timeout=30)
        assert missing.status_code == 404  # nothing was stored

    time.sleep(3.5)  # past the trust poll: had anything been stored, the anchors would now hold it
    newcomer, _ = _line_device(dps, line, "line-dev-3")
    assert _register(dps, "line-dev-3", newcomer) == "assigned"


def test_a_ca_certificate_stored_by_an_older_version_is_no_anchor(dps: RunningServer, line: Path) -> None:
    """Defence for records written before these rules: the trust store takes from an individual
    enrollment only its first certificate, and never a CA certificate."""
    from iotdps.enrollment.models import Attestation, CertificateSlot, IndividualEnrollment, X509Attestation
    from iotdps.store import open_store

    intermediate = (line / "line-a.cert.pem").read_text()
    _, bundle = _line_device(dps, line, "line-dev-7")

    async def plant() -> None:
        store = await open_store(f"sqlite:///{dps.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                for rid, pem in (("line-a", intermediate), ("line-dev-7", bundle.read_text())):
                    slot = CertificateSlot(pem, {"subjectName": f"CN={rid}"})
                    att = Attestation("x509", x509=X509Attestation((slot, None)))
                    await uow.enrollments.put(IndividualEnrollment(rid, att))
        finally:
            await store.close()

    before = _reloads(dps)
    asyncio.run(plant())
    _wait_for_reload(dps, before)
    newcomer, _ = _line_device(dps, line, "line-dev-4")
    assert _register(dps, "line-dev-4", newcomer) == "assigned"


# --------------------------------------------------------------------------- webhook destinations
#
# An EnrollmentWrite holder names the custom-allocation webhook URL and the server POSTs
# enrollment JSON to it: without rules, a request forgery into loopback, the private network
# or a cloud metadata address. HTTPS to public addresses only, unless the configuration's
# allowlist says otherwise; checked when written and again when called.


def _loopback_name() -> str | None:
    """A host name (not `localhost`, which is refused by name) that resolves to loopback here."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    except OSError:
        return None
    return name if addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses) else None


_FORGED_TARGETS = (
    "http://127.0.0.1:9/allocate",  # plain http
    "http://alloc.example.com/allocate",  # plain http to a public name
    "https://127.0.0.1/allocate",  # loopback
    "https://10.1.2.3/allocate",  # private
    "https://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
    "https://[::1]/allocate",
    "https://[::ffff:127.0.0.1]/allocate",  # IPv4-mapped loopback
    "https://[fe80::1]/allocate",
    "https://100.64.0.1/allocate",  # shared address space
    "https://0.0.0.0/allocate",
    "https://localhost:8443/allocate",
    "https://2130706433/allocate",  # 127.0.0.1 in a legacy spelling
    "ftp://alloc.example.com/allocate",
)


def _hook_doc(kind: str, key: str, url: str) -> dict[str, Any]:
    id_field = "registrationId" if kind == "enrollments" else "enrollmentGroupId"
    return {
        id_field: key,
        "attestation": {"type": "symmetricKey"},
        "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
    }


def test_webhook_destinations_are_refused_when_written(server: ManagementServer) -> None:
    auth = _authorization(server, "enrollmentwrite")
    owner = _authorization(server, "provisioningserviceowner")
    base, verify = server.base_url, str(server.ca_path)
    targets = list(_FORGED_TARGETS)
    if (name := _loopback_name()) is not None:
        targets.append(f"https://{name}/allocate")  # a name that resolves to loopback
    wrong: list[str] = []
    for kind in ("enrollments", "enrollmentGroups"):
        for n, url in enumerate(targets):
            key = f"hook-{kind[:5].lower()}-{n}"
            answer = requests.put(
                f"{base}/{kind}/{key}", json=_hook_doc(kind, key, url), headers=auth, verify=verify, timeout=30
            )
            if answer.status_code != 400 or "webhookUrl" not in answer.json().get("message", ""):
                wrong.append(f"{kind} {url}: {answer.status_code} {answer.text[:200]}")
            elif requests.get(f"{base}/{kind}/{key}", headers=owner, verify=verify, timeout=30).status_code != 404:
                wrong.append(f"{kind} {url}: stored despite the 400")
        # The bulk route writes through the same check.
        bulk_field = "enrollments" if kind == "enrollments" else "enrollmentGroups"
        bulk = {"mode": "create", bulk_field: [_hook_doc(kind, f"hook-bulk-{kind[:5].lower()}", targets[2])]}
        answer = requests.post(f"{base}/{kind}", json=bulk, headers=auth, verify=verify, timeout=30)
        if answer.status_code != 200 or answer.json()["isSuccessful"] or "webhookUrl" not in answer.text:
            wrong.append(f"bulk {kind}: {answer.status_code} {answer.text[:200]}")
    assert not wrong, "\n".join(wrong)
    # HTTPS to a public address is what a webhook normally is: accepted.
    public = _hook_doc("enrollments", "hook-public", "https://93.184.215.14/api/allocate?code=secret")
    answer = requests.put(f"{base}/enrollments/hook-public", json=public, headers=auth, verify=verify, timeout=30)
    assert answer.status_code == 200, answer.text


class _Webhook(http.server.BaseHTTPRequestHandler):
    """Answers the first hub offered, and records who asked."""

    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        type(self).calls.append(request["deviceRuntimeContext"]["registrationId"])
        answer = json.dumps({"iotHubHostName": request["linkedHubs"][0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[tuple[int, list[str]]]:
    handler = type("Hook", (_Webhook,), {"calls": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler.calls
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _custom_device(dps: RunningServer, registration_id: str, url: str) -> None:
    """Enrolled by the local CLI (the data dir's owner: no write-time check), then registered."""
    dps.cli(
        "enrollment", "create", registration_id, "--symmetric-key", "--allocation-policy", "custom",
        "--webhook-url", url, "--webhook-api-version", "2021-10-01",
    )  # fmt: skip
    key, _ = dps.symmetric_keys("enrollment", registration_id)
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=dps.address,
        registration_id=registration_id,
        id_scope=dps.id_scope,
        symmetric_key=key,
        server_verification_cert=dps.server_ca,
    )
    with contextlib.suppress(ClientError):  # a failed operation: 2.14.0 raises or returns it
        client.register()


def test_webhook_destinations_are_checked_when_called(dps: RunningServer, webhook: tuple[int, list[str]]) -> None:
    port, calls = webhook
    targets = {"hook-call-http": f"http://127.0.0.1:{port}/allocate"}
    if (name := _loopback_name()) is not None:
        # Passes the rules as written (https, a host name); what it resolves to does not.
        targets["hook-call-dns"] = f"https://{name}:{port}/allocate"
    for rid, url in targets.items():
        _custom_device(dps, rid, url)
        record = dps.registration(rid)
        assert record is not None and record.status == "failed", record
        refusal = dps.refusals(rid)[0]
        assert refusal.reason == "WEBHOOK_FAILED"
        assert "not called" in refusal.message and "webhook_allowlist" in refusal.message
    assert calls == []  # not one byte reached the internal address
    if "hook-call-dns" in targets:
        assert "resolves to 127." in dps.refusals("hook-call-dns")[0].message


def test_allowlisted_webhook_is_called(tmp_path: Path, webhook: tuple[int, list[str]]) -> None:
    port, calls = webhook
    allowed = start_server(tmp_path, config=f'[allocation]\nwebhook_allowlist = ["http://127.0.0.1:{port}/allocate"]\n')
    try:
        _custom_device(allowed, "hook-allowed-1", f"http://127.0.0.1:{port}/allocate")
        record = allowed.registration("hook-allowed-1")
        assert record is not None and record.status == "assigned", record
        assert calls == ["hook-allowed-1"]
        # Same host and port, another path: not what the allowlist names.
        _custom_device(allowed, "hook-allowed-2", f"http://127.0.0.1:{port}/other")
        assert calls == ["hook-allowed-1"]
        assert allowed.refusals("hook-allowed-2")[0].reason == "WEBHOOK_FAILED"
    finally:
        assert allowed.stop() == 0, allowed.log()
