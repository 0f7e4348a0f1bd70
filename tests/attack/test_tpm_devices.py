"""TPM devices over HTTPS against `iotdps up`: what a device can send wrong, and each refusal's
reason in the operator's refusal log. The TPM here is the software one (soft_tpm), so the cases
run fast; tests/e2e/tpm runs the same flow on swtpm.

Cases of issue 19: another TPM (other EK) claiming an enrolled registration id, a device
answering with an HMAC of a guessed key, an enrollment deleted between challenge and answer
(and the old challenge replayed after re-enrollment), a disabled enrollment, malformed keys and
bodies, and TPM over MQTT.

Certificate issuance (issue 18) with TPM attestation: a CSR on the unauthenticated first
request (the challenge), or with a SAS of a guessed key, is neither vetted nor signed; only the
authenticated request issues, once; a bad CSR there is refused with its reason, and nothing is
registered or issued.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
from cryptography import x509

from iotdps.protocols.mqtt.events import PublishReceived
from iotdps_testing.issuance import csr_b64, make_csr
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.soft_tpm import SoftTpm
from iotdps_testing.tpm_http import DpsHttp, tpm_sas

pytestmark = pytest.mark.e2e


P25 = "2025-07-01-preview"  # the api-version whose register body carries `csr`
ISSUING = ("--issuing-ca", "tpm-attack-ca")  # an issuance policy on the enrollment


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tpm-attack")
    running = start_server(tmp)
    running.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "tpm-attack-pass-1"})
    try:
        running.cli("create-ca-root", "--name", "tpm-attack-root")
        running.cli("issuing-ca", "add-local", "tpm-attack-ca", "--ca", "tpm-attack-root")
        yield running
    finally:
        assert running.stop() == 0, running.log()


def _body(rid: str, tpm: SoftTpm) -> dict[str, object]:
    return {"registrationId": rid, "tpm": {"endorsementKey": tpm.ek_b64, "storageRootKey": tpm.srk_b64}}


def _enroll(server: RunningServer, rid: str, tpm: SoftTpm, *extra: str) -> None:
    server.cli("enrollment", "create", rid, "--endorsement-key", tpm.ek_b64, *extra)


def _reasons(server: RunningServer, rid: str) -> list[str]:
    return [r.reason for r in server.refusals(rid)]


def test_enrolled_tpm_registers_and_polls_with_the_same_token(server: RunningServer) -> None:
    tpm = SoftTpm(0)
    _enroll(server, "tpm-ok", tpm)
    dps = DpsHttp(server)
    reply, sas = dps.tpm_register("tpm-ok", tpm, tpm.ek_b64, tpm.srk_b64)
    assert reply.status == 200 and reply.body["status"] == "assigned", reply
    state = reply.body["registrationState"]
    hub_key = SoftTpm(0).activate(state["tpm"]["authenticationKey"])
    polled = dps.operation("tpm-ok", reply.body["operationId"], sas)
    assert polled.status == 200 and polled.body["registrationState"]["tpm"] == state["tpm"]
    looked = dps.lookup("tpm-ok", sas)
    assert looked.status == 200 and looked.body["deviceId"] == "tpm-ok"
    assert len(hub_key) == 32


def test_another_tpm_claiming_the_registration_id(server: RunningServer) -> None:
    _enroll(server, "tpm-claimed", SoftTpm(0))
    thief = SoftTpm(1)
    reply = DpsHttp(server).register("tpm-claimed", _body("tpm-claimed", thief))
    assert reply.status == 401 and reply.body["errorCode"] == 401000 and "authenticationKey" not in reply.body
    assert _reasons(server, "tpm-claimed")[0] == "TPM_EK_MISMATCH"
    # Even with the enrolled EK in the body, a thief without that TPM cannot open the blob.
    real = SoftTpm(0)
    challenge = DpsHttp(server).register("tpm-claimed", _body("tpm-claimed", real))
    assert challenge.status == 401 and challenge.body["keyName"] == "registration"
    with pytest.raises(Exception, match=r"integrity|decrypt|Decryption"):
        SoftTpm(1).activate(challenge.body["authenticationKey"])


def test_software_hmac_of_a_guessed_key(server: RunningServer) -> None:
    tpm = SoftTpm(0)
    _enroll(server, "tpm-guess", tpm)
    dps = DpsHttp(server)
    assert dps.register("tpm-guess", _body("tpm-guess", tpm)).status == 401  # the challenge
    guess = tpm.sas(server.id_scope, "tpm-guess", expiry=int(time.time()) + 600, key=b"\x00" * 32)
    reply = dps.register("tpm-guess", _body("tpm-guess", tpm), guess)
    assert reply.status == 401 and reply.body["errorCode"] == 401000
    refusal = server.refusals("tpm-guess")[0]
    assert refusal.reason == "SAS_BAD_SIGNATURE" and "TPM challenge key" in refusal.message
    assert server.registration("tpm-guess") is None


def test_enrollment_deleted_between_challenge_and_answer_then_replayed(server: RunningServer) -> None:
    tpm = SoftTpm(2)
    _enroll(server, "tpm-gone", tpm)
    dps = DpsHttp(server)
    challenge = dps.register("tpm-gone", _body("tpm-gone", tpm))
    tpm.activate(challenge.body["authenticationKey"])
    sas = tpm_sas(tpm, server.id_scope, "tpm-gone")
    server.cli("enrollment", "delete", "tpm-gone")
    assert dps.register("tpm-gone", _body("tpm-gone", tpm), sas).status == 401
    assert _reasons(server, "tpm-gone")[0] == "NO_ENROLLMENT"
    _enroll(server, "tpm-gone", tpm)  # enrolled again: the old challenge's key is void
    assert dps.register("tpm-gone", _body("tpm-gone", tpm), sas).status == 401
    assert _reasons(server, "tpm-gone")[0] == "SAS_BAD_SIGNATURE"


def test_disabled_enrollment(server: RunningServer) -> None:
    tpm = SoftTpm(3)
    _enroll(server, "tpm-off", tpm, "--disabled")
    reply, _ = DpsHttp(server).tpm_register("tpm-off", tpm, tpm.ek_b64, tpm.srk_b64)
    assert reply.status == 200 and reply.body["status"] == "disabled"
    assert "tpm" not in reply.body["registrationState"] or not reply.body["registrationState"]["tpm"]
    assert _reasons(server, "tpm-off")[0] == "ENROLLMENT_DISABLED"
    explained = server.cli("explain", "--registration-id", "tpm-off", "--endorsement-key", tpm.ek_b64, expect=1)
    assert "endorsement key matches" in explained


@pytest.mark.parametrize(
    ("tpm_member", "status", "words"),
    [
        ("not an object", 400, "tpm must be an object"),
        ({"endorsementKey": 7}, 400, "endorsementKey must be a base64 string"),
        ({"endorsementKey": "AAEC", "storageRootKey": 5}, 400, "storageRootKey must be a base64 string"),
        ({"endorsementKey": "A" * 5000}, 400, "too long"),
        ({"endorsementKey": "AAEC"}, 400, "Invalid TPM endorsement or storage root key"),
        ({"endorsementKey": base64.b64encode(SoftTpm(0).srk_public[:40]).decode()}, 400, "Invalid TPM"),
    ],
)
def test_malformed_tpm_members(server: RunningServer, tpm_member: object, status: int, words: str) -> None:
    reply = DpsHttp(server).register("tpm-bad", {"registrationId": "tpm-bad", "tpm": tpm_member})
    assert reply.status == status and words in reply.body["message"], reply
    assert "Traceback" not in server.log()


def test_invalid_key_reason_is_logged(server: RunningServer) -> None:
    DpsHttp(server).register("tpm-badkey", {"registrationId": "tpm-badkey", "tpm": {"endorsementKey": "AAEC"}})
    refusal = server.refusals("tpm-badkey")[0]
    assert refusal.reason == "TPM_INVALID_KEY" and "endorsement key" in refusal.message


def test_a_sas_alone_does_not_register_a_tpm_device(server: RunningServer) -> None:
    tpm = SoftTpm(4)
    _enroll(server, "tpm-sasonly", tpm)
    dps = DpsHttp(server)
    tpm.activate(dps.register("tpm-sasonly", _body("tpm-sasonly", tpm)).body["authenticationKey"])
    sas = tpm_sas(tpm, server.id_scope, "tpm-sasonly")
    reply = dps.register("tpm-sasonly", {"registrationId": "tpm-sasonly"}, sas)
    assert reply.status == 400 and reply.body["errorCode"] == 400007
    assert _reasons(server, "tpm-sasonly")[0] == "TPM_INVALID_KEY"


def test_tpm_over_mqtt_is_refused_as_azure_does(server: RunningServer) -> None:
    tpm = SoftTpm(5)
    _enroll(server, "tpm-mqtt", tpm)
    dps = DpsHttp(server)
    tpm.activate(dps.register("tpm-mqtt", _body("tpm-mqtt", tpm)).body["authenticationKey"])
    tls, session, code = dps_connect(server, "tpm-mqtt", tpm_sas(tpm, server.id_scope, "tpm-mqtt"))
    try:
        assert code == 0
        tls.sendall(session.subscribe([("$dps/registrations/res/#", 1)])[1])
        body = json.dumps(_body("tpm-mqtt", tpm)).encode()
        tls.sendall(session.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body, qos=1)[1])
        deadline = time.monotonic() + 10
        answer = None
        while answer is None and time.monotonic() < deadline:
            for event in session.receive_data(tls.recv(65536)):
                if isinstance(event, PublishReceived) and event.topic.startswith("$dps/registrations/res/"):
                    answer = event
        assert answer is not None and answer.topic.startswith("$dps/registrations/res/400/")
        assert b"not supported over MQTT" in answer.payload
    finally:
        tls.close()
    refusal = server.refusals("tpm-mqtt")[0]
    assert refusal.reason == "TPM_OVER_MQTT" and "HTTPS and AMQP only" in refusal.message


def _issued(server: RunningServer, rid: str) -> list[int]:
    """Serial numbers of the certificates issued to `rid` (the issued-certificate records)."""
    return [
        int(c["serialNumber"], 16) for c in server.cli_json("certificate", "list", "--registration-id", rid, "--json")
    ]


def test_a_csr_before_the_tpm_proof_issues_nothing(server: RunningServer) -> None:
    rid = "tpm-csr-early"
    tpm = SoftTpm(6)
    _enroll(server, rid, tpm, "--issuing-ca", "tpm-attack-ca")
    dps = DpsHttp(server, api_version=P25)
    good = {**_body(rid, tpm), "csr": csr_b64(make_csr(rid))}
    # The challenge: the CSR is not looked at, let alone signed, and nothing is written.
    challenge = dps.register(rid, good)
    assert challenge.status == 401 and set(challenge.body) == {"authenticationKey", "keyName"}, challenge
    # Not even vetted: a bad CSR gets the same challenge and leaves no CSR refusal behind.
    other_name = dps.register(rid, {**_body(rid, tpm), "csr": csr_b64(make_csr("someone-else"))})
    assert other_name.status == 401 and "authenticationKey" in other_name.body
    # A SAS of a guessed key with the CSR: refused as a bad signature, still nothing issued.
    guess = tpm.sas(server.id_scope, rid, expiry=int(time.time()) + 600, key=b"\x01" * 32)
    refused = dps.register(rid, good, guess)
    assert refused.status == 401 and refused.body["errorCode"] == 401000
    assert _reasons(server, rid) == ["SAS_BAD_SIGNATURE"]
    assert _issued(server, rid) == [] and server.registration(rid) is None
    # The proven request issues, exactly once across the challenge, the answer and the polls.
    reply, sas = dps.tpm_register(rid, tpm, tpm.ek_b64, tpm.srk_b64, csr=good["csr"])
    assert reply.status == 200 and reply.body["status"] == "assigned", reply
    state = reply.body["registrationState"]
    leaf = x509.load_der_x509_certificate(base64.b64decode(state["issuedCertificateChain"][0]))
    polled = dps.operation(rid, reply.body["operationId"], sas)
    assert polled.body["registrationState"]["issuedCertificateChain"] == state["issuedCertificateChain"]
    assert _issued(server, rid) == [leaf.serial_number]
    assert server.registration(rid).issued_certificate is not None


@pytest.mark.parametrize(
    ("csr_for", "enroll_extra", "error_code", "reason", "words"),
    [
        ("someone-else", ISSUING, 400022, "CSR_CN_MISMATCH", "CN 'someone-else' is not the registration id"),
        ("ca-rights", ISSUING, 400023, "CSR_REQUESTS_CA", "asks for CA rights"),
        ("forged", ISSUING, 400020, "CSR_BAD_SIGNATURE", "was not signed by the key it carries"),
        ("self", (), 400025, "CSR_NOT_EXPECTED", "has no issuance policy"),  # an enrollment without one
        (None, ISSUING, 400024, "CSR_REQUIRED", "requires a CSR"),
    ],
)
def test_a_bad_csr_on_the_proven_tpm_request_is_refused_with_its_reason(
    server: RunningServer, csr_for: str | None, enroll_extra: tuple[str, ...], error_code: int, reason: str, words: str
) -> None:
    rid = f"tpm-badcsr-{error_code}"
    tpm = SoftTpm(7)
    _enroll(server, rid, tpm, *enroll_extra)
    body = _body(rid, tpm)
    if csr_for == "ca-rights":
        cert_sign = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
        body["csr"] = csr_b64(make_csr(rid, extensions=[(cert_sign, True)]))
    elif csr_for == "forged":
        der = bytearray(base64.b64decode(csr_b64(make_csr(rid))))
        der[-1] ^= 0x01  # the signature's last byte: still a CSR, no longer signed by its key
        body["csr"] = base64.b64encode(bytes(der)).decode("ascii")
    elif csr_for is not None:
        body["csr"] = csr_b64(make_csr(rid if csr_for == "self" else csr_for))
    dps = DpsHttp(server, api_version=P25)
    challenge = dps.register(rid, body)
    assert challenge.status == 401
    tpm.activate(challenge.body["authenticationKey"])
    reply = dps.register(rid, body, tpm_sas(tpm, server.id_scope, rid))
    assert reply.status == 400 and reply.body["errorCode"] == error_code, reply
    refusal = server.refusals(rid)[0]
    assert refusal.reason == reason and refusal.attestation_type == "tpm"
    assert words in refusal.message, refusal.message
    assert server.registration(rid) is None and _issued(server, rid) == []
