"""`RemoteAdminClient`: the `AdminClient` (cli.client) over a running iotdps's management API.

Each method is one HTTP request (a few are two, said where they are); nothing spans requests,
so a read-modify-write across calls relies on etags (If-Match), which the API checks as the
store does. Requests are signed with a service SAS token of the policy the target names; the
token is made per request and never printed. This module is imported only for `--server`
(cli.target), so aiohttp stays out of local commands.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp

from iotdps.access import make_service_sas
from iotdps.allocation.hubs import LinkedHub, served_by_from_json
from iotdps.audit import AuditEntry, AuditQuery
from iotdps.cli.client import ExplainRequest
from iotdps.cli.server_target import ServerTarget
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.errors import (
    AlreadyExists,
    InvalidInput,
    IotdpsError,
    NotFound,
    PreconditionFailed,
    StoreError,
    Unauthorized,
)
from iotdps.pki.encoding import certificate_info, load_certificate
from iotdps.ports import Refusal
from iotdps.provisioning.record_view import IssuedSummary, RegistrationView, RevocationSummary
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.timestamps import format_time, parse_time

__all__ = ["ApiHttp", "RemoteAdminClient"]

R = TypeVar("R", IndividualEnrollment, EnrollmentGroup)
_TIMEOUT = 30.0
_PAGE = 500
_MAX_PAGES = 100_000


# --------------------------------------------------------------------------- HTTP


_ERRORS: dict[int, type[IotdpsError]] = {
    400: InvalidInput,
    401: Unauthorized,
    404: NotFound,
    409: AlreadyExists,
    412: PreconditionFailed,
}


class ApiHttp:
    """Signed requests to the management API. `resource` is what the tokens name (their `sr`):
    the server's host for the DPS routes; for the hub service routes the hub, which
    `headers` (x-iotdps-hub) then names too. `api_version` is the routes' (DPS or hub)."""

    def __init__(
        self,
        target: ServerTarget,
        *,
        resource: str | None = None,
        headers: Mapping[str, str] | None = None,
        api_version: str = "2021-10-01",
        error_codes: Mapping[int, IotdpsError] | None = None,
    ) -> None:
        self.target = target
        self._resource = resource or target.host
        self._headers = dict(headers or {})
        self._api_version = api_version
        # The API's six-digit errorCode -> the error to raise instead of the generic one
        # for its HTTP status (when the server's words would mislead a CLI user).
        self._error_codes = dict(error_codes or {})
        self._session: aiohttp.ClientSession | None = None
        context = ssl.create_default_context(cafile=target.ca_file) if target.ca_file else ssl.create_default_context()
        self._ssl = context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        if_match: str | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        timeout: float = _TIMEOUT,
    ) -> tuple[Any, Mapping[str, str]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        token = make_service_sas(self._resource, self.target.policy, self.target.key.reveal())
        sent = {"Authorization": token, **self._headers, **(headers or {})}
        if if_match:
            sent["If-Match"] = f'"{if_match}"'
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            sent["Content-Type"] = "application/json"
        url = f"{self.target.url}{path}"
        params = {"api-version": self._api_version, **(query or {})}
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers=sent,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                text = await response.text()
                status, got = response.status, dict(response.headers)
        except aiohttp.ClientConnectorCertificateError:
            raise StoreError(
                f"the server certificate of {self.target.url} is not trusted; give --server-ca FILE"
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"cannot reach {self.target.url}: {type(exc).__name__}") from None
        doc: Any = None
        if text:
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
        if status >= 400:
            code = doc.get("errorCode") if isinstance(doc, dict) else None
            if isinstance(code, int) and code in self._error_codes:
                raise self._error_codes[code]
            message = doc.get("message") if isinstance(doc, dict) else None
            raise _ERRORS.get(status, StoreError)(str(message or f"the server answered {status}"))
        return doc, got


def _seg(value: str) -> str:
    return quote(value, safe="")


# --------------------------------------------------------------------------- records from API JSON


def _stamped(record: Any, doc: Mapping[str, Any]) -> Any:
    created, updated = doc.get("createdDateTimeUtc"), doc.get("lastUpdatedDateTimeUtc")
    return replace(
        record,
        created=parse_time(created) if isinstance(created, str) else None,
        updated=parse_time(updated) if isinstance(updated, str) else None,
    )


def _ca_from_json(doc: Mapping[str, Any]) -> CaCertificate:
    props = doc.get("properties") or {}
    cert = load_certificate(str(props.get("certificate", "")))
    created, updated = props.get("created"), props.get("updated")
    expiry = props.get("verificationCodeExpiry")
    return CaCertificate(
        name=str(doc.get("name")),
        certificate=str(props.get("certificate")),
        info=certificate_info(cert),
        is_verified=bool(props.get("isVerified")),
        verification_code_expires=parse_time(expiry) if isinstance(expiry, str) else None,
        etag=doc.get("etag"),
        created=parse_time(created) if isinstance(created, str) else None,
        updated=parse_time(updated) if isinstance(updated, str) else None,
        crl_info=dict(props["crl"]) if isinstance(props.get("crl"), dict) else None,
    )


def _hub_from_json(doc: Mapping[str, Any]) -> LinkedHub:
    return LinkedHub(
        str(doc["name"]),
        int(doc.get("allocationWeight") or 1),
        doc.get("applyAllocationPolicy") is not False,
        doc.get("location"),
        served_until=parse_time(doc["servedUntil"]) if isinstance(doc.get("servedUntil"), str) else None,
        implicit=doc.get("implicit") is True,
        served_by=served_by_from_json(doc.get("servedBy")),
    )


def _registration_from_json(doc: Mapping[str, Any]) -> RegistrationRecord:
    kind = next((k for k in ("x509", "symmetricKey", "tpm") if k in doc), None)
    group = (doc.get(kind) or {}).get("enrollmentGroupId") if kind else None
    record = RegistrationRecord(
        registration_id=str(doc["registrationId"]),
        status=doc.get("status", "unassigned"),
        operation_id="",
        substatus=doc.get("substatus"),
        assigned_hub=doc.get("assignedHub"),
        device_id=doc.get("deviceId"),
        error_code=doc.get("errorCode"),
        error_message=doc.get("errorMessage"),
        payload=doc.get("payload"),
        attestation_type=cast(Any, kind),
        enrollment_group_id=group,
        trust_bundle_id=doc.get("trustBundleId"),
        trust_bundle_version=doc.get("trustBundleVersion"),
        issued_certificate=(doc.get("issuedCertificate") or {}).get("sha256Thumbprint"),
        etag=doc.get("etag"),
    )
    return cast(RegistrationRecord, _stamped(record, doc))


def _view_from_json(doc: Mapping[str, Any]) -> RegistrationView:
    return RegistrationView(
        _registration_from_json(doc),
        IssuedSummary.from_json(doc.get("issuedCertificate")),
        RevocationSummary.from_json(doc.get("revocation")),
    )


def _refusal_from_json(d: Mapping[str, Any]) -> Refusal:
    return Refusal(
        d["registrationId"],
        d["reason"],
        d["message"],
        d.get("attestationType"),
        parse_time(d.get("lastSeenUtc") or d["timestampUtc"]),
        d.get("enrollment"),
        d.get("peerAddress"),
        int(d.get("count", 1)),
        parse_time(d["firstSeenUtc"]) if d.get("firstSeenUtc") else None,
    )


# --------------------------------------------------------------------------- the client


class RemoteAdminClient:
    """Administration of the iotdps at `target` (see the module docstring on atomicity)."""

    def __init__(self, target: ServerTarget) -> None:
        self.http = ApiHttp(target)

    async def close(self) -> None:
        await self.http.close()

    async def _get_or_none(self, path: str) -> Any:
        try:
            doc, _ = await self.http.call("GET", path)
        except NotFound:
            return None
        return doc

    async def _all_pages(self, method: str, path: str, body: Any = None) -> list[Any]:
        """Every document of a paged query (x-ms-continuation), at most 100,000 pages."""
        out: list[Any] = []
        continuation: str | None = None
        for _ in range(_MAX_PAGES):
            headers = {"x-ms-max-item-count": str(_PAGE)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            docs, got = await self.http.call(method, path, body, headers=headers)
            out.extend(docs)
            continuation = got.get("x-ms-continuation") or None
            if continuation is None:
                break
        return out

    # ------------------------------------------------------------------ CA certificates

    async def upload_ca(
        self, name: str, pem: str, verified: bool = False, if_match: str | None = None
    ) -> CaCertificate:
        doc, _ = await self.http.call(
            "PUT", f"/certificates/{_seg(name)}", {"certificate": pem, "isVerified": verified}, if_match=if_match
        )
        return _ca_from_json(doc)

    async def generate_verification_code(self, name: str, if_match: str | None = None) -> tuple[str, CaCertificate]:
        doc, _ = await self.http.call("POST", f"/certificates/{_seg(name)}/generateVerificationCode", if_match=if_match)
        return str(doc["properties"]["verificationCode"]), _ca_from_json(doc)

    async def verify_ca(self, name: str, verification_cert_pem: str, if_match: str | None = None) -> CaCertificate:
        doc, _ = await self.http.call(
            "POST", f"/certificates/{_seg(name)}/verify", {"certificate": verification_cert_pem}, if_match=if_match
        )
        return _ca_from_json(doc)

    async def upload_crl(self, name: str, data: str, if_match: str | None = None) -> CaCertificate:
        doc, _ = await self.http.call("PUT", f"/certificates/{_seg(name)}/crl", {"crl": data}, if_match=if_match)
        return _ca_from_json(doc)

    async def get_ca(self, name: str) -> CaCertificate | None:
        doc = await self._get_or_none(f"/certificates/{_seg(name)}")
        return None if doc is None else _ca_from_json(doc)

    async def list_cas(self) -> list[CaCertificate]:
        doc, _ = await self.http.call("GET", "/certificates")
        return [_ca_from_json(d) for d in doc["value"]]

    async def delete_ca(self, name: str) -> None:
        await self.http.call("DELETE", f"/certificates/{_seg(name)}")

    # ------------------------------------------------------------------ enrollments and groups
    #
    # GET answers carry no symmetric keys; a record is completed with its keys (a second
    # request, POST .../attestationmechanism) so that one written back keeps them.

    async def _with_keys(self, base: str, key: str, doc: dict[str, Any], parse: Callable[[Any], R]) -> R:
        if doc.get("attestation", {}).get("type") == "symmetricKey":
            att, _ = await self.http.call("POST", f"{base}/{_seg(key)}/attestationmechanism")
            doc = {**doc, "attestation": att}
        return cast(R, _stamped(parse(doc), doc))

    async def _get_record(self, base: str, key: str, parse: Callable[[Any], R]) -> R | None:
        doc = await self._get_or_none(f"{base}/{_seg(key)}")
        return None if doc is None else await self._with_keys(base, key, doc, parse)

    async def _put_record(self, base: str, key: str, record: R, if_match: str | None, parse: Callable[[Any], R]) -> R:
        body = record.to_json(include_keys=True)
        doc, _ = await self.http.call("PUT", f"{base}/{_seg(key)}", body, if_match=if_match)
        return await self._with_keys(base, key, doc, parse)

    async def _list_records(self, base: str, parse: Callable[[Any], R]) -> list[R]:
        docs = await self._all_pages("POST", f"{base}/query", {"query": "SELECT *"})
        return [cast(R, _stamped(parse(d), d)) for d in docs]

    async def get_enrollment(self, registration_id: str) -> IndividualEnrollment | None:
        return await self._get_record("/enrollments", registration_id, IndividualEnrollment.from_json)

    async def list_enrollments(self) -> list[IndividualEnrollment]:
        return await self._list_records("/enrollments", IndividualEnrollment.from_json)

    async def put_enrollment(
        self, enrollment: IndividualEnrollment, if_match: str | None = None
    ) -> IndividualEnrollment:
        key = enrollment.registration_id
        return await self._put_record("/enrollments", key, enrollment, if_match, IndividualEnrollment.from_json)

    async def delete_enrollment(self, registration_id: str) -> None:
        await self.http.call("DELETE", f"/enrollments/{_seg(registration_id)}")

    async def get_group(self, group_id: str) -> EnrollmentGroup | None:
        return await self._get_record("/enrollmentGroups", group_id, EnrollmentGroup.from_json)

    async def list_groups(self) -> list[EnrollmentGroup]:
        return await self._list_records("/enrollmentGroups", EnrollmentGroup.from_json)

    async def put_group(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup:
        key = group.enrollment_group_id
        return await self._put_record("/enrollmentGroups", key, group, if_match, EnrollmentGroup.from_json)

    async def delete_group(self, group_id: str) -> None:
        await self.http.call("DELETE", f"/enrollmentGroups/{_seg(group_id)}")

    # ------------------------------------------------------------------ linked hubs and settings

    async def list_hubs(self) -> list[LinkedHub]:
        doc, _ = await self.http.call("GET", "/linkedHubs")
        return [_hub_from_json(d) for d in doc]

    async def put_hub(self, hub: LinkedHub) -> LinkedHub:
        # The settings only: the serving lease and the implicit mark are the nodes' business.
        body = {
            k: v for k, v in hub.to_json().items() if k in ("allocationWeight", "applyAllocationPolicy", "location")
        }
        doc, _ = await self.http.call("PUT", f"/linkedHubs/{_seg(hub.host_name)}", body)
        return _hub_from_json(doc)

    async def update_hub(self, host_name: str, change: Callable[[LinkedHub], LinkedHub]) -> LinkedHub:
        # Two requests, GET then PUT: linked hubs carry no etag, so the last writer wins.
        doc = await self._get_or_none(f"/linkedHubs/{_seg(host_name)}")
        if doc is None:
            raise NotFound(f"hub {host_name} is not linked")
        return await self.put_hub(change(_hub_from_json(doc)))

    async def remove_hub(self, host_name: str) -> None:
        try:
            await self.http.call("DELETE", f"/linkedHubs/{_seg(host_name)}")
        except NotFound:
            raise NotFound(f"hub {host_name} is not linked") from None

    async def get_settings(self) -> ServiceSettings | None:
        doc = await self._get_or_none("/settings")
        return None if doc is None else ServiceSettings(str(doc["idScope"]), doc.get("allocationPolicy", "hashed"))

    async def put_settings(self, settings: ServiceSettings) -> ServiceSettings:
        body = {"idScope": settings.id_scope, "allocationPolicy": settings.default_allocation_policy}
        doc, _ = await self.http.call("PUT", "/settings", body)
        return ServiceSettings(str(doc["idScope"]), doc.get("allocationPolicy", "hashed"))

    # ------------------------------------------------------------------ registrations, refusals

    async def get_registration(self, registration_id: str) -> RegistrationView | None:
        doc = await self._get_or_none(f"/registrations/{_seg(registration_id)}")
        return None if doc is None else _view_from_json(doc)

    async def list_registrations(self, enrollment_group_id: str | None = None) -> list[RegistrationView]:
        path = f"/registrations/{_seg(enrollment_group_id)}/query" if enrollment_group_id else "/registrations/query"
        return [_view_from_json(d) for d in await self._all_pages("POST", path)]

    async def delete_registration(self, registration_id: str) -> None:
        await self.http.call("DELETE", f"/registrations/{_seg(registration_id)}")

    async def list_refusals(self, registration_id: str | None, limit: int) -> list[Refusal]:
        query = {"limit": str(min(limit, 1000))}
        if registration_id:
            query["registrationId"] = registration_id
        docs, _ = await self.http.call("GET", "/refusals", query=query)
        return [_refusal_from_json(d) for d in docs]

    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """GET /audit: the server writes the entries of what this client changes, naming the
        policy it signed with."""
        params = {"limit": str(min(query.limit, 1000))}
        for name, value in (("action", query.action), ("actor", query.actor), ("target", query.target)):
            if value is not None:
                params[name] = value
        if query.since is not None:
            params["since"] = format_time(query.since)
        if query.after is not None:
            params["after"] = str(query.after)
        docs, _ = await self.http.call("GET", "/audit", query=params)
        return [AuditEntry.from_json(d) for d in docs]

    # ------------------------------------------------------------------ explain

    async def explain(self, request: ExplainRequest) -> list[str]:
        body = {
            "registrationId": request.registration_id,
            "certificates": request.chain_pem,
            "symmetricKey": request.symmetric_key,
            "endorsementKey": request.endorsement_key,
        }
        doc, _ = await self.http.call("POST", "/explain", {k: v for k, v in body.items() if v})
        return [str(line) for line in doc["lines"]]
