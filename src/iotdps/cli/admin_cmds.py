"""Administration of the provisioning service: CAs, hubs, settings, registrations, refusals and
`explain` (enrollments and groups: cli.enrollment_cmds).

Every command runs on the local data dir (or `--dsn`), or with `--server URL` and credentials
against a running iotdps: it is written once against the `AdminClient` (cli.client), and
cli.target picks the local or the remote one. Errors are one line, exit 2 (3: not found;
cli.main maps IotdpsError). Lists, reports and `explain` take --json (cli.output).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from iotdps.allocation.hubs import LinkedHub
from iotdps.cli.client import AdminClient, ExplainRequest
from iotdps.cli.output import EXIT_NEGATIVE, json_option, listing, wants_json
from iotdps.cli.shared import echo_json, read_text
from iotdps.cli.target import run_client, target_options
from iotdps.cli.tpm_keys import tpm_key_text
from iotdps.errors import InvalidInput, NotFound
from iotdps.ports import Refusal
from iotdps.provisioning.settings import ServiceSettings

__all__ = ["register"]


# --------------------------------------------------------------------------- ca


@click.group("ca")
def ca_group() -> None:
    """CA certificates: upload, proof of possession, list."""


def _is_text(path: str) -> bool:
    return b"-----BEGIN" in Path(path).read_bytes()[:4096]


def _read_certificate(path: str) -> str:
    """A certificate file as the API takes it: PEM text, or DER as base64."""
    if _is_text(path):
        return read_text(path)
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


@ca_group.command("upload")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--verified", is_flag=True, help="Trust without proof of possession (self-attested).")
@target_options
def ca_upload(name: str, file: str, verified: bool) -> None:
    """Upload the CA certificate FILE (PEM or DER) as NAME."""
    ca = run_client(lambda client: client.upload_ca(name, _read_certificate(file), verified))
    click.echo(f"CA {ca.name}: {ca.info.get('subjectName')} sha256 {ca.sha256_thumbprint} verified={ca.is_verified}")


@ca_group.command("verification-code")
@click.argument("name")
@target_options
def ca_verification_code(name: str) -> None:
    """Generate a proof-of-possession code: issue a certificate with CN=code signed by the CA."""
    code, ca = run_client(lambda client: client.generate_verification_code(name))
    click.echo(code)
    click.echo(f"expires {ca.verification_code_expires:%Y-%m-%d %H:%M:%SZ}; single use", err=True)


@ca_group.command("verify")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@target_options
def ca_verify(name: str, file: str) -> None:
    """Verify CA NAME with the verification certificate FILE."""
    ca = run_client(lambda client: client.verify_ca(name, _read_certificate(file)))
    click.echo(f"CA {ca.name} verified")


@ca_group.command("list")
@json_option
@target_options
def ca_list() -> None:
    cas = run_client(lambda client: client.list_cas())
    rows = [[c.name, c.info.get("subjectName"), c.sha256_thumbprint, c.is_verified] for c in cas]
    listing("CA certificates", ["name", "subject", "sha256", "verified"], rows, [c.to_json() for c in cas])


@ca_group.command("show")
@click.argument("name")
@target_options
def ca_show(name: str) -> None:
    ca = run_client(lambda client: client.get_ca(name))
    if ca is None:
        raise NotFound(f"CA certificate {name} not found")
    echo_json(ca.to_json())


@ca_group.command("delete")
@click.argument("name")
@target_options
def ca_delete(name: str) -> None:
    run_client(lambda client: client.delete_ca(name))
    click.echo(f"CA {name} deleted")


# --------------------------------------------------------------------------- hubs and settings


@click.group("hub")
def hub_group() -> None:
    """Linked IoT hubs."""


@hub_group.command("add")
@click.argument("host_name")
@click.option("--weight", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--apply-allocation-policy/--no-apply-allocation-policy", default=True)
@click.option("--location")
@target_options
def hub_add(host_name: str, weight: int, apply_allocation_policy: bool, location: str | None) -> None:
    hub = LinkedHub(host_name, weight, apply_allocation_policy, location)
    run_client(lambda client: client.put_hub(hub))
    click.echo(f"hub {host_name} linked (weight {weight})")


@hub_group.command("update")
@click.argument("host_name")
@click.option("--weight", type=click.IntRange(1, 1000))
@click.option("--apply-allocation-policy/--no-apply-allocation-policy", default=None)
@click.option("--location")
@target_options
def hub_update(host_name: str, weight: int | None, apply_allocation_policy: bool | None, location: str | None) -> None:
    changes: dict[str, Any] = {}
    if weight is not None:
        changes["allocation_weight"] = weight
    if apply_allocation_policy is not None:
        changes["apply_allocation_policy"] = apply_allocation_policy
    if location is not None:
        changes["location"] = location
    run_client(lambda client: client.update_hub(host_name, lambda hub: replace(hub, **changes)))
    click.echo(f"hub {host_name} updated")


@hub_group.command("remove")
@click.argument("host_name")
@target_options
def hub_remove(host_name: str) -> None:
    run_client(lambda client: client.remove_hub(host_name))
    click.echo(f"hub {host_name} removed")


@hub_group.command("list")
@json_option
@target_options
def hub_list() -> None:
    from iotdps.cli.hub_serving import served_text

    hubs = run_client(lambda client: client.list_hubs())
    rows = [[h.host_name, h.allocation_weight, h.apply_allocation_policy, h.location, served_text(h)] for h in hubs]
    listing(
        "Linked hubs",
        ["host name", "weight", "apply allocation policy", "location", "served"],
        rows,
        [h.to_json() for h in hubs],
        whole=("host name",),
    )


@click.group("settings")
def settings_group() -> None:
    """Service settings: ID scope and default allocation policy."""


@settings_group.command("set")
@click.option("--id-scope", required=True)
@click.option("--default-allocation-policy", type=click.Choice(["hashed", "geoLatency", "static"]), default="hashed")
@target_options
def settings_set(id_scope: str, default_allocation_policy: str) -> None:
    settings = ServiceSettings(id_scope, default_allocation_policy)  # type: ignore[arg-type]
    run_client(lambda client: client.put_settings(settings))
    click.echo(f"ID scope {id_scope}, default allocation {default_allocation_policy}")


@settings_group.command("show")
@target_options
def settings_show() -> None:
    found = run_client(lambda client: client.get_settings())
    if found is None:
        raise NotFound("no service settings yet; run `iotdps settings set --id-scope ...`")
    echo_json({"idScope": found.id_scope, "allocationPolicy": found.default_allocation_policy})


# --------------------------------------------------------------------------- registrations, refusals, explain


@click.group("registration")
def registration_group() -> None:
    """Registration records."""


@registration_group.command("show")
@click.argument("registration_id")
@json_option
@target_options
def registration_show(registration_id: str) -> None:
    """The registration record as JSON (the DeviceRegistrationState document, plus the trust
    bundle the device received, the certificate last issued to it, and `revocation` when its
    certificate is revoked now), with or without --json."""
    view = run_client(lambda client: client.get_registration(registration_id))
    if view is None:
        raise NotFound(f"registration {registration_id} not found")
    echo_json(view.to_json())


@registration_group.command("list")
@click.option("--group", "group_id", help="Only devices of this enrollment group.")
@click.option("--revoked", is_flag=True, help="Only devices whose certificate is revoked now (or under a revoked CA).")
@json_option
@target_options
def registration_list(group_id: str | None, revoked: bool) -> None:
    """Registration records; REVOKED names what the CRLs held now revoke (the leaf, or a CA)."""
    views = run_client(lambda client: client.list_registrations(group_id))
    if revoked:
        views = [v for v in views if v.revocation is not None]
    rows = [
        [
            v.record.registration_id,
            v.record.status,
            v.record.substatus,
            v.record.assigned_hub,
            v.record.device_id,
            v.record.enrollment_group_id,
            v.record.error_code,
            f"{v.revocation.by} ({v.revocation.reason})" if v.revocation is not None else None,
        ]
        for v in views
    ]
    listing(
        "Registrations",
        ["registration id", "status", "substatus", "hub", "device id", "group", "error", "revoked"],
        rows,
        [v.to_json() for v in views],
    )


@registration_group.command("delete")
@click.argument("registration_id")
@target_options
def registration_delete(registration_id: str) -> None:
    """Delete the record: the device's next registration is an initial assignment. The device
    identity on the hub is left alone (as on Azure)."""
    run_client(lambda client: client.delete_registration(registration_id))
    click.echo(f"registration {registration_id} deleted")


@click.command("refusals")
@click.option("--registration-id")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@target_options
def refusals_cmd(registration_id: str | None, limit: int) -> None:
    """Recent refused registrations, latest first, with the reason in words. Repeated attempts
    (same reason, registration id and peer address) are one line with their count and the
    first and latest time."""

    def why(r: Refusal) -> str:
        words = r.message + (f" (enrollment {r.enrollment})" if r.enrollment else "")
        return words + (f"; first at {r.first_seen:%Y-%m-%d %H:%M:%S}" if r.count > 1 else "")

    refusals = run_client(lambda client: client.list_refusals(registration_id, limit))
    rows = [[f"{r.at:%Y-%m-%d %H:%M:%S}", str(r.count), r.registration_id, r.peer, r.reason, why(r)] for r in refusals]
    listing(
        "Refusals",
        ["last (UTC)", "count", "registration id", "peer", "reason", "why"],
        rows,
        [_refusal_json(r) for r in refusals],
        whole=("last (UTC)", "count", "reason"),
    )


def _refusal_json(r: Refusal) -> dict[str, Any]:
    # The field names of the management API's GET /refusals, so a script reads either.
    return {
        "registrationId": r.registration_id,
        "reason": r.reason,
        "message": r.message,
        "attestationType": r.attestation_type,
        "enrollment": r.enrollment,
        "peerAddress": r.peer,
        "count": r.count,
        "firstSeenUtc": f"{r.first_seen:%Y-%m-%dT%H:%M:%SZ}",
        "lastSeenUtc": f"{r.at:%Y-%m-%dT%H:%M:%SZ}",
    }


@click.command("explain")
@click.option("--cert", "bundle", type=click.Path(exists=True, dir_okay=False), help="Device chain, leaf first.")
@click.option("--registration-id", help="Default for --cert: the leaf's CN.")
@click.option("--symmetric-key", help="The device's key (individual or group-derived).")
@click.option("--endorsement-key", help="A TPM device's EK (base64 or a file): would it get a challenge?")
@json_option
@target_options
def explain_cmd(
    bundle: str | None, registration_id: str | None, symmetric_key: str | None, endorsement_key: str | None
) -> None:
    """Show the precedence walk and the decision for a device, without registering it.

    Exit code 0 when the device would be admitted (a TPM: would get the challenge), 1 when it
    would be refused."""
    if [bool(bundle), bool(symmetric_key), bool(endorsement_key)].count(True) != 1:
        raise InvalidInput(
            "give --cert BUNDLE, or --registration-id ID with --symmetric-key KEY or --endorsement-key EK"
        )
    ek = tpm_key_text(endorsement_key, "--endorsement-key") if endorsement_key else None
    request = ExplainRequest(registration_id, read_text(bundle) if bundle else None, symmetric_key, ek)

    async def go(client: AdminClient) -> list[str]:
        return await client.explain(request)

    lines = run_client(go)
    decision = next((line.removeprefix("decision: ") for line in lines if line.startswith("decision: ")), "")
    # A TPM with a matching EK is "refused" only for want of the SAS the challenge brings.
    admitted = decision == "admit" or (ek is not None and decision.startswith("refuse SAS_MISSING"))
    if wants_json():
        rid = next(
            (line.removeprefix("registration id: ") for line in lines if line.startswith("registration id: ")), None
        )
        echo_json({"registrationId": rid, "admitted": admitted, "decision": decision, "lines": lines})
    else:
        for line in lines:
            click.echo(line)
    if not admitted:
        raise SystemExit(EXIT_NEGATIVE)


def register(group: click.Group) -> None:
    for command in (
        ca_group,
        hub_group,
        settings_group,
        registration_group,
        refusals_cmd,
        explain_cmd,
    ):
        group.add_command(command)
