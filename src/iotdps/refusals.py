"""Why a registration was refused, and what the device is told.

Two audiences, two answers. The operator gets a `RefusalReason` (a stable code) plus words
naming the certificate, CA, enrollment or group at fault, in the refusal log and in `explain`.
The device gets only the terse `DeviceAnswer` of `DEVICE_ANSWERS`, ONE table that the MQTT and
HTTP edges translate to their own codes (CONNACK, HTTP status, topic status). Keeping the
device answer terse matters: telling an unauthenticated caller "CA Y is not verified" or
"group G is disabled" would hand an attacker a map of the trust configuration.

Azure documents only a few error codes (401002 invalid certificate, 400208 no hub, 400209
hub unauthorized, 401000 unauthorized; azure-wire-protocol.md 1.7 and 12.2). Where Azure's
code is not documented we pick `status*1000 + n` codes of our own and say so in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from iotdps.errors import IotdpsError

__all__ = [
    "DEVICE_ANSWERS",
    "REVOKED_RECORD",
    "DeviceAnswer",
    "RefusalReason",
    "Refused",
    "device_answer",
]


class RefusalReason(StrEnum):
    """Stable machine codes of refusals; the words live with each refusal, not here."""

    INVALID_REGISTRATION_ID = "INVALID_REGISTRATION_ID"
    ID_SCOPE_MISMATCH = "ID_SCOPE_MISMATCH"
    UNSUPPORTED_ATTESTATION = "UNSUPPORTED_ATTESTATION"
    # X.509
    NO_CERTIFICATE = "NO_CERTIFICATE"
    CN_MISMATCH = "CN_MISMATCH"
    CERT_EXPIRED = "CERT_EXPIRED"
    CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
    CHAIN_UNKNOWN_CA = "CHAIN_UNKNOWN_CA"
    CA_NOT_VERIFIED = "CA_NOT_VERIFIED"
    CHAIN_INVALID = "CHAIN_INVALID"
    CERT_REVOKED = "CERT_REVOKED"
    INDIVIDUAL_CERT_MISMATCH = "INDIVIDUAL_CERT_MISMATCH"
    # symmetric key
    SAS_MISSING = "SAS_MISSING"
    SAS_MALFORMED = "SAS_MALFORMED"
    SAS_EXPIRED = "SAS_EXPIRED"
    SAS_BAD_SIGNATURE = "SAS_BAD_SIGNATURE"
    SAS_WRONG_RESOURCE = "SAS_WRONG_RESOURCE"
    SAS_LIFETIME_TOO_LONG = "SAS_LIFETIME_TOO_LONG"
    # TPM (the SAS itself is checked with the SAS_* reasons above)
    TPM_INVALID_KEY = "TPM_INVALID_KEY"
    TPM_EK_MISMATCH = "TPM_EK_MISMATCH"
    TPM_OVER_MQTT = "TPM_OVER_MQTT"
    # enrollment resolution
    ATTESTATION_MISMATCH = "ATTESTATION_MISMATCH"
    NO_ENROLLMENT = "NO_ENROLLMENT"
    ENROLLMENT_DISABLED = "ENROLLMENT_DISABLED"
    GROUP_DISABLED = "GROUP_DISABLED"
    # allocation
    NO_HUB = "NO_HUB"
    HUB_NOT_LINKED = "HUB_NOT_LINKED"
    WEBHOOK_FAILED = "WEBHOOK_FAILED"
    # certificate issuance (issue 18): the CSR (values match pki.csr_policy.CsrRefusal)...
    CSR_TOO_LARGE = "CSR_TOO_LARGE"
    CSR_MALFORMED = "CSR_MALFORMED"
    CSR_KEY_NOT_ACCEPTED = "CSR_KEY_NOT_ACCEPTED"
    CSR_BAD_SIGNATURE = "CSR_BAD_SIGNATURE"
    CSR_CN_MISMATCH = "CSR_CN_MISMATCH"
    CSR_REQUESTS_CA = "CSR_REQUESTS_CA"
    CSR_REQUIRED = "CSR_REQUIRED"
    CSR_NOT_EXPECTED = "CSR_NOT_EXPECTED"
    # ...and the issuing CA (values: "ISSUANCE_" + pki.issuing.base.IssuanceFailure)
    ISSUING_CA_UNKNOWN = "ISSUING_CA_UNKNOWN"
    ISSUANCE_CA_UNREACHABLE = "ISSUANCE_CA_UNREACHABLE"
    ISSUANCE_CA_REFUSED = "ISSUANCE_CA_REFUSED"
    ISSUANCE_CA_BAD_RESPONSE = "ISSUANCE_CA_BAD_RESPONSE"


@dataclass(frozen=True, slots=True)
class DeviceAnswer:
    """What a device is told.

    `registration_status` None: the request itself is refused with `http_status` and the
    Azure error body `{errorCode, message}` (an edge may refuse a 401 at MQTT CONNECT with
    CONNACK 5 instead). `registration_status` "failed"/"disabled": an enrollment matched, so
    the operation completes (HTTP 200) and the registration record carries that status with
    `error_code` / `message`, which is what Azure SDKs expect for those outcomes.
    """

    http_status: int
    error_code: int
    message: str
    registration_status: Literal["failed", "disabled"] | None = None


_UNAUTHORIZED = DeviceAnswer(401, 401000, "Unauthorized")
_BAD_CERT = DeviceAnswer(401, 401002, "Invalid certificate")
_BAD_CSR = DeviceAnswer(400, 400020, "Invalid certificate signing request")

# The one table. Everything that fails authentication is a plain 401 so that a caller cannot
# tell an unknown registration id from a wrong key or an untrusted CA.
DEVICE_ANSWERS: dict[RefusalReason, DeviceAnswer] = {
    RefusalReason.INVALID_REGISTRATION_ID: DeviceAnswer(400, 400004, "Invalid registration id"),  # own sub-code
    RefusalReason.ID_SCOPE_MISMATCH: _UNAUTHORIZED,
    RefusalReason.UNSUPPORTED_ATTESTATION: DeviceAnswer(400, 400005, "Attestation mechanism not supported"),  # own
    RefusalReason.NO_CERTIFICATE: _BAD_CERT,
    RefusalReason.CN_MISMATCH: _BAD_CERT,
    RefusalReason.CERT_EXPIRED: _BAD_CERT,
    RefusalReason.CERT_NOT_YET_VALID: _BAD_CERT,
    RefusalReason.CHAIN_UNKNOWN_CA: _BAD_CERT,
    RefusalReason.CA_NOT_VERIFIED: _BAD_CERT,
    RefusalReason.CHAIN_INVALID: _BAD_CERT,
    # Refused at CONNECT like any bad certificate; the device's registration record, if it has
    # one, says "disabled: Certificate revoked" (REVOKED_RECORD, provisioning.service).
    RefusalReason.CERT_REVOKED: _BAD_CERT,
    RefusalReason.INDIVIDUAL_CERT_MISMATCH: _BAD_CERT,
    RefusalReason.SAS_MISSING: _UNAUTHORIZED,
    RefusalReason.SAS_MALFORMED: _UNAUTHORIZED,
    RefusalReason.SAS_EXPIRED: _UNAUTHORIZED,
    RefusalReason.SAS_BAD_SIGNATURE: _UNAUTHORIZED,
    RefusalReason.SAS_WRONG_RESOURCE: _UNAUTHORIZED,
    RefusalReason.SAS_LIFETIME_TOO_LONG: _UNAUTHORIZED,
    # A malformed EK or SRK says nothing about the trust configuration: the device may know.
    RefusalReason.TPM_INVALID_KEY: DeviceAnswer(400, 400007, "Invalid TPM endorsement or storage root key"),  # own
    RefusalReason.TPM_EK_MISMATCH: _UNAUTHORIZED,
    # Azure DPS does TPM over HTTPS and AMQP only (azure-wire-protocol.md 3).
    RefusalReason.TPM_OVER_MQTT: DeviceAnswer(
        400, 400005, "TPM attestation is not supported over MQTT: register over HTTPS"
    ),  # own sub-code
    RefusalReason.ATTESTATION_MISMATCH: _UNAUTHORIZED,
    RefusalReason.NO_ENROLLMENT: _UNAUTHORIZED,
    # A matched but disabled enrollment ends the operation in status `disabled` (section 7).
    RefusalReason.ENROLLMENT_DISABLED: DeviceAnswer(200, 401003, "Enrollment disabled", "disabled"),  # own sub-code
    RefusalReason.GROUP_DISABLED: DeviceAnswer(200, 401003, "Enrollment disabled", "disabled"),  # own sub-code
    RefusalReason.NO_HUB: DeviceAnswer(200, 400208, "No IoT hub available for this registration", "failed"),
    RefusalReason.HUB_NOT_LINKED: DeviceAnswer(200, 400209, "IoT hub not linked to this service", "failed"),
    RefusalReason.WEBHOOK_FAILED: DeviceAnswer(200, 400210, "Custom allocation failed", "failed"),  # own sub-code
    # Certificate issuance (own sub-codes). A bad, missing or unexpected CSR refuses the request
    # itself (400, nothing is written); the device authenticated, so it may learn what was wrong
    # with its own request, not the policy's details.
    RefusalReason.CSR_TOO_LARGE: _BAD_CSR,
    RefusalReason.CSR_MALFORMED: _BAD_CSR,
    RefusalReason.CSR_KEY_NOT_ACCEPTED: DeviceAnswer(400, 400021, "CSR key type not accepted"),
    RefusalReason.CSR_BAD_SIGNATURE: _BAD_CSR,
    RefusalReason.CSR_CN_MISMATCH: DeviceAnswer(400, 400022, "CSR subject must be CN=<registration id>"),
    RefusalReason.CSR_REQUESTS_CA: DeviceAnswer(400, 400023, "CSR may not request CA rights"),
    RefusalReason.CSR_REQUIRED: DeviceAnswer(400, 400024, "A certificate signing request is required"),
    RefusalReason.CSR_NOT_EXPECTED: DeviceAnswer(
        400, 400025, "Device sent CSR but it is not configured in the service"
    ),
    # The issuing CA failed after the device was admitted: the operation ends `failed`; an
    # unreachable CA is worth retrying later (503 sub-code), the others need an operator.
    RefusalReason.ISSUING_CA_UNKNOWN: DeviceAnswer(200, 400230, "Certificate issuance is misconfigured", "failed"),
    RefusalReason.ISSUANCE_CA_UNREACHABLE: DeviceAnswer(
        200, 503230, "Certificate issuing CA unavailable; retry later", "failed"
    ),
    RefusalReason.ISSUANCE_CA_REFUSED: DeviceAnswer(200, 400231, "Certificate issuance refused", "failed"),
    RefusalReason.ISSUANCE_CA_BAD_RESPONSE: DeviceAnswer(200, 502230, "Certificate issuance failed", "failed"),
}


# What a revoked device's registration record shows (status, errorCode, errorMessage): Azure's
# answer to a compromised device is disabling its enrollment, whose records say "disabled".
REVOKED_RECORD: tuple[Literal["disabled"], int, str] = ("disabled", 401006, "Certificate revoked")  # own sub-code


class Refused(IotdpsError):
    """Raised inside the pipeline (allocation, webhook) to refuse with a reason and words.

    The message is for operators; the device only ever sees `device_answer(reason)`.
    """

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def device_answer(reason: RefusalReason) -> DeviceAnswer:
    return DEVICE_ANSWERS[reason]
