"""TPM devices over HTTPS against `iotdps up`: what a device can send wrong, and each refusal's
reason in the operator's refusal log. The TPM here is the software one (soft_tpm), so the cases
run fast; tests/e2e/tpm runs the same flow on swtpm.

Cases of issue 19: another TPM (other EK) claiming an enrolled registration id, a device
answering with an HMAC of a guessed key, an enrollment deleted between challenge and answer
(and the old challenge replayed after re-enrollment), a disabled enrollment, malformed keys and
bodies, and TPM over MQTT.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from iotdps.protocols.mqtt.events import PublishReceived
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.soft_tpm import SoftTpm
from iotdps_testing.tpm_http import DpsHttp, tpm_sas

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tpm-attack"))
    yield running
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
