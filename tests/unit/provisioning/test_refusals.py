"""Every refusal reason through the whole pipeline: the operator's words, the device's terse answer.

Each case builds its own world, registers once and checks the reason, words naming the thing at
fault (in the outcome and the refusal log), the device-facing answer, and whether a registration
record was written (only when an enrollment matched).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import pytest
from certkit import NOW, issue, seed004
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import KEY1, KEY2, SCOPE, Env, sk_enrollment, sk_group, x509_enrollment
from issuekit import expired_root, garbage_server, issuing_world

from iotdps.attestation.authentication import refuse
from iotdps.enrollment.models import CustomAllocationDefinition, IndividualEnrollment
from iotdps.evidence import Credential, SasCredential, TpmEvidence, X509Evidence
from iotdps.ports import WebhookResponse
from iotdps.provisioning.registration import RegistrationOutcome, RegistrationRequest
from iotdps.refusals import DEVICE_ANSWERS, RefusalReason
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps_testing.issuance import csr_b64, make_csr
from iotdps_testing.net import free_port
from iotdps_testing.soft_tpm import SoftTpm, tpm_enrollment_doc

R = RefusalReason
Case = Callable[[], Awaitable[tuple[Env, RegistrationOutcome]]]


async def _x509_world(**kw: Any) -> tuple[Env, Any]:
    h = seed004()
    env = await Env(**kw).setup()
    await env.cas.upload_ca("root", h.root.pem, verified=True)
    return env, h


async def invalid_registration_id() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    return env, await env.register_sas("bad id!", KEY1)


async def id_scope_mismatch() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    token = SasCredential(Secret("SharedAccessSignature sr=x&sig=y&se=1"))
    return env, await env.service.register(RegistrationRequest("0ne00OTHER", "dev-1", token))


async def unsupported_attestation() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    unknown = cast(Credential, "a credential no mechanism takes")
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", unknown))


async def tpm_invalid_key() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", TpmEvidence("AAAA")))


async def tpm_ek_mismatch() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(IndividualEnrollment.from_json(tpm_enrollment_doc("dev-1", SoftTpm(0))))
    other = SoftTpm(1)
    sas = Secret(other.sas(SCOPE, "dev-1", key=bytes(32), expiry=int(NOW.timestamp()) + 60))
    evidence = TpmEvidence(other.ek_b64, other.srk_b64, sas)
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", evidence))


async def tpm_over_mqtt() -> tuple[Env, RegistrationOutcome]:
    # The MQTT edge refuses a register body with `tpm` this way (server/dps_mqtt.py).
    env = await Env().setup()
    refused = refuse("tpm", R.TPM_OVER_MQTT, "not supported over MQTT (Azure DPS does TPM over HTTPS and AMQP only)")
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", None, authentication=refused))


async def no_certificate() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", X509Evidence(())))


async def cn_mismatch() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    return env, await env.register_x509("dev-2", h.chain("dev-1"))


async def cert_expired() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    old = issue("dev-9", h.a, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1))
    return env, await env.register_x509("dev-9", [old.cert, h.a.cert])


async def cert_not_yet_valid() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    early = issue("dev-9", h.a, not_before=NOW + timedelta(days=1))
    return env, await env.register_x509("dev-9", [early.cert, h.a.cert])


async def chain_unknown_ca() -> tuple[Env, RegistrationOutcome]:
    h = seed004()
    env = await Env().setup()
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def ca_not_verified() -> tuple[Env, RegistrationOutcome]:
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("factory-root", h.root.pem)
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def chain_invalid() -> tuple[Env, RegistrationOutcome]:
    h = seed004()
    env = await Env().setup()
    impostor = issue("A", ca=True)  # same name as A, another key
    await env.cas.upload_ca("impostor", impostor.pem, verified=True)
    return env, await env.register_x509("dev-1", [h.devices["dev-1"].cert])


async def cert_revoked() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    await env.cas.upload_ca("A", h.a.pem)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(h.a.cert.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(h.devices["dev-1"].cert.serial_number)
            .revocation_date(NOW - timedelta(hours=1))
            .build()
        )
        .sign(h.a.key, hashes.SHA256())
    )
    await env.cas.upload_crl("A", crl.public_bytes(serialization.Encoding.PEM).decode())
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def individual_cert_mismatch() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    await env.enroll(x509_enrollment("dev-1", issue("dev-1", h.a)))
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def attestation_mismatch() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    await env.enroll(sk_enrollment("dev-1"))
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def no_enrollment_x509() -> tuple[Env, RegistrationOutcome]:
    env, h = await _x509_world()
    return env, await env.register_x509("dev-1", h.chain("dev-1"))


async def no_enrollment_sas() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.group(sk_group("other", primary=KEY2, secondary=KEY2))
    return env, await env.register_sas("dev-1", derive_device_key(KEY1, "dev-1"))


async def enrollment_disabled() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1", provisioning_status="disabled"))
    return env, await env.register_sas("dev-1", KEY1)


async def group_disabled() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.group(sk_group("fleet", provisioning_status="disabled"))
    return env, await env.register_sas("dev-1", derive_device_key(KEY2, "dev-1"))


async def sas_missing() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", SasCredential(Secret(""))))


async def sas_malformed() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    cred = SasCredential(Secret("SharedAccessSignature sr=abc&se=12"))
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", cred))


async def sas_expired() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    return env, await env.register_sas("dev-1", KEY1, expiry=int(NOW.timestamp()) - 1)


async def sas_lifetime_too_long() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    return env, await env.register_sas("dev-1", KEY1, expiry=253402300799)  # year 9999


async def sas_bad_signature() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    return env, await env.register_sas("dev-1", derive_device_key(KEY1, "dev-1"))


async def sas_wrong_resource() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    from iotdps.sas import make_sas_token

    token = make_sas_token(SCOPE, "dev-2", KEY1, int(NOW.timestamp()) + 60)
    return env, await env.service.register(RegistrationRequest(SCOPE, "dev-1", SasCredential(Secret(token))))


async def no_hub() -> tuple[Env, RegistrationOutcome]:
    env = await Env(hubs=()).setup()
    await env.enroll(sk_enrollment("dev-1"))
    return env, await env.register_sas("dev-1", KEY1)


async def hub_not_linked() -> tuple[Env, RegistrationOutcome]:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1", iot_hubs=("nowhere.local",)))
    return env, await env.register_sas("dev-1", KEY1)


class _Failing:
    async def post_json(self, url: str, body: Any, timeout: float) -> WebhookResponse:
        return WebhookResponse(500, None)


async def webhook_failed() -> tuple[Env, RegistrationOutcome]:
    env = await Env(webhook=_Failing()).setup()
    hook = CustomAllocationDefinition("https://alloc.example/api?code=SECRET", "2021-10-01")
    await env.enroll(sk_enrollment("dev-1", allocation_policy="custom", custom_allocation_definition=hook))
    return env, await env.register_sas("dev-1", KEY1)


P25 = "2025-07-01-preview"
_POLICY = {"certificateAuthorityName": "factory-ca"}


async def _csr_case(csr: str | None, policy: dict[str, Any] | None = _POLICY) -> tuple[Env, RegistrationOutcome]:
    world = await issuing_world()
    await world.local_ca()
    await world.group(policy=policy)
    key = derive_device_key(KEY1, "dev-1")
    return world.env, await world.env.register_sas("dev-1", key, csr=csr, api_version=P25)


async def csr_not_expected() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case(csr_b64(make_csr("dev-1")), policy=None)


async def csr_required() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case(None)


async def csr_too_large() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case("A" * 9000)


async def csr_malformed() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case("not base64 at all!")


async def csr_key_not_accepted() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case(csr_b64(make_csr("dev-1")), {**_POLICY, "acceptedKeyTypes": ["ecP384"]})


async def csr_bad_signature() -> tuple[Env, RegistrationOutcome]:
    der = bytearray(base64.b64decode(csr_b64(make_csr("dev-1"))))
    der[-3] ^= 0x01  # inside the signature's last integer: still a CSR, no longer signed by its key
    return await _csr_case(base64.b64encode(bytes(der)).decode())


async def csr_cn_mismatch() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case(csr_b64(make_csr("dev-2")))


async def csr_requests_ca() -> tuple[Env, RegistrationOutcome]:
    ca_ext = (x509.BasicConstraints(ca=True, path_length=None), True)
    return await _csr_case(csr_b64(make_csr("dev-1", extensions=[ca_ext])))


async def issuing_ca_unknown() -> tuple[Env, RegistrationOutcome]:
    return await _csr_case(csr_b64(make_csr("dev-1")), {"certificateAuthorityName": "no-such-ca"})


async def _issuer_case(setup: Callable[[Any], Awaitable[None]]) -> tuple[Env, RegistrationOutcome]:
    world = await issuing_world()
    await setup(world)
    await world.group(policy={"certificateAuthorityName": "the-ca"})
    key = derive_device_key(KEY1, "dev-1")
    return world.env, await world.env.register_sas("dev-1", key, csr=csr_b64(make_csr("dev-1")), api_version=P25)


async def issuance_ca_unreachable() -> tuple[Env, RegistrationOutcome]:
    async def setup(world: Any) -> None:
        await world.cfssl_ca("the-ca", f"http://127.0.0.1:{free_port()}")  # nobody listens

    return await _issuer_case(setup)


async def issuance_ca_refused() -> tuple[Env, RegistrationOutcome]:
    async def setup(world: Any) -> None:
        await world.local_ca("the-ca", expired_root())

    return await _issuer_case(setup)


async def issuance_ca_bad_response() -> tuple[Env, RegistrationOutcome]:
    runner, url = await garbage_server()

    async def setup(world: Any) -> None:
        await world.cfssl_ca("the-ca", url)

    try:
        return await _issuer_case(setup)
    finally:
        await runner.cleanup()


# case -> (reason, words the operator sees, a record is written with this status)
CASES: dict[str, tuple[Case, RefusalReason, str, str | None]] = {
    "invalid registration id": (invalid_registration_id, R.INVALID_REGISTRATION_ID, "contains ' !'", None),
    "id scope": (id_scope_mismatch, R.ID_SCOPE_MISMATCH, "'0ne00OTHER' is not this service's", None),
    "unsupported": (unsupported_attestation, R.UNSUPPORTED_ATTESTATION, "unsupported credential str", None),
    "tpm invalid key": (tpm_invalid_key, R.TPM_INVALID_KEY, "invalid endorsement key", None),
    "tpm other ek": (tpm_ek_mismatch, R.TPM_EK_MISMATCH, "is not the one enrolled for dev-1", None),
    "tpm over mqtt": (tpm_over_mqtt, R.TPM_OVER_MQTT, "HTTPS and AMQP only", None),
    "no certificate": (no_certificate, R.NO_CERTIFICATE, "presented no client certificate", None),
    "cn mismatch": (cn_mismatch, R.CN_MISMATCH, "CN 'dev-1' != registration id 'dev-2'", None),
    "expired": (cert_expired, R.CERT_EXPIRED, "device certificate CN=dev-9", None),
    "not yet valid": (cert_not_yet_valid, R.CERT_NOT_YET_VALID, "is not valid before", None),
    "unknown ca": (chain_unknown_ca, R.CHAIN_UNKNOWN_CA, "chain stops at intermediate CN=A", None),
    "ca not verified": (ca_not_verified, R.CA_NOT_VERIFIED, "CA factory-root is not verified", None),
    "bad signature in chain": (chain_invalid, R.CHAIN_INVALID, "does not verify with CN=A", None),
    "cert revoked": (cert_revoked, R.CERT_REVOKED, "CN=dev-1 (sha256", None),
    "individual cert": (individual_cert_mismatch, R.INDIVIDUAL_CERT_MISMATCH, "individual enrollment dev-1", None),
    "attestation mismatch": (attestation_mismatch, R.ATTESTATION_MISMATCH, "uses symmetricKey attestation", None),
    "no enrollment x509": (no_enrollment_x509, R.NO_ENROLLMENT, "no enrollment group on any CA", None),
    "no enrollment sas": (no_enrollment_sas, R.NO_ENROLLMENT, "no symmetric-key group", None),
    "enrollment disabled": (enrollment_disabled, R.ENROLLMENT_DISABLED, "dev-1 is disabled", "disabled"),
    "group disabled": (group_disabled, R.GROUP_DISABLED, "group fleet is disabled", "disabled"),
    "sas missing": (sas_missing, R.SAS_MISSING, "no SAS token", None),
    "sas malformed": (sas_malformed, R.SAS_MALFORMED, "lacks sig", None),
    "sas expired": (sas_expired, R.SAS_EXPIRED, "expired at Unix time", None),
    "sas lifetime": (sas_lifetime_too_long, R.SAS_LIFETIME_TOO_LONG, "too far ahead", None),
    "sas signature": (sas_bad_signature, R.SAS_BAD_SIGNATURE, "does not verify with the keys", None),
    "sas resource": (sas_wrong_resource, R.SAS_WRONG_RESOURCE, "registrations/dev-2", None),
    "no hub": (no_hub, R.NO_HUB, "no hub of the linked hubs", "failed"),
    "hub not linked": (hub_not_linked, R.HUB_NOT_LINKED, "nowhere.local", "failed"),
    "webhook failed": (webhook_failed, R.WEBHOOK_FAILED, "alloc.example answered HTTP 500", "failed"),
    "csr not expected": (csr_not_expected, R.CSR_NOT_EXPECTED, "has no issuance policy", None),
    "csr required": (csr_required, R.CSR_REQUIRED, "requires a CSR", None),
    "csr too large": (csr_too_large, R.CSR_TOO_LARGE, "at most 8192", None),
    "csr malformed": (csr_malformed, R.CSR_MALFORMED, "not base64", None),
    "csr key": (csr_key_not_accepted, R.CSR_KEY_NOT_ACCEPTED, "not an accepted key type (ecP384)", None),
    "csr signature": (csr_bad_signature, R.CSR_BAD_SIGNATURE, "signature does not verify", None),
    "csr cn": (csr_cn_mismatch, R.CSR_CN_MISMATCH, "CN 'dev-2' is not the registration id", None),
    "csr asks for ca": (csr_requests_ca, R.CSR_REQUESTS_CA, "basicConstraints CA:TRUE", None),
    "issuing ca unknown": (issuing_ca_unknown, R.ISSUING_CA_UNKNOWN, "'no-such-ca', which does not exist", "failed"),
    "ca unreachable": (issuance_ca_unreachable, R.ISSUANCE_CA_UNREACHABLE, "cannot reach CFSSL", "failed"),
    "ca refused": (issuance_ca_refused, R.ISSUANCE_CA_REFUSED, "CN=Expired Root", "failed"),
    "ca bad response": (issuance_ca_bad_response, R.ISSUANCE_CA_BAD_RESPONSE, "without a JSON object", "failed"),
}


def test_every_reason_has_a_case_and_a_device_answer() -> None:
    covered = {reason for _, reason, _, _ in CASES.values()}
    assert covered == set(RefusalReason)
    assert set(DEVICE_ANSWERS) == set(RefusalReason)


@pytest.mark.parametrize("name", list(CASES))
async def test_refusal(name: str) -> None:
    case, reason, words, record_status = CASES[name]
    env, outcome = await case()
    assert outcome.reason is reason, outcome.message
    assert words in outcome.message
    answer = DEVICE_ANSWERS[reason]
    assert outcome.answer == answer
    # The device's answer never carries the operator's words.
    assert words not in answer.message
    if record_status is None:
        assert outcome.record is None
        assert outcome.error_json() == {"errorCode": answer.error_code, "message": answer.message}
    else:
        assert outcome.record is not None and outcome.record.status == record_status
        assert outcome.record.error_code == answer.error_code
        assert outcome.operation_json()["status"] == record_status
    logged = await env.refusals()
    assert logged and logged[0].reason == reason.value and words in logged[0].message
    assert "SECRET" not in logged[0].message


async def test_unenrolled_self_signed_certificate_gets_the_same_reason_whatever_tls_said() -> None:
    # Deleting an individual enrollment reaches the TLS trust store a little later than the
    # store; whether OpenSSL still verified the lone leaf or not, the operator reads one reason.
    env = await Env().setup()
    leaf = issue("lone-1")
    for evidence in (
        X509Evidence((leaf.cert,), (leaf.cert,), ()),  # stale trust store: verified as an anchor
        X509Evidence((leaf.cert,), None, ("self-signed certificate",)),  # fresh trust store
    ):
        outcome = await env.service.register(RegistrationRequest(SCOPE, "lone-1", evidence))
        assert outcome.reason is R.NO_ENROLLMENT
        assert "lone-1" in outcome.message
        assert outcome.record is None
