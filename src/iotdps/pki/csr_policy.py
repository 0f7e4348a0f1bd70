"""Vetting a device's certificate signing request before any CA sees it, and the issuance policy.

A CSR arrives inside a register request (azure-wire-protocol.md section 10): `csr` in
api-version 2025-07-01-preview is base64 DER without armour; `clientCertificateCsr` in
2021-11-01-preview is base64 DER too (10.2), but the preview's REST spec shows a PEM example
with the armour and no line breaks, and the embedded-C docs tell users to pass a PEM file. So
`parse_csr_text` takes base64 DER and PEM, with or without line breaks.

The CSR is attacker-controlled. `vet_csr` checks, cheapest first, and refuses with a
`CsrRefusal` code plus words for the operator:

1. size, before anything is decoded (`MAX_CSR_TEXT`);
2. it parses as PKCS#10 (and its extension request parses);
3. the key type is one the policy accepts (before the signature: no work on a key we refuse);
4. the self-signature verifies (the requester holds the key);
5. exactly one CN, equal to the registration id (`registration_ids_match`);
6. no extension asking for CA rights (basicConstraints CA:TRUE, keyUsage keyCertSign/cRLSign).

Other requested extensions (SANs, EKUs, CA:FALSE) are not refused, and never copied: the local
issuer applies its own device profile, and the cfssl issuer asks cfssl to drop requested hosts.

`IssuancePolicy` is what an enrollment (individual or group) says about issuance. Its JSON
shape extends Azure's 2021-11-01-preview `clientCertificateIssuancePolicy`
(`{"certificateAuthorityName": ...}`, the only field Azure's service clients set):

    "clientCertificateIssuancePolicy": {
        "certificateAuthorityName": "factory-ca",   # an issuing CA object, by name
        "validityInDays": 30,                        # the most the device certificate may get
        "acceptedKeyTypes": ["ecP256", "ecP384", "rsa2048", "rsa3072", "rsa4096"],
        "csrRequirement": "required",                # or "optional"
        "keepExistingCredential": false              # see below
    }

`keepExistingCredential` (default false, the secure default) decides what opens the hub after
issuance: false, the issued certificate alone (the symmetric key, the attestation certificate
or the TPM's hub key no longer does); true, the device's attestation credential too. It is read
at every registration that issues, so turning it off takes the old credential away at the
device's next registration (`provisioning.issuance.hub_auth`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from iotdps.errors import InvalidInput
from iotdps.ids import is_valid_registration_id
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.encoding import csr_signature_verifies
from iotdps.pki.profiles import MAX_CN_LENGTH

__all__ = [
    "DEFAULT_KEY_TYPES",
    "MAX_CSR_TEXT",
    "MAX_VALIDITY_DAYS",
    "AcceptedCsr",
    "CsrRefusal",
    "CsrRefused",
    "CsrRequirement",
    "IssuancePolicy",
    "IssuanceProfile",
    "KeyType",
    "key_type_of",
    "parse_csr_text",
    "registration_ids_match",
    "vet_csr",
]

# A P-256 CSR is ~250 bytes of DER, an RSA-4096 one ~1.1 KB (1.5 KB as base64, a little more as
# PEM). 8 KiB leaves room for a few extensions and refuses anything that is not a plausible CSR
# before a byte of it is decoded.
MAX_CSR_TEXT = 8192
# Devices renew; a month to a few years is the useful range. Ten years caps typos (3650 vs 36500).
MAX_VALIDITY_DAYS = 3650


class CsrRefusal(enum.StrEnum):
    """Why a CSR was refused; stable codes for the refusal log and the registration record."""

    TOO_LARGE = "CSR_TOO_LARGE"
    MALFORMED = "CSR_MALFORMED"
    KEY_NOT_ACCEPTED = "CSR_KEY_NOT_ACCEPTED"
    BAD_SIGNATURE = "CSR_BAD_SIGNATURE"
    CN_MISMATCH = "CSR_CN_MISMATCH"
    REQUESTS_CA = "CSR_REQUESTS_CA"


class CsrRefused(InvalidInput):
    """A CSR failed vetting. `reason` is the code; the message names what was wrong (no key
    material: at most the CN, the key type and the extension)."""

    def __init__(self, reason: CsrRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyType(enum.StrEnum):
    """Device key types an issuance policy can accept; the value is the JSON spelling.

    An RSA key is classified by its exact size: RSA-2560 or RSA-8192 are not in the list and so
    are refused, which keeps the accepted set explicit rather than "at least N bits".
    """

    EC_P256 = "ecP256"
    EC_P384 = "ecP384"
    RSA_2048 = "rsa2048"
    RSA_3072 = "rsa3072"
    RSA_4096 = "rsa4096"


DEFAULT_KEY_TYPES: frozenset[KeyType] = frozenset(KeyType)

_CURVES: dict[str, KeyType] = {"secp256r1": KeyType.EC_P256, "secp384r1": KeyType.EC_P384}
_RSA_SIZES: dict[int, KeyType] = {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__.removeprefix("_")


def key_type_of(key: object) -> KeyType | None:
    """The KeyType of a public key, or None for a key outside the list (P-521, RSA-1024, Ed25519...)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVES.get(key.curve.name)
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_SIZES.get(key.key_size)
    return None


class CsrRequirement(enum.StrEnum):
    """Whether a registration under the policy must carry a CSR.

    REQUIRED: a registration without one is refused (the device would otherwise end up without
    the credential the hub expects). OPTIONAL: without one the device registers as before.
    """

    REQUIRED = "required"
    OPTIONAL = "optional"


@dataclass(frozen=True)
class IssuanceProfile:
    """What an issuer needs to know about one issuance besides the CSR. Kept apart from the
    policy so issuers do not see enrollment concerns (key types, CSR requirement)."""

    validity_days: int

    def __post_init__(self) -> None:
        _check_days(self.validity_days, "validity_days")


def _check_days(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where} must be an integer number of days")
    if not 1 <= value <= MAX_VALIDITY_DAYS:
        raise InvalidInput(f"{where} must be between 1 and {MAX_VALIDITY_DAYS} days, not {value}")
    return value


_POLICY_FIELDS = (
    "certificateAuthorityName",
    "validityInDays",
    "acceptedKeyTypes",
    "csrRequirement",
    "keepExistingCredential",
)


@dataclass(frozen=True)
class IssuancePolicy:
    """An enrollment's certificate issuance policy (see the module docstring for its JSON)."""

    certificate_authority_name: str
    validity_days: int = 30
    accepted_key_types: frozenset[KeyType] = field(default=DEFAULT_KEY_TYPES)
    csr_requirement: CsrRequirement = CsrRequirement.REQUIRED
    keep_existing_credential: bool = False

    def __post_init__(self) -> None:
        check_ca_name(self.certificate_authority_name)
        _check_days(self.validity_days, "validityInDays")
        types = frozenset(self.accepted_key_types)
        if not types:
            raise InvalidInput("acceptedKeyTypes is empty: no CSR could ever be accepted")
        bad = [t for t in types if not isinstance(t, KeyType)]
        if bad:
            raise InvalidInput(f"acceptedKeyTypes holds {bad!r}; use KeyType values")
        object.__setattr__(self, "accepted_key_types", types)
        if not isinstance(self.csr_requirement, CsrRequirement):
            raise InvalidInput("csrRequirement must be a CsrRequirement")
        if not isinstance(self.keep_existing_credential, bool):
            raise InvalidInput("keepExistingCredential must be true or false")

    @property
    def profile(self) -> IssuanceProfile:
        return IssuanceProfile(self.validity_days)

    def to_json(self) -> dict[str, Any]:
        return {
            "certificateAuthorityName": self.certificate_authority_name,
            "validityInDays": self.validity_days,
            # In KeyType order, so the document is stable whatever order the set iterates in.
            "acceptedKeyTypes": [t.value for t in KeyType if t in self.accepted_key_types],
            "csrRequirement": self.csr_requirement.value,
            "keepExistingCredential": self.keep_existing_credential,
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "clientCertificateIssuancePolicy") -> IssuancePolicy:
        """Strict: unknown fields and wrong types raise InvalidInput naming the field. Only
        `certificateAuthorityName` is required, so Azure's own one-field document is accepted."""
        if not isinstance(doc, Mapping):
            raise InvalidInput(f"{where} must be an object")
        unknown = sorted(k for k in doc if k not in _POLICY_FIELDS)
        if unknown:
            raise InvalidInput(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
        name = doc.get("certificateAuthorityName")
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.certificateAuthorityName must be a string")
        days = doc.get("validityInDays", 30)
        _check_days(days, f"{where}.validityInDays")
        raw_types = doc.get("acceptedKeyTypes", [t.value for t in KeyType])
        if not isinstance(raw_types, list) or not all(isinstance(t, str) for t in raw_types):
            raise InvalidInput(f"{where}.acceptedKeyTypes must be a list of strings")
        types: set[KeyType] = set()
        for text in raw_types:
            try:
                types.add(KeyType(text))
            except ValueError:
                allowed = ", ".join(t.value for t in KeyType)
                raise InvalidInput(f"{where}.acceptedKeyTypes: unknown key type {text!r} (use {allowed})") from None
        requirement = doc.get("csrRequirement", CsrRequirement.REQUIRED.value)
        try:
            csr_requirement = CsrRequirement(requirement)
        except ValueError:
            raise InvalidInput(f"{where}.csrRequirement must be 'required' or 'optional'") from None
        keep = doc.get("keepExistingCredential", False)
        if not isinstance(keep, bool):
            raise InvalidInput(f"{where}.keepExistingCredential must be true or false")
        try:
            return cls(name, days, frozenset(types), csr_requirement, keep)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.message}") from None


@dataclass(frozen=True)
class AcceptedCsr:
    """A CSR that passed `vet_csr`: issuers take only this type, so none can skip the vetting."""

    csr: x509.CertificateSigningRequest
    registration_id: str
    key_type: KeyType

    def public_key(self) -> CertificatePublicKeyTypes:
        return self.csr.public_key()

    @property
    def der(self) -> bytes:
        return self.csr.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> str:
        return self.csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def registration_ids_match(cn: str, registration_id: str) -> bool:
    """The one place that says whether a CSR's CN names the registering device.

    Exact comparison, as the X.509 attestation compares a certificate's CN with the registration
    id today (attestation/x509.check_leaf). DPS documents registration ids as case-insensitive;
    if the pipeline ever folds case, this must fold the same way (pass `same_id` to `vet_csr`).
    """
    return cn == registration_id


_PEM = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----(.*?)-----END (NEW )?CERTIFICATE REQUEST-----", re.S)


def parse_csr_text(text: str | bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from base64 DER or PEM (line breaks optional), bounded before decoding.

    Raises CsrRefused(TOO_LARGE or MALFORMED). The signature is not checked here.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_CSR_TEXT:
        raise CsrRefused(CsrRefusal.TOO_LARGE, f"the CSR is {len(raw)} bytes; at most {MAX_CSR_TEXT} are accepted")
    body = raw.strip()
    armoured = _PEM.fullmatch(body)
    if armoured is not None:
        body = armoured.group(2)
    elif b"-----" in body:
        raise CsrRefused(CsrRefusal.MALFORMED, "the CSR has PEM armour that is not CERTIFICATE REQUEST")
    try:
        # PEM line breaks (\n or \r\n) and JSON-unescaped whitespace carry no data; drop them.
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CsrRefused(CsrRefusal.MALFORMED, "the CSR is not base64 (DER) or PEM") from None
    if not der:
        raise CsrRefused(CsrRefusal.MALFORMED, "the CSR is empty")
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise CsrRefused(CsrRefusal.MALFORMED, "the CSR is not a valid PKCS#10 certificate signing request") from None


def _requests_ca(req: x509.CertificateSigningRequest) -> str | None:
    """Words for the first extension asking for CA rights, or None."""
    try:
        extensions = req.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRefused(
            CsrRefusal.MALFORMED, f"the CSR's extension request does not parse ({type(exc).__name__})"
        ) from None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            return "basicConstraints CA:TRUE"
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            return "keyUsage keyCertSign" if value.key_cert_sign else "keyUsage cRLSign"
    return None


def vet_csr(
    csr: str | bytes | x509.CertificateSigningRequest,
    registration_id: str,
    accepted_key_types: Iterable[KeyType] = DEFAULT_KEY_TYPES,
    *,
    same_id: Callable[[str, str], bool] = registration_ids_match,
) -> AcceptedCsr:
    """Check a device CSR for issuance (see the module docstring); CsrRefused on the first problem."""
    req = csr if isinstance(csr, x509.CertificateSigningRequest) else parse_csr_text(csr)
    accepted = frozenset(accepted_key_types)

    try:
        public_key = req.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CsrRefused(CsrRefusal.KEY_NOT_ACCEPTED, "the CSR's public key is of an unsupported type") from None
    key_type = key_type_of(public_key)
    if key_type is None or key_type not in accepted:
        allowed = ", ".join(t.value for t in KeyType if t in accepted)
        raise CsrRefused(
            CsrRefusal.KEY_NOT_ACCEPTED,
            f"the CSR's key is {_describe_key(public_key)}, not an accepted key type ({allowed})",
        )

    if not csr_signature_verifies(req):
        raise CsrRefused(
            CsrRefusal.BAD_SIGNATURE, "the CSR's signature does not verify: it was not signed by the key it carries"
        )

    cns = req.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CsrRefused(
            CsrRefusal.CN_MISMATCH, f"the CSR subject has {len(cns)} CNs; it needs exactly one, the registration id"
        )
    cn = cns[0].value
    if not isinstance(cn, str):
        raise CsrRefused(CsrRefusal.CN_MISMATCH, "the CSR's CN is not a text string")
    if not same_id(cn, registration_id):
        # Both ids are shown with repr, so control characters cannot forge log lines.
        raise CsrRefused(
            CsrRefusal.CN_MISMATCH, f"the CSR's CN {cn[:80]!r} is not the registration id {registration_id!r}"
        )
    if not is_valid_registration_id(cn) or len(cn) > MAX_CN_LENGTH:
        raise CsrRefused(
            CsrRefusal.CN_MISMATCH,
            f"the CSR's CN {cn[:80]!r} is not a registration id a certificate can carry "
            f"(letters, digits, - . _ :, at most {MAX_CN_LENGTH} characters)",
        )

    wanted = _requests_ca(req)
    if wanted is not None:
        raise CsrRefused(CsrRefusal.REQUESTS_CA, f"the CSR asks for CA rights ({wanted}); a device may not have them")

    return AcceptedCsr(req, cn, key_type)
