"""LocalIssuer: device certificates from a CA iotdps holds (key file or Signer), judged by
`openssl verify` against the root, and check_issued's refusals of a wrong answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotdps.errors import PkiError
from iotdps.pki import (
    Issuer,
    KeySpec,
    Validity,
    create_intermediate_ca,
    create_root_ca,
    generate_private_key,
    issue_device_certificate,
    issue_server_certificate,
)
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile, vet_csr
from iotdps.pki.external_signing import SoftwareSigner
from iotdps.pki.issuing import (
    CertificateIssuer,
    IssuanceError,
    IssuanceFailure,
    LocalIssuer,
    check_ca_chain,
    check_issued,
)
from iotdps_testing.issuance import make_csr, openssl_verify

RID = "dev-1"


def hierarchy(spec: KeySpec = KeySpec.P256, *, issuing_days: int = 1000) -> tuple[Issuer, Issuer]:
    rk = generate_private_key(spec)
    root = Issuer(create_root_ca("Local Root", rk, Validity.days(3650)), rk, name="root")
    ik = generate_private_key(spec)
    cert = create_intermediate_ca(root, "Local Issuing", ik.public_key(), Validity.days(issuing_days))
    return root, Issuer(cert, ik, root.chain, name="issuing")


@pytest.fixture(scope="module")
def cas() -> tuple[Issuer, Issuer]:
    return hierarchy()


def accepted(cn: str = RID, **kw: Any) -> AcceptedCsr:
    return vet_csr(make_csr(cn, **kw), cn)


async def test_issued_chain_verifies_with_openssl(tmp_path: Path, cas: tuple[Issuer, Issuer]) -> None:
    root, issuing = cas
    issuer = LocalIssuer("factory-ca", issuing)
    assert isinstance(issuer, CertificateIssuer)
    csr = accepted()
    chain = await issuer.issue(csr, IssuanceProfile(30))

    assert chain.intermediates == (issuing.certificate,) and chain.root == root.certificate
    assert chain.issuer_name == "factory-ca"
    leaf = chain.leaf
    assert leaf.subject.rfc4514_string() == f"CN={RID}"
    assert leaf.public_key() == csr.public_key()
    assert ExtendedKeyUsageOID.CLIENT_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=5)
    assert chain.serial_number == format(leaf.serial_number, "X")

    result = openssl_verify(tmp_path, chain.certificates[:-1], [root.certificate])
    assert result.returncode == 0, result.stderr
    # The judge does say no: the same leaf against an unrelated root fails.
    stranger, _ = hierarchy()
    assert openssl_verify(tmp_path, chain.certificates[:-1], [stranger.certificate], name="neg").returncode != 0


async def test_requested_extensions_are_not_copied(cas: tuple[Issuer, Issuer]) -> None:
    csr = accepted(
        extensions=[
            (x509.SubjectAlternativeName([x509.DNSName("dps.example.com")]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ]
    )
    leaf = (await LocalIssuer("factory-ca", cas[1]).issue(csr, IssuanceProfile(7))).leaf
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


async def test_a_root_can_issue_directly(tmp_path: Path, cas: tuple[Issuer, Issuer]) -> None:
    root, _ = cas
    chain = await LocalIssuer("root-ca", root).issue(accepted(), IssuanceProfile(1))
    assert chain.intermediates == () and chain.root == root.certificate
    assert openssl_verify(tmp_path, [chain.leaf], [root.certificate]).returncode == 0


@pytest.mark.parametrize("spec", [KeySpec.P256, KeySpec.P384, KeySpec.RSA2048], ids=lambda s: s.value)
async def test_signer_path_issues_the_same_profile(tmp_path: Path, spec: KeySpec) -> None:
    """A Signer (the seam an HSM key uses) gives the same device profile as the key-file path."""
    root, issuing = hierarchy(spec)
    by_signer = LocalIssuer.with_signer("hsm-ca", SoftwareSigner(issuing.key), issuing.chain)
    by_file = LocalIssuer("file-ca", issuing)
    csr = accepted()
    a = await by_signer.issue(csr, IssuanceProfile(30))
    b = await by_file.issue(csr, IssuanceProfile(30))
    assert a.leaf.signature_algorithm_oid == b.leaf.signature_algorithm_oid
    assert a.leaf.issuer == b.leaf.issuer == issuing.certificate.subject
    assert list(a.leaf.extensions) == list(b.leaf.extensions)  # same profile, same device key
    aki = a.leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki == issuing.authority_key_identifier
    result = openssl_verify(tmp_path, a.certificates[:-1], [root.certificate])
    assert result.returncode == 0, result.stderr


def test_signer_must_hold_the_ca_key(cas: tuple[Issuer, Issuer]) -> None:
    with pytest.raises(PkiError, match="not the key of"):
        LocalIssuer.with_signer("hsm-ca", SoftwareSigner(generate_private_key()), cas[1].chain)


def test_chain_must_reach_a_root(cas: tuple[Issuer, Issuer]) -> None:
    _, issuing = cas
    orphan = Issuer(issuing.certificate, issuing.key, (), name="orphan")  # parents left out
    with pytest.raises(PkiError, match="self-signed root"):
        LocalIssuer("orphan", orphan)
    with pytest.raises(PkiError, match="is not signed by"):
        check_ca_chain([issuing.certificate, hierarchy()[0].certificate], "mixed")


async def test_validity_is_pulled_in_to_the_ca_end() -> None:
    _, issuing = hierarchy(issuing_days=10)
    chain = await LocalIssuer("short-ca", issuing).issue(accepted(), IssuanceProfile(30))
    assert chain.not_after == issuing.certificate.not_valid_after_utc


async def test_expired_ca_refuses() -> None:
    rk = generate_private_key()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    old_root = Issuer(create_root_ca("Old Root", rk, Validity(past, past + dt.timedelta(days=10))), rk)
    with pytest.raises(IssuanceError) as caught:
        await LocalIssuer("old-ca", old_root).issue(accepted(), IssuanceProfile(30))
    assert caught.value.reason is IssuanceFailure.CA_REFUSED
    assert "expired" in caught.value.message and not caught.value.retryable


async def test_issue_takes_only_a_vetted_csr(cas: tuple[Issuer, Issuer]) -> None:
    with pytest.raises(TypeError, match="AcceptedCsr"):
        await LocalIssuer("factory-ca", cas[1]).issue(make_csr(RID), IssuanceProfile(1))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- check_issued


def refused(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], csr: AcceptedCsr, days: int = 30) -> str:
    with pytest.raises(IssuanceError) as caught:
        check_issued("remote-ca", leaf, chain, csr, IssuanceProfile(days))
    assert caught.value.reason is IssuanceFailure.CA_BAD_RESPONSE
    return caught.value.message


def test_check_issued_refuses_what_a_ca_should_not_have_returned(cas: tuple[Issuer, Issuer]) -> None:
    _, issuing = cas
    key = generate_private_key()
    csr = vet_csr(make_csr(RID, key), RID)
    good = issue_device_certificate(issuing, RID, key.public_key(), Validity.days(30))
    assert check_issued("remote-ca", good, issuing.chain, csr, IssuanceProfile(30)).leaf == good

    other_key = issue_device_certificate(issuing, RID, generate_private_key().public_key(), Validity.days(30))
    assert "key of the CSR" in refused(other_key, issuing.chain, csr)
    other_cn = issue_device_certificate(issuing, "dev-2", key.public_key(), Validity.days(30))
    assert "not the registration id" in refused(other_cn, issuing.chain, csr)
    server = issue_server_certificate(issuing, key.public_key(), Validity.days(30), dns_names=["dev-1"])
    assert "lacks clientAuth" in refused(server, issuing.chain, csr)
    too_long = issue_device_certificate(issuing, RID, key.public_key(), Validity.days(90))
    assert "more than the policy's 30" in refused(too_long, issuing.chain, csr)
    _, stranger = hierarchy()
    foreign = issue_device_certificate(stranger, RID, key.public_key(), Validity.days(30))
    assert "not signed by the configured CA" in refused(foreign, issuing.chain, csr)
