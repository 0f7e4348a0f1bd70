"""Precedence as a pure function: a table of candidates -> decision, with its explanation."""

from __future__ import annotations

import base64

import pytest

from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
    SymmetricKeyAttestation,
    X509Attestation,
)
from iotdps.enrollment.resolve import CaStep, resolve_symmetric_key, resolve_x509
from iotdps.refusals import RefusalReason as R
from iotdps.sas import SasToken, derive_device_key, make_sas_token, parse_sas
from iotdps.secret import Secret

LEAF = "AA" * 32
OTHER = "BB" * 32
K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


def _x509_group(gid: str, enabled: bool = True) -> EnrollmentGroup:
    status = "enabled" if enabled else "disabled"
    return EnrollmentGroup(
        gid,
        Attestation("x509", x509=X509Attestation(ca_references=("ca", None))),
        EnrollmentSettings(provisioning_status=status),  # type: ignore[arg-type]
    )


def _individual(thumb: str, enabled: bool = True) -> IndividualEnrollment:
    slot = CertificateSlot("unused", {"sha256Thumbprint": thumb})
    status = "enabled" if enabled else "disabled"
    return IndividualEnrollment(
        "dev-1",
        Attestation("x509", x509=X509Attestation(client_certificates=(CertificateSlot("x", {}), slot))),
        EnrollmentSettings(provisioning_status=status),  # type: ignore[arg-type]
    )


def _steps(*groups: list[EnrollmentGroup]) -> list[CaStep]:
    return [CaStep(f"CN=ca{i}", f"{i:064X}", tuple(g)) for i, g in enumerate(groups)]


@pytest.mark.parametrize(
    ("individual", "steps", "verified", "admitted", "reason", "decider"),
    [
        (None, _steps([], [_x509_group("root")]), True, True, None, "group:root"),
        (None, _steps([_x509_group("mid", False)], [_x509_group("root")]), True, False, R.GROUP_DISABLED, "group:mid"),
        (None, _steps([_x509_group("mid")], [_x509_group("root", False)]), True, True, None, "group:mid"),
        (None, _steps([], []), True, False, R.NO_ENROLLMENT, None),
        (None, _steps([_x509_group("mid")]), False, False, R.CA_NOT_VERIFIED, None),
        (_individual(LEAF), _steps([_x509_group("mid", False)]), True, True, None, "individual:dev-1"),
        (
            _individual(LEAF, False),
            _steps([_x509_group("mid")]),
            True,
            False,
            R.ENROLLMENT_DISABLED,
            "individual:dev-1",
        ),
        (_individual(OTHER), _steps([_x509_group("mid")]), True, False, R.INDIVIDUAL_CERT_MISMATCH, "individual:dev-1"),
        (None, _steps([_x509_group("b-2"), _x509_group("a-1", False)]), True, False, R.GROUP_DISABLED, "group:a-1"),
    ],
)
def test_x509_precedence(individual, steps, verified, admitted, reason, decider) -> None:  # type: ignore[no-untyped-def]
    decision = resolve_x509("dev-1", LEAF, individual, steps, reaches_verified_ca=verified)
    assert (decision.admitted, decision.reason, decision.enrollment_name) == (admitted, reason, decider)
    lines = decision.explain()
    assert lines[-1].startswith("decision: admit" if admitted else f"decision: refuse {reason}")


def test_x509_explanation_words() -> None:
    steps = [
        CaStep("CN=A (sha256 1234...)", "1" * 64, ()),
        CaStep("CN=root (sha256 9...)", "9" * 64, (_x509_group("g"),), "root", True),
    ]
    decision = resolve_x509("dev-3", LEAF, None, steps, reaches_verified_ca=True)
    assert decision.explain() == [
        "individual enrollment dev-3: not found",
        "group on CN=A (sha256 1234...): none",
        "group on CN=root (sha256 9...) [uploaded as root, verified]: g, enabled -> admit",
        "decision: admit",
    ]


def _token(rid: str, key: str) -> SasToken:
    parsed = parse_sas(make_sas_token("s", rid, key, 2_000_000_000))
    assert isinstance(parsed, SasToken)
    return parsed


def _sk_group(gid: str, key: str, enabled: bool = True) -> EnrollmentGroup:
    status = "enabled" if enabled else "disabled"
    return EnrollmentGroup(
        gid,
        Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(key))),
        EnrollmentSettings(provisioning_status=status),  # type: ignore[arg-type]
    )


def test_symmetric_key_precedence() -> None:
    own = IndividualEnrollment(
        "dev-1", Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(K1), Secret(K2)))
    )
    assert resolve_symmetric_key("dev-1", _token("dev-1", K2), own, []).key_slot == "secondary"
    wrong = resolve_symmetric_key("dev-1", _token("dev-1", derive_device_key(K1, "dev-1")), own, [_sk_group("g", K1)])
    assert wrong.reason is R.SAS_BAD_SIGNATURE  # the individual decides; no fallback to the group

    derived = _token("dev-1", derive_device_key(K2, "dev-1"))
    groups = [_sk_group("z-enabled", K2), _sk_group("other", K1, False), _sk_group("a-disabled", K2, False)]
    decision = resolve_symmetric_key("dev-1", derived, None, groups)
    assert (decision.reason, decision.enrollment_name) == (R.GROUP_DISABLED, "group:a-disabled")
    assert "symmetric-key group other: derived keys do not verify" not in decision.steps  # sorted: a- first
    ok = resolve_symmetric_key("dev-1", derived, None, [_sk_group("z-enabled", K2), _sk_group("other", K1, False)])
    assert ok.admitted and ok.enrollment_name == "group:z-enabled"
    assert ok.steps[1] == "symmetric-key group other: derived keys do not verify"
    group_key = resolve_symmetric_key("dev-1", _token("dev-1", K2), None, [_sk_group("g", K2)])
    assert group_key.reason is R.NO_ENROLLMENT
