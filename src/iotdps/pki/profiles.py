"""Certificate profiles: root CA, intermediate CA, device, server, verification (proof of possession).

Each profile fixes the extensions itself; nothing a requester asks for is copied in. Profiles
follow RFC 5280 and the stricter web-PKI rules that cryptography's verifier applies (critical
basicConstraints and keyUsage, SKI on CAs, AKI on everything issued), so certificates made
here validate with both OpenSSL and cryptography.x509.verification.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdps.errors import InvalidInput
from iotdps.ids import check_registration_id
from iotdps.pki.external_signing import Signer, sign_certificate
from iotdps.pki.issuer import Issuer, Validity, signature_hash
from iotdps.pki.keys import PrivateKey

__all__ = [
    "MAX_CN_LENGTH",
    "check_public_key",
    "create_intermediate_ca",
    "create_root_ca",
    "device_extensions",
    "issue_device_certificate",
    "issue_server_certificate",
    "issue_verification_certificate",
]

# X.520 ub-common-name. A registration id may be 128 characters, but a CN cannot exceed 64, so
# an X.509 device's registration id is limited to 64 in practice (azure-wire-protocol.md 1.4).
MAX_CN_LENGTH = 64


def _ku(*, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KU = _ku(cert_sign=True)
_EC_LEAF_KU = _ku(digital_signature=True)
# RSA TLS 1.2 key exchange may use key transport, which needs keyEncipherment.
_RSA_LEAF_KU = _ku(digital_signature=True, key_encipherment=True)
_LEAF_BC = x509.BasicConstraints(ca=False, path_length=None)
_CLIENT_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
_SERVER_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])


def check_public_key(key: object, what: str = "public key") -> CertificatePublicKeyTypes:
    """Accept EC P-256/P-384 and RSA >= 2048 public keys; refuse anything else, by type."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise InvalidInput(f"the {what} uses curve {key.curve.name}; only P-256 and P-384 are accepted")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidInput(f"the {what} is RSA {key.key_size}; at least 2048 bits are required")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"pass the {what}, not the private key")
    raise InvalidInput(f"the {what} is a {type(key).__name__}; only EC and RSA keys are accepted")


def _cn(value: str, what: str) -> x509.Name:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    if not value.strip():
        raise InvalidInput(f"{what} is empty")
    if len(value) > MAX_CN_LENGTH:
        raise InvalidInput(f"{what} is {len(value)} characters; a certificate CN holds at most {MAX_CN_LENGTH}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInput(f"{what} contains control characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def _subject(common_name: str, organization: str | None, what: str) -> x509.Name:
    name = _cn(common_name, what)
    if organization:
        if len(organization) > MAX_CN_LENGTH:
            raise InvalidInput(f"organization is longer than {MAX_CN_LENGTH} characters")
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization), *name])
    return name


def _check_validity(validity: Validity) -> Validity:
    if not isinstance(validity, Validity):
        raise TypeError("validity must be a Validity")
    return validity


def _base(
    subject: x509.Name, issuer_name: x509.Name, public_key: CertificatePublicKeyTypes, validity: Validity
) -> x509.CertificateBuilder:
    # random_serial_number draws 159 bits from os.urandom: unique and unpredictable (CA/B BR 7.1).
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _signed(builder: x509.CertificateBuilder, issuer: Issuer) -> x509.Certificate:
    """The certificate signed by `issuer`'s key: by cryptography when the key is in memory,
    else through its Signer (a token), which also checks the key is the CA certificate's."""
    key = issuer.private_key
    if key is not None:
        return builder.sign(key, signature_hash(key))
    return sign_certificate(builder, issuer.signer, issuer=issuer.certificate)


def _issued(
    issuer: Issuer, subject: x509.Name, public_key: CertificatePublicKeyTypes, validity: Validity, *, clamp: bool
) -> x509.CertificateBuilder:
    if not isinstance(issuer, Issuer):
        raise TypeError("issuer must be an Issuer")
    validity = _check_validity(validity).within(issuer.certificate, clamp=clamp)
    return _base(subject, issuer.certificate.subject, public_key, validity).add_extension(
        issuer.authority_key_identifier, critical=False
    )


def create_root_ca(
    common_name: str,
    key: PrivateKey | Signer,
    validity: Validity,
    *,
    path_length: int | None = None,
    organization: str | None = None,
) -> x509.Certificate:
    """A self-signed root: CA:TRUE (critical), keyCertSign + cRLSign, SKI and AKI.

    `key` is a private key in memory or a Signer (a key made inside a token)."""
    if path_length is not None and (
        isinstance(path_length, bool) or not isinstance(path_length, int) or path_length < 0
    ):
        raise InvalidInput("path length must be a non-negative integer")
    subject = _subject(common_name, organization, "the CA name")
    pub = key.public_key()
    builder = (
        _base(subject, subject, pub, _check_validity(validity))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KU, critical=True)
    )
    if isinstance(key, Signer):
        return sign_certificate(builder, key)
    return builder.sign(key, signature_hash(key))


def create_intermediate_ca(
    issuer: Issuer,
    common_name: str,
    public_key: CertificatePublicKeyTypes,
    validity: Validity,
    *,
    path_length: int | None = None,
    organization: str | None = None,
    clamp: bool = False,
) -> x509.Certificate:
    """An intermediate CA signed by `issuer` (a root or another intermediate).

    `path_length` None takes whatever depth the ancestors leave (unlimited if none constrain);
    a request beyond what they allow, or an issuer whose constraint is used up, raises PkiError.
    """
    pub = check_public_key(public_key)
    plen = issuer.child_ca_path_length(path_length)
    builder = (
        _issued(issuer, _subject(common_name, organization, "the CA name"), pub, validity, clamp=clamp)
        .add_extension(x509.BasicConstraints(ca=True, path_length=plen), critical=True)
        .add_extension(_CA_KU, critical=True)
    )
    cdp = issuer.crl_distribution_points
    if cdp is not None:
        # Where the parent's CRL (the one that can revoke this CA) is published.
        builder = builder.add_extension(cdp, critical=False)
    return _signed(builder, issuer)


def _leaf_ku(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    return _RSA_LEAF_KU if isinstance(public_key, rsa.RSAPublicKey) else _EC_LEAF_KU


def issue_device_certificate(
    issuer: Issuer,
    registration_id: str,
    public_key: CertificatePublicKeyTypes,
    validity: Validity,
    *,
    clamp: bool = False,
) -> x509.Certificate:
    """A device (client) certificate: CN = registration id, EKU clientAuth, digitalSignature."""
    check_registration_id(registration_id)
    pub = check_public_key(public_key, "device public key")
    if not isinstance(issuer, Issuer):
        raise TypeError("issuer must be an Issuer")
    validity = _check_validity(validity).within(issuer.certificate, clamp=clamp)
    builder = _base(_cn(registration_id, "the registration id"), issuer.certificate.subject, pub, validity)
    for ext in device_extensions(issuer, rsa_subject=isinstance(pub, rsa.RSAPublicKey)):
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return _signed(builder, issuer)


def device_extensions(issuer: Issuer, *, rsa_subject: bool) -> list[x509.Extension[x509.ExtensionType]]:
    """The device profile's extensions after the SKI, in certificate order.

    One definition shared by the builder above and the bulk encoder in `template`.
    """
    ku = _RSA_LEAF_KU if rsa_subject else _EC_LEAF_KU
    values: list[tuple[x509.ExtensionType, bool]] = [
        (issuer.authority_key_identifier, False),
        (_LEAF_BC, True),
        (ku, True),
        (_CLIENT_EKU, False),
    ]
    cdp = issuer.crl_distribution_points
    if cdp is not None:
        values.append((cdp, False))
    return [x509.Extension(v.oid, crit, v) for v, crit in values]


IPLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(value: IPLike) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"{value!r} is not an IP address") from None


def _dns(value: str) -> str:
    label_ok = all(
        0 < len(part) <= 63
        and part.replace("-", "").isalnum()
        and part.isascii()
        and not part.startswith("-")
        and not part.endswith("-")
        for part in (value[2:] if value.startswith("*.") else value).split(".")
    )
    if not value or len(value) > 253 or not label_ok:
        raise InvalidInput(f"{value!r} is not a valid DNS name")
    return value.lower()


def issue_server_certificate(
    issuer: Issuer,
    public_key: CertificatePublicKeyTypes,
    validity: Validity,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Iterable[IPLike] = (),
    common_name: str | None = None,
    clamp: bool = False,
) -> x509.Certificate:
    """A TLS server certificate: EKU serverAuth, SANs for every DNS name and IP address.

    Clients match host names against the SAN only, so at least one SAN is required; the CN is a
    label (the first DNS name unless given).
    """
    if isinstance(dns_names, str):
        raise TypeError("dns_names must be a sequence of names, not one string")
    names = [_dns(n) for n in dns_names]
    ips = [_ip(a) for a in ip_addresses]
    if not names and not ips:
        raise InvalidInput("a server certificate needs at least one DNS name or IP address")
    pub = check_public_key(public_key, "server public key")
    cn = common_name or (names[0] if names else str(ips[0]))
    san = x509.SubjectAlternativeName(
        [*(x509.DNSName(n) for n in dict.fromkeys(names)), *(x509.IPAddress(a) for a in dict.fromkeys(ips))]
    )
    builder = (
        _issued(issuer, _cn(cn, "the server name"), pub, validity, clamp=clamp)
        .add_extension(_LEAF_BC, critical=True)
        .add_extension(_leaf_ku(pub), critical=True)
        .add_extension(_SERVER_EKU, critical=False)
        .add_extension(san, critical=False)
    )
    return _signed(builder, issuer)


def issue_verification_certificate(
    issuer: Issuer,
    verification_code: str,
    public_key: CertificatePublicKeyTypes,
    validity: Validity,
    *,
    clamp: bool = True,
) -> x509.Certificate:
    """Proof of possession: CN = the service's verification code, signed by the CA being proven.

    The service checks only the CN and that the CA's key made the signature, so the subject key
    can be a throwaway.
    """
    code = verification_code.strip() if isinstance(verification_code, str) else verification_code
    name = _cn(code, "the verification code")
    pub = check_public_key(public_key)
    builder = (
        _issued(issuer, name, pub, validity, clamp=clamp)
        .add_extension(_LEAF_BC, critical=True)
        .add_extension(_leaf_ku(pub), critical=True)
    )
    return _signed(builder, issuer)
