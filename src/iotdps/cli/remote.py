"""Administration commands against a running iotdps, or on the local data dir.

Every administration command takes the same target options:
    --data-dir DIR / --dsn DSN            the local store (the default)
    --server URL                          a running iotdps's management API instead, with
    --connection-string CS                `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`
    --policy NAME --key KEY               (or these two), and
    --server-ca FILE                      the CA that signed the server's certificate.
Environment: IOTDPS_SERVER, IOTDPS_CONNECTION_STRING, IOTDPS_POLICY, IOTDPS_KEY,
IOTDPS_SERVER_CA. A connection string alone is enough: its HostName is the server.

`run_target(fn)` hands `fn` the CA administration (`iotdps.ports.CaAdmin`) and a store. Locally
they are the real ones; against a server they are `RemoteService` / `RemoteStore`, which speak
the management API: the commands are written once. A remote "transaction" is not atomic (each call is one
HTTP request); etags (If-Match) keep read-modify-write safe instead.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

import aiohttp
import click

from iotdps.access import make_service_sas
from iotdps.allocation.hubs import LinkedHub
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
from iotdps.pki.encoding import certificate_info, load_certificate, sha256_thumbprint
from iotdps.ports import CaAdmin, Page, Refusal, Store, UnitOfWork
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.registry.models import DeviceIdentity
from iotdps.secret import Secret
from iotdps.timestamps import parse_time

__all__ = [
    "RemoteService",
    "RemoteStore",
    "ServerTarget",
    "enroll_signing_group",
    "open_target",
    "prove_possession",
    "run_target",
    "store_options",
    "target_options",
]

T = TypeVar("T")
_TIMEOUT = 30.0
_PAGE = 500
_MAX_PAGES = 100_000


# --------------------------------------------------------------------------- options


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option's value on the root context, where the commands' helpers look for it."""
    root = ctx.find_root()
    root.obj = root.obj or {}
    if value is not None:
        root.obj[str(param.name)] = value
    return value


_Options = list[tuple[str, dict[str, Any]]]

_STORE_OPTIONS: _Options = [
    (
        "--data-dir",
        {
            "envvar": "IOTDPS_DATA_DIR",
            "type": click.Path(file_okay=False),
            "help": "Data directory (default: the per-user data dir).",
        },
    ),
    ("--dsn", {"envvar": "IOTDPS_DSN", "help": "Store DSN (secret: not echoed)."}),
]


def _with_options(f: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    for name, kw in reversed(options):
        f = click.option(name, expose_value=False, callback=_remember, **kw)(f)
    return f


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--data-dir` / `--dsn` only, remembered on the root context (not passed to `f`)."""
    return _with_options(f, _STORE_OPTIONS)


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The local-store and server options, remembered on the root context (not passed to `f`)."""
    options: _Options = [
        *_STORE_OPTIONS,
        ("--server", {"envvar": "IOTDPS_SERVER", "help": "Management API URL of a running iotdps."}),
        (
            "--connection-string",
            {
                "envvar": "IOTDPS_CONNECTION_STRING",
                "help": "HostName=..;SharedAccessKeyName=..;SharedAccessKey=.. (secret).",
            },
        ),
        ("--policy", {"envvar": "IOTDPS_POLICY", "help": "Shared access policy name (with --key)."}),
        ("--key", {"envvar": "IOTDPS_KEY", "help": "Shared access policy key (secret)."}),
        (
            "--server-ca",
            {
                "envvar": "IOTDPS_SERVER_CA",
                "type": click.Path(dir_okay=False, exists=True),
                "help": "CA certificate that signed the server's certificate.",
            },
        ),
    ]
    return _with_options(f, options)


@dataclass(frozen=True)
class ServerTarget:
    url: str
    policy: str
    key: Secret[str]
    ca_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def _parse_connection_string(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput("the connection string is not Name=Value;Name=Value")
        out[name.strip().lower()] = value.strip()
    return out


def server_target(params: Mapping[str, Any]) -> ServerTarget | None:
    """The server the options name, or None for the local store."""
    url, cs = params.get("server"), params.get("connection_string")
    policy, key = params.get("policy"), params.get("key")
    if cs:
        parsed = _parse_connection_string(str(cs))
        missing = [k for k in ("hostname", "sharedaccesskeyname", "sharedaccesskey") if not parsed.get(k)]
        if missing:
            raise InvalidInput(f"the connection string lacks {', '.join(missing)}")
        url = url or parsed["hostname"]
        policy, key = parsed["sharedaccesskeyname"], parsed["sharedaccesskey"]
    if not url:
        if policy or key:
            raise InvalidInput("--policy/--key need --server URL")
        return None
    if not policy or not key:
        raise InvalidInput("--server needs --connection-string, or --policy and --key")
    text = str(url).rstrip("/")
    if "://" not in text:
        text = "https://" + text
    if not text.startswith("https://"):
        raise InvalidInput("--server must be an https:// URL")
    ca = params.get("server_ca")
    return ServerTarget(text, str(policy), Secret(str(key)), str(ca) if ca else None)


# --------------------------------------------------------------------------- HTTP


_ERRORS: dict[int, type[IotdpsError]] = {
    400: InvalidInput,
    401: Unauthorized,
    404: NotFound,
    409: AlreadyExists,
    412: PreconditionFailed,
}


class _Http:
    def __init__(self, target: ServerTarget) -> None:
        self.target = target
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
    ) -> tuple[Any, Mapping[str, str]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT))
        token = make_service_sas(self.target.host, self.target.policy, self.target.key.reveal())
        sent = {"Authorization": token, **(headers or {})}
        if if_match:
            sent["If-Match"] = f'"{if_match}"'
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            sent["Content-Type"] = "application/json"
        url = f"{self.target.url}{path}"
        params = {"api-version": "2021-10-01", **(query or {})}
        try:
            async with self._session.request(
                method, url, params=params, data=data, headers=sent, ssl=self._ssl
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
    )


def _hub_from_json(doc: Mapping[str, Any]) -> LinkedHub:
    return LinkedHub(
        str(doc["name"]),
        int(doc.get("allocationWeight") or 1),
        doc.get("applyAllocationPolicy") is not False,
        doc.get("location"),
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
        etag=doc.get("etag"),
    )
    return cast(RegistrationRecord, _stamped(record, doc))


def _unsupported(what: str) -> IotdpsError:
    return InvalidInput(f"{what} is not available against a server")


# --------------------------------------------------------------------------- repositories


class _Enrollments:
    base = "/enrollments"
    item_type = "enrollment"

    def __init__(self, http: _Http) -> None:
        self.http = http

    def _parse(self, doc: Mapping[str, Any]) -> Any:
        return _stamped(IndividualEnrollment.from_json(doc), doc)

    async def _full(self, doc: dict[str, Any], key: str) -> Any:
        # GET answers carry no keys; fetch them so a record written back keeps its keys.
        if doc.get("attestation", {}).get("type") == "symmetricKey":
            att, _ = await self.http.call("POST", f"{self.base}/{_seg(key)}/attestationmechanism")
            doc = {**doc, "attestation": att}
        return self._parse(doc)

    async def get(self, key: str) -> Any:
        try:
            doc, _ = await self.http.call("GET", f"{self.base}/{_seg(key)}")
        except NotFound:
            return None
        return await self._full(doc, key)

    async def put(self, record: Any, if_match: str | None = None) -> Any:
        key = getattr(record, "registration_id", None) or record.enrollment_group_id
        doc, _ = await self.http.call(
            "PUT", f"{self.base}/{_seg(key)}", record.to_json(include_keys=True), if_match=if_match
        )
        return await self._full(doc, key)

    async def delete(self, key: str, if_match: str | None = None) -> None:
        await self.http.call("DELETE", f"{self.base}/{_seg(key)}", if_match=if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[Any]:
        headers = {"x-ms-max-item-count": str(page_size)}
        if continuation:
            headers["x-ms-continuation"] = continuation
        docs, got = await self.http.call("POST", f"{self.base}/query", {"query": "SELECT *"}, headers=headers)
        return Page([self._parse(d) for d in docs], got.get("x-ms-continuation") or None)

    async def list_x509(self) -> Sequence[Any]:
        raise _unsupported("listing X.509 enrollments")


class _Groups(_Enrollments):
    base = "/enrollmentGroups"
    item_type = "enrollmentGroup"

    def _parse(self, doc: Mapping[str, Any]) -> Any:
        return _stamped(EnrollmentGroup.from_json(doc), doc)

    async def find_by_signing_thumbprint(self, sha256_thumbprint: str) -> Sequence[EnrollmentGroup]:
        raise _unsupported("group lookup by thumbprint")

    async def find_by_ca_reference(self, ca_name: str) -> Sequence[EnrollmentGroup]:
        raise _unsupported("group lookup by CA reference")

    async def list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        raise _unsupported("listing symmetric-key groups")


class _Cas:
    def __init__(self, http: _Http) -> None:
        self.http = http

    async def get(self, name: str) -> CaCertificate | None:
        try:
            doc, _ = await self.http.call("GET", f"/certificates/{_seg(name)}")
        except NotFound:
            return None
        return _ca_from_json(doc)

    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None:
        return next((c for c in await self.list() if c.sha256_thumbprint == sha256_thumbprint.upper()), None)

    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate:
        doc, _ = await self.http.call(
            "PUT",
            f"/certificates/{_seg(ca.name)}",
            {"certificate": ca.certificate, "isVerified": ca.is_verified},
            if_match=if_match,
        )
        return _ca_from_json(doc)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        await self.http.call("DELETE", f"/certificates/{_seg(name)}", if_match=if_match)

    async def list(self) -> Sequence[CaCertificate]:
        doc, _ = await self.http.call("GET", "/certificates")
        return [_ca_from_json(d) for d in doc["value"]]


class _Hubs:
    def __init__(self, http: _Http) -> None:
        self.http = http

    async def get(self, host_name: str) -> LinkedHub | None:
        try:
            doc, _ = await self.http.call("GET", f"/linkedHubs/{_seg(host_name)}")
        except NotFound:
            return None
        return _hub_from_json(doc)

    async def put(self, hub: LinkedHub) -> LinkedHub:
        body = {k: v for k, v in hub.to_json().items() if k != "name"}
        doc, _ = await self.http.call("PUT", f"/linkedHubs/{_seg(hub.host_name)}", body)
        return _hub_from_json(doc)

    async def delete(self, host_name: str) -> None:
        await self.http.call("DELETE", f"/linkedHubs/{_seg(host_name)}")

    async def list(self) -> Sequence[LinkedHub]:
        doc, _ = await self.http.call("GET", "/linkedHubs")
        return [_hub_from_json(d) for d in doc]


class _Settings:
    def __init__(self, http: _Http) -> None:
        self.http = http

    async def get(self) -> ServiceSettings | None:
        try:
            doc, _ = await self.http.call("GET", "/settings")
        except NotFound:
            return None
        return ServiceSettings(str(doc["idScope"]), doc.get("allocationPolicy", "hashed"))

    async def put(self, settings: ServiceSettings) -> ServiceSettings:
        body = {"idScope": settings.id_scope, "allocationPolicy": settings.default_allocation_policy}
        doc, _ = await self.http.call("PUT", "/settings", body)
        return ServiceSettings(str(doc["idScope"]), doc.get("allocationPolicy", "hashed"))


class _Registrations:
    def __init__(self, http: _Http) -> None:
        self.http = http

    async def get(self, registration_id: str, *, for_update: bool = False) -> RegistrationRecord | None:
        try:
            doc, _ = await self.http.call("GET", f"/registrations/{_seg(registration_id)}")
        except NotFound:
            return None
        return _registration_from_json(doc)

    async def put(self, record: RegistrationRecord, if_match: str | None = None) -> RegistrationRecord:
        raise _unsupported("writing a registration record")

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        await self.http.call("DELETE", f"/registrations/{_seg(registration_id)}", if_match=if_match)

    async def list(
        self, page_size: int = 100, continuation: str | None = None, *, enrollment_group_id: str | None = None
    ) -> Page[RegistrationRecord]:
        headers = {"x-ms-max-item-count": str(page_size)}
        if continuation:
            headers["x-ms-continuation"] = continuation
        path = f"/registrations/{_seg(enrollment_group_id)}/query" if enrollment_group_id else "/registrations/query"
        docs, got = await self.http.call("POST", path, headers=headers)
        return Page([_registration_from_json(d) for d in docs], got.get("x-ms-continuation") or None)


class _Devices:
    async def get(self, hub: str, device_id: str, *, for_update: bool = False) -> DeviceIdentity | None:
        raise _unsupported("the hub device registry")

    async def put(self, device: DeviceIdentity, if_match: str | None = None) -> DeviceIdentity:
        raise _unsupported("the hub device registry")

    async def delete(self, hub: str, device_id: str, if_match: str | None = None) -> None:
        raise _unsupported("the hub device registry")

    async def list(self, hub: str, page_size: int = 100, continuation: str | None = None) -> Page[DeviceIdentity]:
        raise _unsupported("the hub device registry")


class _Refusals:
    def __init__(self, http: _Http) -> None:
        self.http = http

    async def add(self, refusal: Refusal) -> None:
        raise _unsupported("writing a refusal")

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        query = {"limit": str(min(limit, 1000))}
        if registration_id:
            query["registrationId"] = registration_id
        docs, _ = await self.http.call("GET", "/refusals", query=query)
        return [
            Refusal(
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
            for d in docs
        ]


class _RemoteUnitOfWork:
    def __init__(self, http: _Http) -> None:
        self.enrollments = _Enrollments(http)
        self.groups = _Groups(http)
        self.cas = _Cas(http)
        self.hubs = _Hubs(http)
        self.settings = _Settings(http)
        self.registrations = _Registrations(http)
        self.devices = _Devices()
        self.refusals = _Refusals(http)

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[T]]) -> T:
        return await compute()  # each read is a request to a server that may change under us


class RemoteStore:
    """The `Store` port over the management API (see the module docstring on atomicity)."""

    def __init__(self, target: ServerTarget) -> None:
        self.http = _Http(target)
        self._uow = _RemoteUnitOfWork(self.http)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[UnitOfWork]:
        yield cast(UnitOfWork, self._uow)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[UnitOfWork]:
        yield cast(UnitOfWork, self._uow)  # each call is its own request either way

    async def close(self) -> None:
        await self.http.close()


class RemoteService:
    """CA administration (`iotdps.ports.CaAdmin`) and explain, over the management API."""

    def __init__(self, store: RemoteStore) -> None:
        self.http = store.http
        self.store = store

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

    async def explain_remote(self, body: Mapping[str, Any]) -> list[str]:
        doc, _ = await self.http.call("POST", "/explain", dict(body))
        return [str(line) for line in doc["lines"]]


# --------------------------------------------------------------------------- running a command


def _local_dsn(params: Mapping[str, Any]) -> str:
    from iotdps.paths import default_data_dir, default_dsn

    if params.get("dsn"):
        return str(params["dsn"])
    data_dir = params.get("data_dir")
    return default_dsn(Path(data_dir) if data_dir else default_data_dir())


@asynccontextmanager
async def open_target(params: Mapping[str, Any]) -> AsyncIterator[tuple[CaAdmin, Store, bool]]:
    """(CA administration, store, remote?) for the options in `params` (the root context's obj)."""
    target = server_target(params)
    if target is not None:
        remote = RemoteStore(target)
        try:
            yield RemoteService(remote), cast(Store, remote), True
        finally:
            await remote.close()
        return
    from iotdps.store import open_store

    store = await open_store(_local_dsn(params))
    try:
        yield CaAdminService(store), store, False
    finally:
        await store.close()


def target_params() -> dict[str, Any]:
    ctx = click.get_current_context()
    return dict(ctx.find_root().obj or {})


def run_target(fn: Callable[[CaAdmin, Store], Awaitable[T]]) -> T:
    """Run `fn` with the CA administration and store the command's options name (local or server)."""
    params = target_params()

    async def go() -> T:
        async with open_target(params) as (svc, store, _):
            return await fn(svc, store)

    return asyncio.run(go())


async def prove_possession(
    svc: CaAdmin, store: Store, name: str, ca_pem: str, sign: Callable[[str], str]
) -> CaCertificate:
    """The whole proof of possession: upload the CA when it is missing or different, get a
    code, have `sign(code)` issue the verification certificate (PEM), verify. A CA already
    verified with the same certificate is left as it is."""
    wanted = sha256_thumbprint(load_certificate(ca_pem))
    async with store.begin() as uow:
        current = await uow.cas.get(name)
    if current is not None and current.sha256_thumbprint == wanted and current.is_verified:
        return current
    if current is None or current.sha256_thumbprint != wanted:
        current = await svc.upload_ca(name, ca_pem, False)
    code, current = await svc.generate_verification_code(name, current.etag)
    return await svc.verify_ca(name, sign(code), current.etag)


async def enroll_signing_group(store: Store, group_id: str, ca_pem: str, hubs: Sequence[str] = ()) -> EnrollmentGroup:
    """Create an X.509 enrollment group whose signing certificate is `ca_pem` (refused if the
    group exists: an existing group is changed with `iotdps group update`)."""
    from iotdps.provisioning.admin import put_group

    doc: dict[str, Any] = {
        "enrollmentGroupId": group_id,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca_pem}}}},
    }
    if hubs:
        doc["iotHubs"] = list(hubs)
    group = EnrollmentGroup.from_json(doc)
    async with store.begin() as uow:
        if await uow.groups.get(group_id) is not None:
            raise AlreadyExists(f"enrollment group {group_id} already exists")
    return await put_group(store, group)
