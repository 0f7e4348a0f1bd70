"""OpenAPI components of the certificate issuance routes (issue 18)."""

from __future__ import annotations

from typing import Any

__all__ = ["ISSUANCE_COMPONENTS"]

_STR: dict[str, Any] = {"type": "string"}
_PEMS: dict[str, Any] = {"type": "array", "items": _STR}
_CERT_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["certificate"],
    "properties": {"certificate": _STR, "metadata": {"type": "object", "readOnly": True}},
}

ISSUANCE_COMPONENTS: dict[str, Any] = {
    "TrustBundle": {
        "type": "object",
        "required": ["id", "etag", "version", "certificates"],
        "properties": {
            "id": _STR,
            "etag": _STR,
            "version": {"type": "integer", "minimum": 1},
            "createdDateTime": _STR,
            "lastModifiedDateTime": _STR,
            "certificates": {"type": "array", "items": _CERT_ENTRY},
        },
    },
    "TrustBundleInput": {
        "type": "object",
        "required": ["certificates"],
        "properties": {"id": _STR, "certificates": {"type": "array", "items": _CERT_ENTRY, "minItems": 1}},
    },
    "IssuingCa": {
        "type": "object",
        "required": ["name", "kind", "caChain"],
        "properties": {
            "name": _STR,
            "kind": {"type": "string", "enum": ["local", "cfssl", "pkcs11"]},
            "caChain": _PEMS,
            "url": _STR,
            "profile": _STR,
            "tlsCa": _PEMS,
            "timeoutSeconds": {"type": "number"},
            "pkcs11Uri": {
                "type": "string",
                "description": "pkcs11: the RFC 7512 URI of the CA's key in the service's token (no module, no PIN)",
            },
            "etag": _STR,
            "createdDateTimeUtc": _STR,
            "lastUpdatedDateTimeUtc": _STR,
        },
    },
    "IssuingCaInput": {
        "type": "object",
        "required": ["kind", "caChain"],
        "properties": {
            "kind": {"type": "string", "enum": ["local", "cfssl", "pkcs11"]},
            "caChain": _PEMS,
            "key": {"type": "string", "description": "local: the CA's encrypted PKCS#8 PEM key", "writeOnly": True},
            "passphrase": {"type": "string", "description": "local: the key's passphrase", "writeOnly": True},
            "url": _STR,
            "profile": _STR,
            "authKey": {"type": "string", "description": "cfssl: the profile's hex auth key", "writeOnly": True},
            "tlsCa": _PEMS,
            "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
            "pkcs11Uri": {
                "type": "string",
                "description": "pkcs11: the RFC 7512 URI of the CA's key (pkcs11:token=...;object=...); the"
                " service logs in with its IOTDPS_PKCS11_MODULE and PIN and checks the key is caChain[0]'s."
                " A URI carrying pin-value, pin-source, module-path or module-name is refused",
            },
        },
    },
    "IssuedCertificate": {
        "type": "object",
        "required": ["sha256Thumbprint", "serialNumber", "registrationId", "certificateAuthorityName"],
        "properties": {
            "sha256Thumbprint": _STR,
            "sha1Thumbprint": _STR,
            "serialNumber": _STR,
            "registrationId": _STR,
            "deviceId": {"type": ["string", "null"]},
            "certificateAuthorityName": _STR,
            "certificateAuthorityKind": _STR,
            "notBeforeUtc": _STR,
            "notAfterUtc": _STR,
            "issuedDateTimeUtc": _STR,
            "enrollment": {"type": ["string", "null"]},
            "issuedVia": {"type": "string", "enum": ["dps", "hub"], "description": "how the device asked"},
            "certificate": _STR,
        },
    },
}
