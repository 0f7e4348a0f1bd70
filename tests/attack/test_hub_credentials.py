"""What a connected device can send wrong on the hub's credentials topic (certificate renewal,
`$iothub/credentials/POST/issueCertificate/?$rid=`, wire doc 10.1), against a real `iotdps up`
with a raw MQTT client over TLS: an oversized body, a body that is not the request, another
device's id, a bad CSR, a CSR from a device whose enrollment has no issuance policy, a second
request while one is active (409005; `replace` queues instead), an issuing CA that does not
answer (503 with the reason), too many requests (429). None of them issues anything; the
connection stays usable. And a connection made with a certificate that renewals have since
dropped from the device's identity does not outlive it: it is closed right after the answer."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from iotdps.device import DeviceAgent, DeviceSettings, SymmetricKey
from iotdps.device.credentials import make_hub_sas_token
from iotdps.device.issued import IssuedFiles
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived, PublishReceived, SubAckReceived
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps.server.hub_credentials import MAX_BODY
from iotdps_testing.issuance import csr_b64, make_csr
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

RES = "$iothub/credentials/res/#"


@pytest.fixture(scope="module")
def silent_ca() -> Iterator[tuple[str, int]]:
    """A loopback port that accepts TCP connections and never answers: an issuing CA that is down."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()
    finally:
        sock.close()


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory, silent_ca: tuple[str, int]) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("hub-credentials-attack")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "attack-pass-2"})
    (tmp / "auth.key").write_text("00112233445566778899aabbccddeeff")
    try:
        server.cli("create-ca-root", "--name", "attack-root")
        server.cli("issuing-ca", "add-local", "attack-ca", "--ca", "attack-root")
        server.cli(
            "issuing-ca", "add-cfssl", "silent-ca", "--url", f"http://{silent_ca[0]}:{silent_ca[1]}",
            "--profile", "device", "--auth-key-file", str(tmp / "auth.key"),
            "--ca-chain", str(tmp / "ca" / "attack-root.cert.pem"), "--timeout", "3",
        )  # fmt: skip
        server.cli("group", "create", "issuing", "--symmetric-key", "--issuing-ca", "attack-ca")
        server.cli("group", "create", "slow", "--symmetric-key", "--issuing-ca", "silent-ca", "--csr", "optional")
        server.cli("group", "create", "plain", "--symmetric-key")
        yield server
    finally:
        server.stop()


def _device_key(dps: RunningServer, group: str, rid: str) -> str:
    return derive_device_key(dps.symmetric_keys("group", group)[0], rid)


def _provision(dps: RunningServer, group: str, rid: str, tmp: Path, *, csr: bool) -> tuple[str, IssuedFiles]:
    """Register `rid` with our device client (with a CSR when `csr`); its hub and files."""
    import asyncio

    settings = DeviceSettings(
        dps.address, dps.id_scope, rid, SymmetricKey(Secret(_device_key(dps, group, rid))), tmp / f"{rid}.json",
        ca_pem=dps.server_ca, issue_certificate=csr,
    )  # fmt: skip

    async def run() -> str:
        agent = DeviceAgent(settings)
        await agent.start()
        assert agent.assignment is not None
        await agent.stop()
        return agent.assignment.assigned_hub

    return asyncio.run(run()), IssuedFiles(settings.state_file)


class RawHub:
    """One device's MQTT connection to its hub, with our sans-IO client session."""

    def __init__(self, dps: RunningServer, hub: str, device_id: str, *, files: IssuedFiles | None = None,
                 key: str | None = None) -> None:  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=dps.server_ca)
        if files is not None:
            context.load_cert_chain(files.chain_file, files.key_file)
        raw = socket.create_connection((dps.address, 8883), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname=hub)
        self.session = ClientSession()
        self.device_id = device_id
        password = make_hub_sas_token(hub, device_id, key, int(time.time()) + 600) if key else None
        self.tls.sendall(self.session.connect(device_id, f"{hub}/{device_id}/?api-version=2021-04-12", password))
        self.pending: list[Any] = []
        connack = self._next(lambda e: isinstance(e, ConnAckReceived))
        assert connack.return_code == 0

    def _next(self, wanted: Any, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.pending):
                if wanted(event):
                    return self.pending.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError("no answer from the hub")
            self.tls.settimeout(max(0.1, deadline - time.monotonic()))
            data = self.tls.recv(65536)
            if not data:
                raise AssertionError("the hub closed the connection")
            self.pending.extend(self.session.receive_data(data))

    def subscribe(self, *filters: str) -> tuple[int, ...]:
        packet_id, data = self.session.subscribe([(f, 1) for f in filters])
        self.tls.sendall(data)
        return tuple(self._next(lambda e: isinstance(e, SubAckReceived) and e.packet_id == packet_id).return_codes)

    def send(self, rid: str, body: bytes | dict[str, Any]) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.tls.sendall(self.session.publish(f"$iothub/credentials/POST/issueCertificate/?$rid={rid}", payload, 1)[1])

    def answer(self, rid: str, timeout: float = 15.0) -> tuple[int, Any]:
        def mine(e: Any) -> bool:
            return (
                isinstance(e, PublishReceived)
                and e.topic.startswith("$iothub/credentials/res/")
                and e.topic.endswith(f"?$rid={rid}")
            )

        event = self._next(mine, timeout)
        return int(event.topic.split("/")[3]), json.loads(event.payload)

    def request(self, rid: str, body: bytes | dict[str, Any]) -> list[tuple[int, Any]]:
        """Every answer to one request up to the final one (past a 202)."""
        self.send(rid, body)
        answers = [self.answer(rid)]
        while answers[-1][0] == 202:
            answers.append(self.answer(rid))
        return answers

    def close(self) -> None:
        self.tls.close()


def _issued(dps: RunningServer, rid: str) -> list[Any]:
    return list(dps.cli_json("certificate", "list", "--registration-id", rid, "--json"))


def test_bad_requests_are_refused_at_once_and_the_connection_stays(dps: RunningServer, tmp_path: Path) -> None:
    rid = "cred-attack-1"
    hub, files = _provision(dps, "issuing", rid, tmp_path, csr=True)
    before = _issued(dps, rid)
    conn = RawHub(dps, hub, rid, files=files)
    try:
        assert conn.subscribe(RES) == (1,)
        assert conn.subscribe("$iothub/credentials/#") == (0x80,)  # only the Azure filter
        good = csr_b64(make_csr(rid))
        cases: list[tuple[bytes | dict[str, Any], int, int]] = [
            (b"{" + b" " * MAX_BODY + b"}", 413, 413001),  # refused before it is parsed
            (b"not json", 400, 400004),
            ({"id": rid}, 400, 400004),  # no CSR
            ({"id": rid, "csr": good, "replace": "yes"}, 400, 400004),
            ({"id": "cred-attack-2", "csr": good}, 401, 401002),  # another device's id
            ({"id": rid, "csr": "A" * 8300}, 400, 400020),  # a CSR past the CSR bound, inside the body's
            ({"id": rid, "csr": base64.b64encode(b"garbage").decode()}, 400, 400020),
            ({"id": rid, "csr": csr_b64(make_csr("cred-attack-2"))}, 400, 400022),  # CN is not the device
        ]
        for i, (body, status, code) in enumerate(cases):
            answers = conn.request(f"bad{i}", body)
            assert len(answers) == 1, answers  # no 202 for a refused request
            assert (answers[0][0], answers[0][1]["errorCode"]) == (status, code), (i, answers)
            assert answers[0][1]["message"]
        # The same connection then renews.
        answers = conn.request("good", {"id": rid, "csr": good})
        assert [a[0] for a in answers] == [202, 200], answers
        assert answers[0][1]["correlationId"] == answers[1][1]["correlationId"]
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in answers[1][1]["issuedCertificateChain"]]
        assert chain[0].subject.rfc4514_string() == f"CN={rid}" and len(chain) == 2
        assert "trustBundle" not in answers[1][1]  # the group names none
    finally:
        conn.close()
    after = _issued(dps, rid)
    assert len(after) == len(before) + 1 and after[0]["issuedVia"] == "hub"
    reasons = {r.reason for r in dps.refusals(rid)}
    assert {"CSR_TOO_LARGE", "CSR_MALFORMED", "CSR_CN_MISMATCH"} <= reasons


def test_a_device_whose_enrollment_has_no_issuance_policy(dps: RunningServer, tmp_path: Path) -> None:
    rid = "cred-plain-1"
    hub, _ = _provision(dps, "plain", rid, tmp_path, csr=False)
    conn = RawHub(dps, hub, rid, key=_device_key(dps, "plain", rid))
    try:
        conn.subscribe(RES)
        [(status, body)] = conn.request("1", {"id": rid, "csr": csr_b64(make_csr(rid))})
        assert (status, body["errorCode"]) == (400, 400025)
    finally:
        conn.close()
    assert _issued(dps, rid) == []
    assert "CSR_NOT_EXPECTED" in {r.reason for r in dps.refusals(rid)}


def test_one_active_request_a_ca_that_is_down_and_the_rate_limit(dps: RunningServer, tmp_path: Path) -> None:
    rid = "cred-slow-1"
    hub, _ = _provision(dps, "slow", rid, tmp_path, csr=False)  # the CSR is optional in this group
    conn = RawHub(dps, hub, rid, key=_device_key(dps, "slow", rid))
    try:
        conn.subscribe(RES)
        body = {"id": rid, "csr": csr_b64(make_csr(rid))}
        conn.send("first", body)
        assert conn.answer("first")[0] == 202
        [(status, refused)] = conn.request("second", body)  # the first waits for the silent CA
        assert (status, refused["errorCode"]) == (409, 409005)
        conn.send("third", {**body, "replace": True})  # replace: accepted, runs after the first
        assert conn.answer("third")[0] == 202
        [(status, refused)] = conn.request("fourth", {**body, "replace": True})  # one may wait, not two
        assert (status, refused["errorCode"]) == (409, 409005)
        for rid_ in ("first", "third"):
            status, failed = conn.answer(rid_, timeout=20)
            assert (status, failed["errorCode"]) == (503, 503230), failed  # the CA is unreachable
        conn.send("fifth", body)  # the fifth request of the burst is taken...
        assert conn.answer("fifth")[0] == 202
        [(status, throttled)] = conn.request("sixth", body)  # ...the sixth is throttled
        assert (status, throttled["errorCode"]) == (429, 429001)
        assert conn.answer("fifth", timeout=20)[0] == 503
    finally:
        conn.close()
    assert _issued(dps, rid) == []
    assert "ISSUANCE_CA_UNREACHABLE" in {r.reason for r in dps.refusals(rid)}


def _closed_within(conn: RawHub, seconds: float) -> bool:
    """True when the hub closes `conn` within `seconds` (whatever it sends before is read)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = conn.tls.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
        if not data:
            return True
        conn.pending.extend(conn.session.receive_data(data))
    return False


def test_a_connection_made_with_a_dropped_certificate_is_closed(dps: RunningServer, tmp_path: Path) -> None:
    """The identity holds the new certificate and the one before it: after one renewal the
    connection made with the old certificate stays; after the second, that certificate is no
    longer the identity's and the connection made with it is closed (after its answer)."""
    rid = "cred-drop-1"
    hub, files = _provision(dps, "issuing", rid, tmp_path, csr=True)
    conn = RawHub(dps, hub, rid, files=files)  # with the first issued certificate
    try:
        conn.subscribe(RES)
        [*_, (status, _first)] = conn.request("renew-1", {"id": rid, "csr": csr_b64(make_csr(rid))})
        assert status == 200
        assert not _closed_within(conn, 1.5)  # the first certificate is still the identity's
        assert conn.subscribe(RES) == (1,)
        [*_, (status, _second)] = conn.request("renew-2", {"id": rid, "csr": csr_b64(make_csr(rid))})
        assert status == 200  # the answer comes first...
        assert _closed_within(conn, 3.0)  # ...then the connection goes with its certificate
    finally:
        conn.close()
    assert len(_issued(dps, rid)) == 3
    assert f"device {rid} disconnected: its identity changed" in dps.log()
