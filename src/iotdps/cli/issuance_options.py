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
        click.option("--trust-bundle", help="The trust bundle registration answers carry."),
    ]


def apply_issuance_options(doc: dict[str, Any], kw: dict[str, Any]) -> None:
    """Fill `clientCertificateIssuancePolicy` and `trustBundleId` from the options given."""
    if kw.get("issuing_ca"):
        policy: dict[str, Any] = {"certificateAuthorityName": kw["issuing_ca"]}
        if kw.get("cert_validity_days"):
            policy["validityInDays"] = kw["cert_validity_days"]
        if kw.get("csr_requirement"):
            policy["csrRequirement"] = kw["csr_requirement"]
        if kw.get("key_types"):
            policy["acceptedKeyTypes"] = list(kw["key_types"])
        doc["clientCertificateIssuancePolicy"] = policy
    elif kw.get("cert_validity_days") or kw.get("csr_requirement") or kw.get("key_types"):
        raise click.UsageError("--cert-validity-days, --csr and --accept-key-type need --issuing-ca")
    if kw.get("trust_bundle"):
        doc["trustBundleId"] = kw["trust_bundle"]
