"""Routes of certificate issuance (issue 18): trust bundles, issuing CA objects and the record
of issued certificates (handlers in api.issuance)."""

from __future__ import annotations

from iotdps.access import Permission
from iotdps.api import issuance as iss
from iotdps.api.routes.route import Route
from iotdps.api.schemas import REGISTRATION_ID, ref

__all__ = ["ISSUANCE_ROUTES"]

_RR = Permission.REGISTRATION_READ
_SC = Permission.SERVICE_CONFIG


def _issuance_routes() -> tuple[Route, ...]:
    """Certificate issuance configuration (issue 18): trust bundles, issuing CAs, issued certs."""
    bundle, ca = "/trustBundles/{id}", "/certificateAuthorities/{name}"
    out: list[Route] = [
        Route(
            "GET",
            "/trustBundles",
            iss.list_trust_bundles,
            _SC,
            "TrustBundles_List",
            "Trust bundles",
            "issuance",
            answer={"type": "array", "items": ref("TrustBundle")},
        ),
        Route(
            "GET",
            bundle,
            iss.get_trust_bundle,
            _SC,
            "TrustBundles_Get",
            "One trust bundle (its newest version)",
            "issuance",
            answer=ref("TrustBundle"),
            etag_header=True,
            errors=(400, 401, 404),
        ),
        Route(
            "PUT",
            bundle,
            iss.put_trust_bundle,
            _SC,
            "TrustBundles_CreateOrUpdate",
            "Create a trust bundle, or make its next version",
            "issuance",
            body="TrustBundleInput",
            answer=ref("TrustBundle"),
            if_match=True,
            etag_header=True,
            errors=(400, 401, 412),
        ),
        Route(
            "DELETE",
            bundle,
            iss.delete_trust_bundle,
            _SC,
            "TrustBundles_Delete",
            "Delete a trust bundle",
            "issuance",
            status=204,
            if_match=True,
            errors=(400, 401, 404, 412),
        ),
        Route(
            "GET",
            "/certificateAuthorities",
            iss.list_issuing_cas,
            _SC,
            "CertificateAuthorities_List",
            "Issuing CAs (secrets never shown)",
            "issuance",
            answer={"type": "array", "items": ref("IssuingCa")},
        ),
        Route(
            "GET",
            ca,
            iss.get_issuing_ca,
            _SC,
            "CertificateAuthorities_Get",
            "One issuing CA",
            "issuance",
            answer=ref("IssuingCa"),
            etag_header=True,
            errors=(400, 401, 404),
        ),
        Route(
            "PUT",
            ca,
            iss.put_issuing_ca,
            _SC,
            "CertificateAuthorities_CreateOrUpdate",
            "Create or replace an issuing CA (local: toolkit CA key + passphrase; cfssl: url, profile, authKey)",
            "issuance",
            body="IssuingCaInput",
            answer=ref("IssuingCa"),
            if_match=True,
            etag_header=True,
            errors=(400, 401, 412),
        ),
        Route(
            "DELETE",
            ca,
            iss.delete_issuing_ca,
            _SC,
            "CertificateAuthorities_Delete",
            "Delete an issuing CA",
            "issuance",
            status=204,
            if_match=True,
            errors=(400, 401, 404, 412),
        ),
        Route(
            "GET",
            "/issuedCertificates",
            iss.list_issued_certificates,
            _RR,
            "IssuedCertificates_List",
            "Certificates issued at registration, newest first",
            "issuance",
            answer={"type": "array", "items": ref("IssuedCertificate")},
            query=(
                ("registrationId", REGISTRATION_ID, "only this registration id"),
                ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many"),
            ),
        ),
    ]
    return tuple(out)


ISSUANCE_ROUTES: tuple[Route, ...] = _issuance_routes()
