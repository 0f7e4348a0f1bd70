"""Individual enrollments and enrollment groups: `iotdps enrollment ...`, `iotdps group ...`.

Both are composed as the Azure service-API JSON documents and parsed with the same `from_json`
the management API uses, so the CLI cannot write something the API would refuse; they are
written through the `AdminClient` (cli.client), on the local data dir or with `--server`.
Symmetric keys print only with an explicit `--show-keys`. Errors are one line, exit 2
(cli.main maps IotdpsError).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import click

from iotdps.cli.client import AdminClient
from iotdps.cli.issuance_options import apply_issuance_options, issuance_options
from iotdps.cli.output import json_option
from iotdps.cli.output import listing as print_listing
from iotdps.cli.shared import echo_json, json_arg, read_text
from iotdps.cli.target import run_client, target_options
from iotdps.cli.tpm_keys import tpm_key_text
from iotdps.enrollment.models import ALLOCATION_POLICIES, EnrollmentGroup, IndividualEnrollment, ProvisioningStatus
from iotdps.errors import AlreadyExists, InvalidInput, NotFound
from iotdps.pki import certs
from iotdps.pki.encoding import load_certificates

__all__ = ["enrollment_group", "group_group", "register"]

M = TypeVar("M", IndividualEnrollment, EnrollmentGroup)
_REPROVISION = {
    "migrate": {"updateHubAssignment": True, "migrateDeviceData": True},
    "reset": {"updateHubAssignment": True, "migrateDeviceData": False},
    "never": {"updateHubAssignment": False, "migrateDeviceData": True},
}


def _device_certificate(path: str) -> str:
    """The device's own certificate from FILE. `create-device-cert` writes the device's chain
    (leaf first, then its CA certificates), and an enrollment takes exactly one certificate, so
    the leaf is sent and the rest named on stderr (the server refuses a chain outright)."""
    found = load_certificates(read_text(path))
    if len(found) > 1:
        click.echo(
            f"note: {path} holds {len(found)} certificates; the enrollment takes the first, "
            f"{certs.describe(found[0])}, the device's own (its CA certificates are not enrolled)",
            err=True,
        )
    return certs.to_pem(found[0])


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
        *issuance_options(),
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
        doc["initialTwin"] = json_arg(kw["initial_twin"], "--initial-twin")
    if kw.get("iot_edge") is not None:
        doc["capabilities"] = {"iotEdge": kw["iot_edge"]}
    if kw.get("webhook_url"):
        doc["customAllocationDefinition"] = {
            "webhookUrl": kw["webhook_url"],
            "apiVersion": kw.get("webhook_api_version") or "2021-10-01",
        }
    if creating and kw.get("disabled"):
        doc["provisioningStatus"] = "disabled"
    apply_issuance_options(doc, kw)


def _symmetric_key_doc(primary: str | None, secondary: str | None) -> dict[str, Any]:
    keys = {k: v for k, v in (("primaryKey", primary), ("secondaryKey", secondary)) if v}
    return {"type": "symmetricKey", "symmetricKey": keys}


# --------------------------------------------------------------------------- the two families
#
# Individual enrollments and enrollment groups are managed the same way: only the key, the
# client's calls (provisioning.admin's checks differ behind them) and the attestation options
# of `create` differ. One `_Family` names those differences; `_family_commands` adds the
# commands both share (show, list, update, disable, enable, delete), so a fix to one reaches
# the other.


@dataclass(frozen=True, slots=True)
class _Family(Generic[M]):
    noun: str  # first word of every message: "enrollment", "group"
    key: str  # the click argument holding the id: "registration_id", "group_id"
    fetch: Callable[[AdminClient, str], Awaitable[M | None]]
    list_all: Callable[[AdminClient], Awaitable[list[M]]]
    put: Callable[[AdminClient, M, str | None], Awaitable[M]]
    delete: Callable[[AdminClient, str], Awaitable[None]]
    parse: Callable[[dict[str, Any]], M]
    ident: Callable[[M], str]
    with_status: Callable[[M, ProvisioningStatus], M]

    async def get(self, client: AdminClient, key: str) -> M:
        found = await self.fetch(client, key)
        if found is None:
            raise NotFound(f"{self.noun} {key} not found")
        return found

    def create(self, key: str, doc: dict[str, Any], kw: dict[str, Any]) -> None:
        """Parse `doc` (id and attestation already set) with the settings options and write it."""
        _apply_settings(doc, kw, creating=True)
        record = self.parse(doc)

        async def go(client: AdminClient) -> M:
            if await self.fetch(client, key) is not None:
                raise AlreadyExists(f"{self.noun} {key} exists; use update")
            return await self.put(client, record, None)

        saved = run_client(go)
        click.echo(
            f"{self.noun} {self.ident(saved)} created ({saved.attestation.type}, {saved.settings.provisioning_status})"
        )


def _family_commands(
    group: click.Group,
    family: _Family[M],
    *,
    update_options: Callable[[Callable[..., Any]], Callable[..., Any]],
    listing: tuple[str, list[str], Callable[[M], list[Any]]],
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
    @json_option
    @target_options
    def show(show_keys: bool, primary_only: bool, **kw: Any) -> None:
        found = run_client(lambda client: family.get(client, kw[family.key]))
        if primary_only:
            keys = found.attestation.symmetric_key
            if keys is None:
                raise InvalidInput(f"{kw[family.key]} does not use symmetric-key attestation")
            click.echo(keys.primary_key.reveal())
            return
        echo_json(found.to_json(include_keys=show_keys))

    @group.command("list")
    @json_option
    @target_options
    def list_() -> None:
        title, columns, row = listing
        found = run_client(family.list_all)
        # Keys never in a list: `show --show-keys` is the one way to print them.
        print_listing(title, columns, [row(r) for r in found], [r.to_json(include_keys=False) for r in found])

    @group.command("update")
    @argument
    @update_options
    @target_options
    def update(**kw: Any) -> None:
        key = kw[family.key]

        async def go(client: AdminClient) -> M:
            current = await family.get(client, key)
            doc = current.to_json(include_keys=True)
            _apply_settings(doc, kw, creating=False)
            return await family.put(client, family.parse(doc), current.etag)

        saved = run_client(go)
        click.echo(f"{family.noun} {family.ident(saved)} updated")

    def set_status(key: str, status: ProvisioningStatus) -> None:
        async def go(client: AdminClient) -> None:
            current = await family.get(client, key)
            await family.put(client, family.with_status(current, status), current.etag)

        run_client(go)
        click.echo(f"{family.noun} {key} {status}")

    @group.command("disable")
    @argument
    @target_options
    def disable(**kw: Any) -> None:
        set_status(kw[family.key], "disabled")

    @group.command("enable")
    @argument
    @target_options
    def enable(**kw: Any) -> None:
        set_status(kw[family.key], "enabled")

    @group.command("delete")
    @argument
    @target_options
    def delete(**kw: Any) -> None:
        key = kw[family.key]
        run_client(lambda client: family.delete(client, key))
        click.echo(f"{family.noun} {key} deleted")


_ENROLLMENTS: _Family[IndividualEnrollment] = _Family(
    noun="enrollment",
    key="registration_id",
    fetch=lambda client, key: client.get_enrollment(key),
    list_all=lambda client: client.list_enrollments(),
    put=lambda client, record, if_match: client.put_enrollment(record, if_match),
    delete=lambda client, key: client.delete_enrollment(key),
    parse=IndividualEnrollment.from_json,
    ident=lambda e: e.registration_id,
    with_status=IndividualEnrollment.with_status,
)
_GROUPS: _Family[EnrollmentGroup] = _Family(
    noun="group",
    key="group_id",
    fetch=lambda client, key: client.get_group(key),
    list_all=lambda client: client.list_groups(),
    put=lambda client, record, if_match: client.put_group(record, if_match),
    delete=lambda client, key: client.delete_group(key),
    parse=EnrollmentGroup.from_json,
    ident=lambda g: g.enrollment_group_id,
    with_status=EnrollmentGroup.with_status,
)


# --------------------------------------------------------------------------- enrollment


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
@click.option("--endorsement-key", help="TPM: the EK (base64, or a file from tpm2_readpublic -o).")
@click.option("--storage-root-key", help="TPM: the SRK (optional; base64 or a file).")
@_device_id_option
@_settings_options
@target_options
def enrollment_create(registration_id: str, **kw: Any) -> None:
    if [bool(kw["cert"]), bool(kw["symmetric_key"]), bool(kw["endorsement_key"])].count(True) != 1:
        raise InvalidInput("give exactly one of --cert FILE, --symmetric-key or --endorsement-key EK")
    if kw["storage_root_key"] and not kw["endorsement_key"]:
        raise InvalidInput("--storage-root-key goes with --endorsement-key")
    if kw["endorsement_key"]:
        tpm = {"endorsementKey": tpm_key_text(kw["endorsement_key"], "--endorsement-key")}
        if kw["storage_root_key"]:
            tpm["storageRootKey"] = tpm_key_text(kw["storage_root_key"], "--storage-root-key")
        attestation: dict[str, Any] = {"type": "tpm", "tpm": tpm}
    elif kw["cert"]:
        slots: dict[str, Any] = {"primary": {"certificate": _device_certificate(kw["cert"])}}
        if kw["secondary_cert"]:
            slots["secondary"] = {"certificate": _device_certificate(kw["secondary_cert"])}
        attestation = {"type": "x509", "x509": {"clientCertificates": slots}}
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
    listing=(
        "Individual enrollments",
        ["registration id", "attestation", "status", "device id", "hubs"],
        _enrollment_row,
    ),
)


# --------------------------------------------------------------------------- group


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
@target_options
def group_create(group_id: str, **kw: Any) -> None:
    chosen = [bool(kw["ca_ref"]), bool(kw["signing_cert"]), bool(kw["symmetric_key"])]
    if sum(chosen) != 1:
        raise InvalidInput("give exactly one of --ca-ref NAME, --signing-cert FILE or --symmetric-key")
    if kw["ca_ref"]:
        attestation: dict[str, Any] = {"type": "x509", "x509": {"caReferences": {"primary": kw["ca_ref"]}}}
    elif kw["signing_cert"]:
        slot = {"primary": {"certificate": read_text(kw["signing_cert"])}}
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
    listing=("Enrollment groups", ["group id", "attestation", "status", "trust"], _group_row),
)


@group_group.command("compute-device-key")
@click.argument("group_id", required=False)
@click.option("--registration-id", required=True, help="The device's registration id.")
@click.option("--group-key", help="The group's key (base64; secret); default: the group's primary key.")
@target_options
def group_compute_device_key(group_id: str | None, registration_id: str, group_key: str | None) -> None:
    """Print a group device's key: base64(HMAC-SHA256(group key, registration id)), as
    `az iot dps enrollment-group compute-device-key` does. From --group-key alone, or from
    the primary key of group GROUP_ID on the service (local data dir or --server)."""
    from iotdps.cli.token_cmds import device_key
    from iotdps.ids import check_registration_id

    check_registration_id(registration_id)
    if group_key is None:
        if not group_id:
            raise InvalidInput("give GROUP_ID (its primary key is used) or --group-key")
        found = run_client(lambda client: _GROUPS.get(client, group_id))
        keys = found.attestation.symmetric_key
        if keys is None:
            raise InvalidInput(f"group {group_id} does not use symmetric-key attestation")
        group_key = keys.primary_key.reveal()
    click.echo(device_key(None, group_key, registration_id))


def register(group: click.Group) -> None:
    for command in (enrollment_group, group_group):
        group.add_command(command)
