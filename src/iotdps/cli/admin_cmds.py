"""Local administration of the provisioning service: CAs, enrollments, groups, hubs,
registrations, refusals and `explain`, all on the local data dir (or `--dsn`).

Every command runs on the local data dir, or with `--server URL` and credentials against a
running iotdps (cli.remote). Enrollments and groups are composed as the Azure service-API JSON
documents and parsed with the same `from_json` the management API uses, so the CLI cannot
write something the API would refuse. Symmetric keys print only with an explicit `--show-keys`.
Errors are one line, exit 2 (cli.main maps IotdpsError).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import click
from rich.console import Console
from rich.table import Table

from iotdps.allocation.hubs import LinkedHub
from iotdps.attestation.x509 import evidence_from_chain
from iotdps.cli.remote import RemoteService, run_target, target_options
from iotdps.enrollment.models import ALLOCATION_POLICIES, EnrollmentGroup, IndividualEnrollment, ProvisioningStatus
from iotdps.errors import AlreadyExists, InvalidInput, NotFound
from iotdps.evidence import SasCredential
from iotdps.jsonload import load_json
from iotdps.pki import certs
from iotdps.pki.encoding import load_certificates
from iotdps.ports import CaAdmin, Page, Refusal, Store, UnitOfWork
from iotdps.provisioning.admin import put_enrollment, put_group
from iotdps.provisioning.explain import explain_registration
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.provisioning.trust import trust_anchors
from iotdps.sas import make_sas_token
from iotdps.secret import Secret

__all__ = ["register"]

T = TypeVar("T")
M = TypeVar("M", IndividualEnrollment, EnrollmentGroup)
_REPROVISION = {
    "migrate": {"updateHubAssignment": True, "migrateDeviceData": True},
    "reset": {"updateHubAssignment": True, "migrateDeviceData": False},
    "never": {"updateHubAssignment": False, "migrateDeviceData": True},
}


# --------------------------------------------------------------------------- plumbing


def _run(fn: Callable[[CaAdmin, Store], Awaitable[T]]) -> T:
    """Run `fn` on the local store, or against `--server` (cli.remote speaks the management API)."""
    return run_target(fn)


# `--data-dir` / `--dsn`, or `--server` with credentials, on every leaf command.
_store_options = target_options


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc


def _device_certificate(path: str) -> str:
    """The device's own certificate from FILE. `create-device-cert` writes the device's chain
    (leaf first, then its CA certificates), and an enrollment takes exactly one certificate, so
    the leaf is sent and the rest named on stderr (the server refuses a chain outright)."""
    found = load_certificates(_read(path))
    if len(found) > 1:
        click.echo(
            f"note: {path} holds {len(found)} certificates; the enrollment takes the first, "
            f"{certs.describe(found[0])}, the device's own (its CA certificates are not enrolled)",
            err=True,
        )
    return certs.to_pem(found[0])


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    return load_json(text, what=what)  # InvalidJson, an InvalidInput: one `error:` line


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]], *, whole: tuple[str, ...] = ()) -> None:
    """A rich table; the `whole` columns (codes, times) are never cut or wrapped, the others
    share what width is left."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    table = Table(title=title)
    for index, column in enumerate(columns):
        if column in whole:
            width = max([len(column), *(len(row[index]) for row in cells)])
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


# --------------------------------------------------------------------------- shared enrollment options


def _settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--hub", "hubs", multiple=True, help="Linked hub host name (repeatable)."),
        click.option("--allocation-policy", type=click.Choice(ALLOCATION_POLICIES)),
        click.option("--reprovision-policy", type=click.Choice(sorted(_REPROVISION))),
        click.option("--initial-twin", help='JSON: {"tags": {...}, "properties": {"desired": {...}}}'),
        click.option("--iot-edge/--no-iot-edge", default=None),
        click.option("--webhook-url"),
        click.option("--webhook-api-version", default=None),
        click.option("--disabled", is_flag=True, default=False, help="Create disabled."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_device_id_option = click.option("--device-id")


def _apply_settings(doc: dict[str, Any], kw: dict[str, Any], *, creating: bool) -> None:
    # `--device-id` exists on enrollments only; a group's kw has no such key.
    if kw.get("device_id"):
        doc["deviceId"] = kw["device_id"]
    if kw.get("hubs"):
        doc["iotHubs"] = list(kw["hubs"])
    if kw.get("allocation_policy"):
        doc["allocationPolicy"] = kw["allocation_policy"]
    if kw.get("reprovision_policy"):
        doc["reprovisionPolicy"] = _REPROVISION[kw["reprovision_policy"]]
    if kw.get("initial_twin") is not None:
        doc["initialTwin"] = _json_arg(kw["initial_twin"], "--initial-twin")
    if kw.get("iot_edge") is not None:
        doc["capabilities"] = {"iotEdge": kw["iot_edge"]}
    if kw.get("webhook_url"):
        doc["customAllocationDefinition"] = {
            "webhookUrl": kw["webhook_url"],
            "apiVersion": kw.get("webhook_api_version") or "2021-10-01",
        }
    if creating and kw.get("disabled"):
        doc["provisioningStatus"] = "disabled"


def _symmetric_key_doc(primary: str | None, secondary: str | None) -> dict[str, Any]:
    keys = {k: v for k, v in (("primaryKey", primary), ("secondaryKey", secondary)) if v}
    return {"type": "symmetricKey", "symmetricKey": keys}


# --------------------------------------------------------------------------- ca


@click.group("ca")
def ca_group() -> None:
    """CA certificates: upload, proof of possession, list."""


@ca_group.command("upload")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--verified", is_flag=True, help="Trust without proof of possession (self-attested).")
@_store_options
def ca_upload(name: str, file: str, verified: bool) -> None:
    """Upload the CA certificate FILE (PEM or DER) as NAME."""
    ca = _run(lambda svc, _: svc.upload_ca(name, _read(file) if _is_text(file) else _read_der(file), verified))
    click.echo(f"CA {ca.name}: {ca.info.get('subjectName')} sha256 {ca.sha256_thumbprint} verified={ca.is_verified}")


def _is_text(path: str) -> bool:
    return b"-----BEGIN" in Path(path).read_bytes()[:4096]


def _read_der(path: str) -> str:
    import base64

    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


@ca_group.command("verification-code")
@click.argument("name")
@_store_options
def ca_verification_code(name: str) -> None:
    """Generate a proof-of-possession code: issue a certificate with CN=code signed by the CA."""
    code, ca = _run(lambda svc, _: svc.generate_verification_code(name))
    click.echo(code)
    click.echo(f"expires {ca.verification_code_expires:%Y-%m-%d %H:%M:%SZ}; single use", err=True)


@ca_group.command("verify")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_store_options
def ca_verify(name: str, file: str) -> None:
    """Verify CA NAME with the verification certificate FILE."""
    ca = _run(lambda svc, _: svc.verify_ca(name, _read(file) if _is_text(file) else _read_der(file)))
    click.echo(f"CA {ca.name} verified")


@ca_group.command("list")
@_store_options
def ca_list() -> None:
    async def go(svc: CaAdmin, store: Store) -> list[Any]:
        async with store.begin() as uow:
            return list(await uow.cas.list())

    rows = [[c.name, c.info.get("subjectName"), c.sha256_thumbprint[:16] + "...", c.is_verified] for c in _run(go)]
    _table("CA certificates", ["name", "subject", "sha256", "verified"], rows)


@ca_group.command("show")
@click.argument("name")
@_store_options
def ca_show(name: str) -> None:
    async def go(svc: CaAdmin, store: Store) -> Any:
        async with store.begin() as uow:
            ca = await uow.cas.get(name)
        if ca is None:
            raise NotFound(f"CA certificate {name} not found")
        return ca.to_json()

    _echo_json(_run(go))


@ca_group.command("delete")
@click.argument("name")
@_store_options
def ca_delete(name: str) -> None:
    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            await uow.cas.delete(name)

    _run(go)
    click.echo(f"CA {name} deleted")


# --------------------------------------------------------------------------- enrollments and groups
#
# Individual enrollments and enrollment groups are managed the same way: only the key, the
# repository, the write path (provisioning.admin checks differ) and the attestation options of
# `create` differ. One `_Family` names those differences; `_family_commands` adds the commands
# both share (show, list, update, disable, enable, delete), so a fix to one reaches the other.


class _Repo(Protocol[M]):
    """What the shared commands use of EnrollmentRepo and GroupRepo (positional keys)."""

    async def get(self, key: str, /) -> M | None: ...
    async def delete(self, key: str, /) -> None: ...
    async def list(self, page_size: int = ..., continuation: str | None = ..., /) -> Page[M]: ...


@dataclass(frozen=True, slots=True)
class _Family(Generic[M]):
    noun: str  # first word of every message: "enrollment", "group"
    key: str  # the click argument holding the id: "registration_id", "group_id"
    repo: Callable[[UnitOfWork], _Repo[M]]
    put: Callable[[Store, M, str | None], Awaitable[M]]
    parse: Callable[[dict[str, Any]], M]
    ident: Callable[[M], str]
    with_status: Callable[[M, ProvisioningStatus], M]

    async def get(self, store: Store, key: str) -> M:
        async with store.begin() as uow:
            found = await self.repo(uow).get(key)
        if found is None:
            raise NotFound(f"{self.noun} {key} not found")
        return found

    def create(self, key: str, doc: dict[str, Any], kw: dict[str, Any]) -> None:
        """Parse `doc` (id and attestation already set) with the settings options and write it."""
        _apply_settings(doc, kw, creating=True)
        record = self.parse(doc)

        async def go(svc: CaAdmin, store: Store) -> M:
            async with store.begin() as uow:
                if await self.repo(uow).get(key) is not None:
                    raise AlreadyExists(f"{self.noun} {key} exists; use update")
            return await self.put(store, record, None)

        saved = _run(go)
        click.echo(
            f"{self.noun} {self.ident(saved)} created ({saved.attestation.type}, {saved.settings.provisioning_status})"
        )


async def _all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a paged listing (bounded: at most 100,000 pages)."""
    out: list[T] = []
    token: str | None = None
    for _ in range(100_000):
        page = await fetch(token)
        out.extend(page.items)
        token = page.continuation
        if token is None:
            break
    return out


def _family_commands(
    group: click.Group,
    family: _Family[M],
    *,
    update_options: Callable[[Callable[..., Any]], Callable[..., Any]],
    table: tuple[str, list[str], Callable[[M], list[Any]]],
) -> None:
    """Add show, list, update, disable, enable and delete for `family` to `group`.

    The commands carry no docstring (click would show it as help): as before the fold, their
    help is the option list alone.
    """
    argument = click.argument(family.key)

    @group.command("show")
    @argument
    @click.option("--show-keys", is_flag=True, help="Include symmetric keys in the output.")
    @click.option(
        "--primary-key", "primary_only", is_flag=True, help="Print only the primary symmetric key (for a key file)."
    )
    @_store_options
    def show(show_keys: bool, primary_only: bool, **kw: Any) -> None:
        found = _run(lambda _, store: family.get(store, kw[family.key]))
        if primary_only:
            keys = found.attestation.symmetric_key
            if keys is None:
                raise InvalidInput(f"{kw[family.key]} does not use symmetric-key attestation")
            click.echo(keys.primary_key.reveal())
            return
        _echo_json(found.to_json(include_keys=show_keys))

    @group.command("list")
    @_store_options
    def list_() -> None:
        async def go(svc: CaAdmin, store: Store) -> list[M]:
            async with store.begin() as uow:
                repo = family.repo(uow)
                return await _all_pages(lambda token: repo.list(500, token))

        title, columns, row = table
        _table(title, columns, [row(r) for r in _run(go)])

    @group.command("update")
    @argument
    @update_options
    @_store_options
    def update(**kw: Any) -> None:
        key = kw[family.key]

        async def go(svc: CaAdmin, store: Store) -> M:
            current = await family.get(store, key)
            doc = current.to_json(include_keys=True)
            _apply_settings(doc, kw, creating=False)
            return await family.put(store, family.parse(doc), current.etag)

        saved = _run(go)
        click.echo(f"{family.noun} {family.ident(saved)} updated")

    def set_status(key: str, status: ProvisioningStatus) -> None:
        async def go(svc: CaAdmin, store: Store) -> None:
            current = await family.get(store, key)
            await family.put(store, family.with_status(current, status), current.etag)

        _run(go)
        click.echo(f"{family.noun} {key} {status}")

    @group.command("disable")
    @argument
    @_store_options
    def disable(**kw: Any) -> None:
        set_status(kw[family.key], "disabled")

    @group.command("enable")
    @argument
    @_store_options
    def enable(**kw: Any) -> None:
        set_status(kw[family.key], "enabled")

    @group.command("delete")
    @argument
    @_store_options
    def delete(**kw: Any) -> None:
        key = kw[family.key]

        async def go(svc: CaAdmin, store: Store) -> None:
            async with store.begin() as uow:
                await family.repo(uow).delete(key)

        _run(go)
        click.echo(f"{family.noun} {key} deleted")


_ENROLLMENTS: _Family[IndividualEnrollment] = _Family(
    noun="enrollment",
    key="registration_id",
    repo=lambda uow: uow.enrollments,
    put=put_enrollment,
    parse=IndividualEnrollment.from_json,
    ident=lambda e: e.registration_id,
    with_status=IndividualEnrollment.with_status,
)
_GROUPS: _Family[EnrollmentGroup] = _Family(
    noun="group",
    key="group_id",
    repo=lambda uow: uow.groups,
    put=put_group,
    parse=EnrollmentGroup.from_json,
    ident=lambda g: g.enrollment_group_id,
    with_status=EnrollmentGroup.with_status,
)


@click.group("enrollment")
def enrollment_group() -> None:
    """Individual enrollments."""


@enrollment_group.command("create")
@click.argument("registration_id")
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False),
    help="X.509: the device certificate (of a chain file, the first certificate).",
)
@click.option("--secondary-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--symmetric-key", is_flag=True, help="Symmetric-key attestation (keys generated unless given).")
@click.option("--primary-key")
@click.option("--secondary-key")
@_device_id_option
@_settings_options
@_store_options
def enrollment_create(registration_id: str, **kw: Any) -> None:
    if bool(kw["cert"]) == bool(kw["symmetric_key"]):
        raise InvalidInput("give exactly one of --cert FILE or --symmetric-key")
    if kw["cert"]:
        slots: dict[str, Any] = {"primary": {"certificate": _device_certificate(kw["cert"])}}
        if kw["secondary_cert"]:
            slots["secondary"] = {"certificate": _device_certificate(kw["secondary_cert"])}
        attestation: dict[str, Any] = {"type": "x509", "x509": {"clientCertificates": slots}}
    else:
        attestation = _symmetric_key_doc(kw["primary_key"], kw["secondary_key"])
    _ENROLLMENTS.create(registration_id, {"registrationId": registration_id, "attestation": attestation}, kw)


def _enrollment_row(e: IndividualEnrollment) -> list[Any]:
    return [
        e.registration_id,
        e.attestation.type,
        e.settings.provisioning_status,
        e.device_id,
        ",".join(e.settings.iot_hubs),
    ]


_family_commands(
    enrollment_group,
    _ENROLLMENTS,
    update_options=lambda f: _device_id_option(_settings_options(f)),
    table=(
        "Individual enrollments",
        ["registration id", "attestation", "status", "device id", "hubs"],
        _enrollment_row,
    ),
)


@click.group("group")
def group_group() -> None:
    """Enrollment groups."""


@group_group.command("create")
@click.argument("group_id")
@click.option("--ca-ref", help="X.509: name of an uploaded CA certificate.")
@click.option("--signing-cert", type=click.Path(exists=True, dir_okay=False), help="X.509: a CA certificate file.")
@click.option("--symmetric-key", is_flag=True, help="Symmetric-key group (keys generated unless given).")
@click.option("--primary-key")
@click.option("--secondary-key")
@_settings_options
@_store_options
def group_create(group_id: str, **kw: Any) -> None:
    chosen = [bool(kw["ca_ref"]), bool(kw["signing_cert"]), bool(kw["symmetric_key"])]
    if sum(chosen) != 1:
        raise InvalidInput("give exactly one of --ca-ref NAME, --signing-cert FILE or --symmetric-key")
    if kw["ca_ref"]:
        attestation: dict[str, Any] = {"type": "x509", "x509": {"caReferences": {"primary": kw["ca_ref"]}}}
    elif kw["signing_cert"]:
        slot = {"primary": {"certificate": _read(kw["signing_cert"])}}
        attestation = {"type": "x509", "x509": {"signingCertificates": slot}}
    else:
        attestation = _symmetric_key_doc(kw["primary_key"], kw["secondary_key"])
    _GROUPS.create(group_id, {"enrollmentGroupId": group_id, "attestation": attestation}, kw)


def _group_row(g: EnrollmentGroup) -> list[Any]:
    trust = ""
    if g.attestation.x509 is not None:
        refs = [f"ca:{r}" for r in g.attestation.x509.ca_references if r]
        signing = [f"cert:{s.info.get('subjectName')}" for s in g.attestation.x509.signing_certificates if s]
        trust = ", ".join(refs + signing)
    return [g.enrollment_group_id, g.attestation.type, g.settings.provisioning_status, trust]


_family_commands(
    group_group,
    _GROUPS,
    update_options=_settings_options,
    table=("Enrollment groups", ["group id", "attestation", "status", "trust"], _group_row),
)


# --------------------------------------------------------------------------- hubs and settings


@click.group("hub")
def hub_group() -> None:
    """Linked IoT hubs."""


@hub_group.command("add")
@click.argument("host_name")
@click.option("--weight", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--apply-allocation-policy/--no-apply-allocation-policy", default=True)
@click.option("--location")
@_store_options
def hub_add(host_name: str, weight: int, apply_allocation_policy: bool, location: str | None) -> None:
    hub = LinkedHub(host_name, weight, apply_allocation_policy, location)

    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            await uow.hubs.put(hub)

    _run(go)
    click.echo(f"hub {host_name} linked (weight {weight})")


@hub_group.command("update")
@click.argument("host_name")
@click.option("--weight", type=click.IntRange(1, 1000))
@click.option("--apply-allocation-policy/--no-apply-allocation-policy", default=None)
@click.option("--location")
@_store_options
def hub_update(host_name: str, weight: int | None, apply_allocation_policy: bool | None, location: str | None) -> None:
    from dataclasses import replace

    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            hub = await uow.hubs.get(host_name)
            if hub is None:
                raise NotFound(f"hub {host_name} is not linked")
            changes: dict[str, Any] = {}
            if weight is not None:
                changes["allocation_weight"] = weight
            if apply_allocation_policy is not None:
                changes["apply_allocation_policy"] = apply_allocation_policy
            if location is not None:
                changes["location"] = location
            await uow.hubs.put(replace(hub, **changes))

    _run(go)
    click.echo(f"hub {host_name} updated")


@hub_group.command("remove")
@click.argument("host_name")
@_store_options
def hub_remove(host_name: str) -> None:
    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            if await uow.hubs.get(host_name) is None:
                raise NotFound(f"hub {host_name} is not linked")
            await uow.hubs.delete(host_name)

    _run(go)
    click.echo(f"hub {host_name} removed")


@hub_group.command("list")
@_store_options
def hub_list() -> None:
    async def go(svc: CaAdmin, store: Store) -> list[LinkedHub]:
        async with store.begin() as uow:
            return list(await uow.hubs.list())

    rows = [[h.host_name, h.allocation_weight, h.apply_allocation_policy, h.location] for h in _run(go)]
    _table("Linked hubs", ["host name", "weight", "apply allocation policy", "location"], rows)


@click.group("settings")
def settings_group() -> None:
    """Service settings: ID scope and default allocation policy."""


@settings_group.command("set")
@click.option("--id-scope", required=True)
@click.option("--default-allocation-policy", type=click.Choice(["hashed", "geoLatency", "static"]), default="hashed")
@_store_options
def settings_set(id_scope: str, default_allocation_policy: str) -> None:
    settings = ServiceSettings(id_scope, default_allocation_policy)  # type: ignore[arg-type]

    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            await uow.settings.put(settings)

    _run(go)
    click.echo(f"ID scope {id_scope}, default allocation {default_allocation_policy}")


@settings_group.command("show")
@_store_options
def settings_show() -> None:
    async def go(svc: CaAdmin, store: Store) -> ServiceSettings | None:
        async with store.begin() as uow:
            return await uow.settings.get()

    found = _run(go)
    if found is None:
        raise NotFound("no service settings yet; run `iotdps settings set --id-scope ...`")
    _echo_json({"idScope": found.id_scope, "allocationPolicy": found.default_allocation_policy})


# --------------------------------------------------------------------------- registrations, refusals, explain


@click.group("registration")
def registration_group() -> None:
    """Registration records."""


@registration_group.command("show")
@click.argument("registration_id")
@_store_options
def registration_show(registration_id: str) -> None:
    async def go(svc: CaAdmin, store: Store) -> dict[str, Any]:
        async with store.begin() as uow:
            record = await uow.registrations.get(registration_id)
        if record is None:
            raise NotFound(f"registration {registration_id} not found")
        return record.to_json()

    _echo_json(_run(go))


@registration_group.command("list")
@click.option("--group", "group_id", help="Only devices of this enrollment group.")
@_store_options
def registration_list(group_id: str | None) -> None:
    async def go(svc: CaAdmin, store: Store) -> list[Any]:
        async with store.begin() as uow:
            return await _all_pages(lambda token: uow.registrations.list(500, token, enrollment_group_id=group_id))

    rows = [
        [r.registration_id, r.status, r.substatus, r.assigned_hub, r.device_id, r.enrollment_group_id, r.error_code]
        for r in _run(go)
    ]
    _table("Registrations", ["registration id", "status", "substatus", "hub", "device id", "group", "error"], rows)


@registration_group.command("delete")
@click.argument("registration_id")
@_store_options
def registration_delete(registration_id: str) -> None:
    """Delete the record: the device's next registration is an initial assignment. The device
    identity on the hub is left alone (as on Azure)."""

    async def go(svc: CaAdmin, store: Store) -> None:
        async with store.begin() as uow:
            await uow.registrations.delete(registration_id)

    _run(go)
    click.echo(f"registration {registration_id} deleted")


@click.command("refusals")
@click.option("--registration-id")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@_store_options
def refusals_cmd(registration_id: str | None, limit: int) -> None:
    """Recent refused registrations, latest first, with the reason in words. Repeated attempts
    (same reason, registration id and peer address) are one line with their count and the
    first and latest time."""

    async def go(svc: CaAdmin, store: Store) -> list[Any]:
        async with store.begin() as uow:
            return list(await uow.refusals.list(registration_id, limit))

    def why(r: Refusal) -> str:
        words = r.message + (f" (enrollment {r.enrollment})" if r.enrollment else "")
        return words + (f"; first at {r.first_seen:%Y-%m-%d %H:%M:%S}" if r.count > 1 else "")

    rows = [[f"{r.at:%Y-%m-%d %H:%M:%S}", str(r.count), r.registration_id, r.peer, r.reason, why(r)] for r in _run(go)]
    _table(
        "Refusals",
        ["last (UTC)", "count", "registration id", "peer", "reason", "why"],
        rows,
        whole=("last (UTC)", "count", "reason"),
    )


@click.command("explain")
@click.option("--cert", "bundle", type=click.Path(exists=True, dir_okay=False), help="Device chain, leaf first.")
@click.option("--registration-id", help="Default for --cert: the leaf's CN.")
@click.option("--symmetric-key", help="The device's key (individual or group-derived).")
@_store_options
def explain_cmd(bundle: str | None, registration_id: str | None, symmetric_key: str | None) -> None:
    """Show the precedence walk and the decision for a device, without registering it."""
    if bool(bundle) == bool(symmetric_key):
        raise InvalidInput("give --cert BUNDLE, or --registration-id ID --symmetric-key KEY")

    async def remote(svc: RemoteService) -> list[str]:
        if bundle:
            body = {"certificates": _read(bundle), "registrationId": registration_id}
        else:
            body = {"registrationId": registration_id, "symmetricKey": symmetric_key}
        return await svc.explain_remote({k: v for k, v in body.items() if v})

    async def go(svc: CaAdmin, store: Store) -> list[str]:
        if isinstance(svc, RemoteService):
            return await remote(svc)
        service = ProvisioningService(store)
        if bundle:
            chain = load_certificates(_read(bundle))
            rid = registration_id or certs.common_name(chain[0]) or ""
            evidence = evidence_from_chain(chain, await trust_anchors(store), service.clock.now())
            lines = [f"registration id: {rid}"]
            if evidence.verified is None:
                lines.append(f"chain: not trusted by the TLS layer ({'; '.join(evidence.errors)})")
            else:
                lines.append("chain: " + " -> ".join(certs.describe(c) for c in evidence.verified))
            return lines + await explain_registration(service, rid, evidence)
        if not registration_id or not symmetric_key:
            raise InvalidInput("--symmetric-key needs --registration-id")
        async with store.begin() as uow:
            settings = await uow.settings.get()
        if settings is None:
            raise NotFound("no service settings yet; run `iotdps settings set --id-scope ...`")
        expiry = int(service.clock.now().timestamp()) + 300
        try:
            token = make_sas_token(settings.id_scope, registration_id, symmetric_key, expiry)
        except ValueError as exc:
            raise InvalidInput("--symmetric-key is not base64") from exc
        return [
            f"registration id: {registration_id}",
            *await explain_registration(service, registration_id, SasCredential(Secret(token))),
        ]

    for line in _run(go):
        click.echo(line)


def register(group: click.Group) -> None:
    for command in (
        ca_group,
        enrollment_group,
        group_group,
        hub_group,
        settings_group,
        registration_group,
        refusals_cmd,
        explain_cmd,
    ):
        group.add_command(command)
