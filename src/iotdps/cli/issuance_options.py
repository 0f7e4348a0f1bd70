"""The certificate issuance options of `enrollment create/update` and `group create/update`
(issue 18), kept here so the big administration module only gains two calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["apply_issuance_options", "issuance_options"]


def issuance_options() -> list[Callable[[Any], Any]]:
    return [
        click.option("--issuing-ca", help="Issue device certificates at registration with this issuing CA."),
        click.option("--cert-validity-days", type=click.IntRange(1, 3650), help="Their validity (default 30)."),
        click.option(
            "--csr",
            "csr_requirement",
            type=click.Choice(["required", "optional"]),
            help="Whether a registration must carry a CSR (default required).",
        ),
        click.option(
            "--accept-key-type",
            "key_types",
            multiple=True,
            type=click.Choice(["ecP256", "ecP384", "rsa2048", "rsa3072", "rsa4096"]),
            help="A CSR key type to accept (repeatable; default all).",
        ),
        click.option(
            "--keep-existing-credential/--no-keep-existing-credential",
            "keep_existing_credential",
            default=None,
            help="After issuance, let the device's own credential (symmetric key, attestation certificate, "
            "TPM hub key) keep opening the hub beside the issued certificate (default: no, the issued "
            "certificate alone).",
        ),
        click.option("--trust-bundle", help="The trust bundle registration answers carry."),
    ]


def apply_issuance_options(doc: dict[str, Any], kw: dict[str, Any]) -> None:
    """Fill `clientCertificateIssuancePolicy` and `trustBundleId` from the options given.

    `--issuing-ca` makes a new policy (the other fields at their defaults unless given). Without
    it, the other policy options amend the policy `doc` already has (`update`), so one setting
    changes without restating the rest; with no policy there, they are a usage error.
    """
    fields = {
        "validityInDays": kw.get("cert_validity_days"),
        "csrRequirement": kw.get("csr_requirement"),
        "acceptedKeyTypes": list(kw["key_types"]) if kw.get("key_types") else None,
        "keepExistingCredential": kw.get("keep_existing_credential"),
    }
    given = {k: v for k, v in fields.items() if v is not None}
    current = doc.get("clientCertificateIssuancePolicy")
    if kw.get("issuing_ca"):
        doc["clientCertificateIssuancePolicy"] = {"certificateAuthorityName": kw["issuing_ca"], **given}
    elif given and isinstance(current, dict):
        doc["clientCertificateIssuancePolicy"] = {**current, **given}
    elif given:
        raise click.UsageError(
            "--cert-validity-days, --csr, --accept-key-type and --[no-]keep-existing-credential need "
            "--issuing-ca (or, on update, an issuance policy to amend)"
        )
    if kw.get("trust_bundle"):
        doc["trustBundleId"] = kw["trust_bundle"]
