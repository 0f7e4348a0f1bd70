"""JSON Schemas of the management API bodies, for the OpenAPI document.

They describe what the server accepts and answers (the DPS service API shapes, section 4 of
azure-wire-protocol.md). Objects stay open (`additionalProperties` allowed) because the
service API is: clients send read-only fields back, and unknown fields are ignored. Read-only
fields (etag, times, certificate info) are marked so.
"""

from __future__ import annotations

from typing import Any

from iotdps.api.issuance_schemas import ISSUANCE_COMPONENTS

__all__ = ["COMPONENTS", "HUB_COMPONENTS", "REGISTRATION_ID", "ref"]

_STR: dict[str, Any] = {"type": "string"}
_STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_BOOL_OR_NULL: dict[str, Any] = {"type": ["boolean", "null"]}
_OBJ: dict[str, Any] = {"type": "object"}
_OBJ_OR_NULL: dict[str, Any] = {"type": ["object", "null"]}
REGISTRATION_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "^[A-Za-z0-9._:-]*[A-Za-z0-9-]$",
}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_CERT_INFO = {
    "type": "object",
    "readOnly": True,
    "properties": {
        "subjectName": _STR,
        "sha1Thumbprint": _STR,
        "sha256Thumbprint": _STR,
        "issuerName": _STR,
        "notBeforeUtc": _STR,
        "notAfterUtc": _STR,
        "serialNumber": _STR,
        "version": {"type": "integer"},
    },
}

_CERT_SLOT = {
    "type": "object",
    "required": ["certificate"],
    "properties": {"certificate": {"type": "string", "description": "PEM or base64 DER"}, "info": _CERT_INFO},
}

_PAIR_OF_SLOTS = {
    "type": ["object", "null"],
    "properties": {
        "primary": {"anyOf": [ref("X509CertificateWithInfo"), {"type": "null"}]},
        "secondary": {"anyOf": [ref("X509CertificateWithInfo"), {"type": "null"}]},
    },
}

_TWIN = {
    "type": ["object", "null"],
    "properties": {
        "tags": _OBJ_OR_NULL,
        "properties": {"type": ["object", "null"], "properties": {"desired": _OBJ_OR_NULL}},
    },
}

_SETTINGS_FIELDS: dict[str, Any] = {
    "provisioningStatus": {"type": ["string", "null"], "enum": ["enabled", "disabled", None]},
    "allocationPolicy": {"type": ["string", "null"], "enum": ["hashed", "geoLatency", "static", "custom", None]},
    "iotHubs": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
    "iotHubHostName": _STR_OR_NULL,
    "reprovisionPolicy": {
        "type": ["object", "null"],
        "properties": {"updateHubAssignment": _BOOL_OR_NULL, "migrateDeviceData": _BOOL_OR_NULL},
    },
    "initialTwin": _TWIN,
    "capabilities": {"type": ["object", "null"], "properties": {"iotEdge": _BOOL_OR_NULL}},
    "customAllocationDefinition": {
        "type": ["object", "null"],
        "required": ["webhookUrl", "apiVersion"],
        "properties": {"webhookUrl": _STR, "apiVersion": _STR},
    },
    "clientCertificateIssuancePolicy": {
        "type": ["object", "null"],
        "required": ["certificateAuthorityName"],
        "properties": {
            "certificateAuthorityName": _STR,
            "validityInDays": {"type": "integer", "minimum": 1, "maximum": 3650},
            "acceptedKeyTypes": {
                "type": "array",
                "items": {"type": "string", "enum": ["ecP256", "ecP384", "rsa2048", "rsa3072", "rsa4096"]},
            },
            "csrRequirement": {"type": "string", "enum": ["required", "optional"]},
            "keepExistingCredential": {
                "type": "boolean",
                "default": False,
                "description": "iotdps: after issuance the device's own credential (symmetric key, attestation "
                "certificate, TPM hub key) keeps opening the hub beside the issued certificate; false: the issued "
                "certificate alone. Read at each registration that issues.",
            },
        },
    },
    "trustBundleId": _STR_OR_NULL,
    "etag": {"type": ["string", "null"], "readOnly": True},
    "createdDateTimeUtc": {"type": ["string", "null"], "readOnly": True},
    "lastUpdatedDateTimeUtc": {"type": ["string", "null"], "readOnly": True},
}

_ERROR = {
    "type": "object",
    "required": ["errorCode", "trackingId", "message", "timestampUtc"],
    "properties": {"errorCode": {"type": "integer"}, "trackingId": _STR, "message": _STR, "timestampUtc": _STR},
}

_REGISTRATION_STATE = {
    "type": "object",
    "required": ["registrationId", "status"],
    "properties": {
        "registrationId": _STR,
        "assignedHub": _STR,
        "deviceId": _STR,
        "status": {"type": "string", "enum": ["unassigned", "assigning", "assigned", "failed", "disabled"]},
        "substatus": _STR,
        "errorCode": {"type": "integer"},
        "errorMessage": _STR,
        "payload": {},
        "etag": _STR,
        "createdDateTimeUtc": _STR,
        "lastUpdatedDateTimeUtc": _STR,
        # iotdps additions (issue 18): the trust bundle the device last received and the
        # certificate last issued to it (provisioning.record_view).
        "trustBundleId": {**_STR, "description": "iotdps: the trust bundle the device last received"},
        "trustBundleVersion": {"type": ["integer", "null"], "description": "iotdps: its version"},
        "issuedCertificate": {
            "type": "object",
            "description": "iotdps: the certificate last issued to the device at registration",
            "required": ["sha256Thumbprint"],
            "properties": {
                "sha256Thumbprint": _STR,
                "serialNumber": _STR,
                "notAfterUtc": _STR,
                "certificateAuthorityName": _STR,
            },
        },
        # iotdps addition (issue 20): worked out when read, from the CRLs held now.
        "revocation": {
            "type": "object",
            "description": "iotdps: the device's certificate is revoked now, or under a revoked CA",
            "required": ["revoked", "reason", "by", "certificate"],
            "properties": {
                "revoked": {"type": "boolean"},
                "reason": _STR,
                "revokedAt": _STR,
                "by": {**_STR, "description": "leaf, or ca:<uploaded CA name or SHA-256 thumbprint>"},
                "certificate": {"type": "string", "enum": ["attestation", "issued"]},
            },
        },
    },
}

_CA = {
    "type": "object",
    "required": ["name", "properties"],
    "properties": {
        "name": _STR,
        "etag": _STR_OR_NULL,
        "properties": {
            "type": "object",
            "required": ["isVerified", "certificate"],
            "properties": {
                "subject": _STR,
                "issuer": _STR,
                "notBefore": _STR,
                "expiry": _STR,
                "thumbprint": _STR,
                "sha256Thumbprint": _STR,
                "isVerified": {"type": "boolean"},
                "created": _STR,
                "updated": _STR,
                "certificate": _STR,
                "verificationCode": _STR,
                "verificationCodeExpiry": _STR,
                "crl": {
                    "type": "object",
                    "description": "the CRL held for this CA (pki.revocation)",
                    "properties": {
                        "number": {"type": ["integer", "null"]},
                        "thisUpdate": _STR,
                        "nextUpdate": _STR_OR_NULL,
                        "revokedCount": {"type": "integer"},
                    },
                },
            },
        },
    },
}

_LINKED_HUB = {
    "type": "object",
    "required": ["name", "allocationWeight", "applyAllocationPolicy"],
    "properties": {
        "name": _STR,
        "allocationWeight": {"type": "integer", "minimum": 1, "maximum": 1000},
        "applyAllocationPolicy": {"type": "boolean"},
        "location": _STR,
        "servedUntil": {
            "type": "string",
            "format": "date-time",
            "description": "iotdps: end of the latest serving node's lease; once past, allocation skips the hub",
        },
        "servedBy": {
            "type": "object",
            "additionalProperties": {"type": "string", "format": "date-time"},
            "description": "iotdps: each serving node's lease end, by node id (a node stopped cleanly has none)",
        },
        "implicit": {"type": "boolean", "description": "iotdps: made by `iotdps up` because no hub was configured"},
    },
}

_THUMBPRINTS = {
    "type": ["object", "null"],
    "properties": {"primaryThumbprint": _STR_OR_NULL, "secondaryThumbprint": _STR_OR_NULL},
}
_CAPABILITIES = {"type": ["object", "null"], "properties": {"iotEdge": _BOOL_OR_NULL}}
_SAS_KEY = {"type": ["string", "null"], "description": "base64 of 16 to 64 bytes; generated when absent"}

_DEVICE = {
    "type": "object",
    "properties": {
        "deviceId": _STR_OR_NULL,
        "generationId": {"type": ["string", "null"], "readOnly": True},
        "etag": _STR_OR_NULL,
        "connectionState": {"type": ["string", "null"], "readOnly": True},
        "status": {"type": ["string", "null"], "enum": ["enabled", "disabled", None]},
        "statusReason": _STR_OR_NULL,
        "connectionStateUpdatedTime": {"type": ["string", "null"], "readOnly": True},
        "statusUpdatedTime": {"type": ["string", "null"], "readOnly": True},
        "lastActivityTime": {"type": ["string", "null"], "readOnly": True},
        "cloudToDeviceMessageCount": {"type": ["integer", "null"], "readOnly": True},
        "authentication": {
            "type": ["object", "null"],
            "properties": {
                "type": {"type": ["string", "null"], "enum": ["sas", "selfSigned", "certificateAuthority", None]},
                "symmetricKey": {
                    "type": ["object", "null"],
                    "properties": {"primaryKey": _SAS_KEY, "secondaryKey": _SAS_KEY},
                },
                "x509Thumbprint": _THUMBPRINTS,
                "issuedThumbprints": {
                    "type": "array",
                    "items": _STR,
                    "readOnly": True,
                    "description": "iotdps: SHA-256 and SHA-1 thumbprints of the certificate issued to the device "
                    "at registration, accepted beside the credential above; kept when an update sends none",
                },
            },
        },
        "capabilities": _CAPABILITIES,
    },
}

_TWIN_DOC = {
    "type": "object",
    "properties": {
        "deviceId": _STR_OR_NULL,
        "etag": _STR_OR_NULL,
        "deviceEtag": {"type": ["string", "null"], "readOnly": True},
        "version": {"type": ["integer", "null"], "readOnly": True},
        "status": {"type": ["string", "null"], "readOnly": True},
        "connectionState": {"type": ["string", "null"], "readOnly": True},
        "authenticationType": {"type": ["string", "null"], "readOnly": True},
        "x509Thumbprint": _THUMBPRINTS,
        "capabilities": _CAPABILITIES,
        "tags": _OBJ_OR_NULL,
        "properties": {
            "type": ["object", "null"],
            "properties": {
                "desired": _OBJ_OR_NULL,
                "reported": {"type": ["object", "null"], "description": "read-only: ignored in requests"},
            },
        },
    },
}

HUB_COMPONENTS: dict[str, Any] = {
    "Device": _DEVICE,
    "Twin": _TWIN_DOC,
    "CloudToDeviceMethod": {
        "type": "object",
        "required": ["methodName"],
        "properties": {
            "methodName": {"type": "string", "minLength": 1, "maxLength": 128},
            "payload": {"description": "any JSON value, passed to the device"},
            "responseTimeoutInSeconds": {"type": "integer", "minimum": 1, "maximum": 300},
            "connectTimeoutInSeconds": {"type": "integer", "minimum": 0, "maximum": 300},
        },
    },
    "CloudToDeviceMethodResult": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "integer"}, "payload": {}},
    },
    "CloudToDeviceMessage": {
        "type": "object",
        "description": "body (UTF-8 text) or bodyBase64 (bytes), not both",
        "properties": {
            "body": _STR,
            "bodyBase64": {"type": "string", "contentEncoding": "base64"},
            "properties": {
                "type": "object",
                "additionalProperties": _STR,
                "description": "application properties (names must not start with $)",
            },
            "messageId": {"type": "string", "minLength": 1},
            "correlationId": {"type": "string", "minLength": 1},
            "contentType": {"type": "string", "minLength": 1},
            "contentEncoding": {"type": "string", "minLength": 1},
            "userId": {"type": "string", "minLength": 1},
            "ack": {"type": "string", "enum": ["none", "positive", "negative", "full"]},
            "ttlSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 172800},
        },
    },
    "CloudToDeviceAccepted": {"type": "object", "required": ["messageId"], "properties": {"messageId": _STR}},
    "TelemetryEvent": {
        "type": "object",
        "required": ["sequenceNumber", "enqueuedTimeUtc", "bodyBase64"],
        "properties": {
            "sequenceNumber": {"type": "integer"},
            "deviceId": _STR,
            "enqueuedTimeUtc": _STR,
            "body": {"type": ["string", "null"], "description": "the body as text, null when not UTF-8"},
            "bodyBase64": _STR,
            "systemProperties": {"type": "object", "additionalProperties": _STR},
            "applicationProperties": {"type": "object", "additionalProperties": _STR_OR_NULL},
            "moduleId": _STR_OR_NULL,
        },
    },
}

COMPONENTS: dict[str, Any] = {
    "ProvisioningServiceErrorDetails": _ERROR,
    "X509CertificateInfo": _CERT_INFO,
    "X509CertificateWithInfo": _CERT_SLOT,
    "AttestationMechanism": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["none", "tpm", "x509", "symmetricKey"]},
            "tpm": {
                "type": ["object", "null"],
                "required": ["endorsementKey"],
                "properties": {"endorsementKey": _STR, "storageRootKey": _STR_OR_NULL},
            },
            "x509": {
                "type": ["object", "null"],
                "properties": {
                    "clientCertificates": _PAIR_OF_SLOTS,
                    "signingCertificates": _PAIR_OF_SLOTS,
                    "caReferences": {
                        "type": ["object", "null"],
                        "properties": {"primary": _STR_OR_NULL, "secondary": _STR_OR_NULL},
                    },
                },
            },
            "symmetricKey": {
                "type": ["object", "null"],
                "properties": {"primaryKey": _STR_OR_NULL, "secondaryKey": _STR_OR_NULL},
            },
        },
    },
    "IndividualEnrollment": {
        "type": "object",
        "required": ["registrationId", "attestation"],
        "properties": {
            "registrationId": REGISTRATION_ID,
            "deviceId": _STR_OR_NULL,
            "attestation": ref("AttestationMechanism"),
            "optionalDeviceInformation": _OBJ_OR_NULL,
            "registrationState": {"readOnly": True},
            **_SETTINGS_FIELDS,
        },
    },
    "EnrollmentGroup": {
        "type": "object",
        "required": ["enrollmentGroupId", "attestation"],
        "properties": {
            "enrollmentGroupId": REGISTRATION_ID,
            "attestation": ref("AttestationMechanism"),
            **_SETTINGS_FIELDS,
        },
    },
    "QuerySpecification": {"type": "object", "properties": {"query": _STR}},
    "BulkEnrollmentOperation": {
        "type": "object",
        "required": ["mode", "enrollments"],
        "properties": {
            "mode": {"type": "string", "enum": ["create", "update", "updateIfMatchETag", "delete"]},
            "enrollments": {"type": "array", "minItems": 1, "maxItems": 10, "items": ref("IndividualEnrollment")},
        },
    },
    "BulkEnrollmentGroupOperation": {
        "type": "object",
        "required": ["mode", "enrollmentGroups"],
        "properties": {
            "mode": {"type": "string", "enum": ["create", "update", "updateIfMatchETag", "delete"]},
            "enrollmentGroups": {"type": "array", "minItems": 1, "maxItems": 10, "items": ref("EnrollmentGroup")},
        },
    },
    "BulkEnrollmentOperationResult": {
        "type": "object",
        "required": ["isSuccessful", "errors"],
        "properties": {
            "isSuccessful": {"type": "boolean"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["errorCode", "errorStatus"],
                    "properties": {
                        "registrationId": _STR,
                        "enrollmentGroupId": _STR,
                        "errorCode": {"type": "integer"},
                        "errorStatus": _STR,
                    },
                },
            },
        },
    },
    "DeviceRegistrationState": _REGISTRATION_STATE,
    "CertificateUpload": {
        "type": "object",
        "description": "the certificate and isVerified, at the top level or inside properties",
        "properties": {
            "certificate": _STR,
            "isVerified": _BOOL_OR_NULL,
            "properties": {"type": "object", "properties": {"certificate": _STR, "isVerified": _BOOL_OR_NULL}},
        },
    },
    "VerificationCertificate": {
        "type": "object",
        "required": ["certificate"],
        "properties": {"certificate": {"type": "string", "description": "PEM or base64 DER, CN = the code"}},
    },
    "CrlUpload": {
        "type": "object",
        "required": ["crl"],
        "properties": {"crl": {"type": "string", "description": "the CA's CRL: PEM or base64 DER"}},
    },
    "CertificateDescription": _CA,
    "CertificateList": {
        "type": "object",
        "required": ["value"],
        "properties": {"value": {"type": "array", "items": ref("CertificateDescription")}},
    },
    "LinkedHub": _LINKED_HUB,
    "LinkedHubSettings": {
        "type": "object",
        "properties": {
            "allocationWeight": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
            "applyAllocationPolicy": _BOOL_OR_NULL,
            "location": _STR_OR_NULL,
        },
    },
    "ServiceSettings": {
        "type": "object",
        "required": ["idScope"],
        "properties": {
            "idScope": {"type": "string", "minLength": 1, "maxLength": 64},
            "allocationPolicy": {"type": "string", "enum": ["hashed", "geoLatency", "static"]},
        },
    },
    "Refusal": {
        "type": "object",
        "required": ["registrationId", "reason", "message", "timestampUtc", "count", "firstSeenUtc", "lastSeenUtc"],
        "properties": {
            "registrationId": _STR,
            "reason": _STR,
            "message": _STR,
            "attestationType": _STR_OR_NULL,
            "enrollment": _STR_OR_NULL,
            "timestampUtc": _STR,
            "peerAddress": _STR_OR_NULL,
            "count": {"type": "integer", "minimum": 1},
            "firstSeenUtc": _STR,
            "lastSeenUtc": _STR,
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["seq", "at", "actor", "action", "target", "before", "after", "detail", "prev", "hash"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "at": _STR,
            "actor": _STR,
            "action": _STR,
            "target": _STR,
            "before": _STR_OR_NULL,
            "after": _STR_OR_NULL,
            "detail": {"type": "object"},
            "prev": _STR,
            "hash": _STR,
        },
    },
    "ExplainRequest": {
        "type": "object",
        "properties": {"certificates": _STR, "registrationId": _STR, "symmetricKey": _STR, "endorsementKey": _STR},
    },
    "Explanation": {"type": "object", "required": ["lines"], "properties": {"lines": {"type": "array", "items": _STR}}},
}
COMPONENTS.update(HUB_COMPONENTS)
COMPONENTS.update(ISSUANCE_COMPONENTS)

_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
COMPONENTS.update(
    {
        "ServiceStatus": {
            "type": "object",
            "required": ["endpoints", "linkedHubs", "enrollments", "enrollmentGroups", "registrations", "perMinute"],
            "properties": {
                "idScope": _STR_OR_NULL,
                "deviceProvisioningHostName": _STR_OR_NULL,
                "endpoints": {"type": "array", "items": _STR},
                "linkedHubs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["hostName", "served"],
                        "properties": {
                            "hostName": _STR,
                            "allocationWeight": {"type": "integer"},
                            "served": {"type": "boolean", "description": "this process serves the hub"},
                        },
                    },
                },
                "enrollments": _COUNT,
                "enrollmentGroups": _COUNT,
                "registrations": {
                    "type": "object",
                    "description": "registration records by status",
                    "additionalProperties": _COUNT,
                },
                "perMinute": {
                    "type": "object",
                    "required": ["start", "minutes", "assignments", "refusals"],
                    "description": "one count per minute from start (UTC), the current minute last",
                    "properties": {
                        "start": _STR,
                        "minutes": {"type": "integer"},
                        "assignments": {"type": "array", "items": _COUNT},
                        "refusals": {"type": "array", "items": _COUNT},
                    },
                },
            },
        },
        "RegistryStatistics": {
            "type": "object",
            "required": ["totalDeviceCount", "enabledDeviceCount", "disabledDeviceCount"],
            "properties": {
                "totalDeviceCount": _COUNT,
                "enabledDeviceCount": _COUNT,
                "disabledDeviceCount": _COUNT,
            },
        },
        "ServiceStatistics": {
            "type": "object",
            "required": ["connectedDeviceCount"],
            "properties": {"connectedDeviceCount": _COUNT},
        },
    }
)
