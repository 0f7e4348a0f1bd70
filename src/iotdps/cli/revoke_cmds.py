"""Revocation commands (the model: `pki.revocation`'s docstring; README "Key custody").

    iotdps revoke                  revoke a device certificate or a CA, and sign the issuer's CRL
    iotdps crl generate            re-sign CRLs (before nextUpdate; run it from cron)
    iotdps crl upload | list       hand a CRL to the service; what the service holds
    iotdps ca-dir set-crl-url      the CRL distribution point new certificates carry

`revoke` and `crl generate` work on the CA directory, where the keys are; `crl upload` and
`crl list` on the service (local data dir or --server), like `iotdps ca`.
"""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import click

from iotdps.cli.custody_cmds import signing_issuer
from iotdps.cli.pki_common import ENV_PASSPHRASE, IN_FILE, PKCS11_HELP, ca_dir_option, edge, open_ca_dir, pkcs11_option
from iotdps.cli.shared import table
from iotdps.cli.target import run_client, target_options
from iotdps.errors import InvalidInput
from iotdps.pki.ca_revocations import CaRevocations, parse_serial
from iotdps.pki.certs import certificate_label
from iotdps.pki.encoding import load_certificates
from iotdps.pki.revocation import REASONS, load_crl, summarize

__all__ = ["register"]

_PASSPHRASE = click.option(
    "--passphrase",
    envvar=ENV_PASSPHRASE,
    show_envvar=True,
    default=None,
    help="passphrase of the issuing CA's key (prompted if not given)",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@click.command("revoke")
@click.argument("file", type=IN_FILE, required=False)
@click.option("--serial", default=None, help="serial number (hex) of a certificate CA --ca issued")
@click.option("--ca", "issuer_name", default=None, help="the CA that issued --serial")
@click.option("--intermediate", default=None, help="revoke this CA of the directory (a compromised line's)")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    type=click.Choice(list(REASONS), case_sensitive=False),
    help="RFC 5280 reason code",
)
@_PASSPHRASE
@pkcs11_option(PKCS11_HELP)
@ca_dir_option
@edge
def revoke(
    file: Path | None,
    serial: str | None,
    issuer_name: str | None,
    intermediate: str | None,
    reason: str,
    passphrase: str | None,
    pkcs11_uri: str | None,
    ca_dir: Path | None,
) -> None:
    """Revoke a device certificate or a CA in the CA directory, and sign the issuer's CRL.

    The certificate in FILE (a device bundle: its first certificate), or --serial under --ca,
    or the CA --intermediate; then the issuing CA's next CRL is signed."""
    cadir = open_ca_dir(ca_dir)
    register_ = CaRevocations(cadir)
    chosen = sum(x is not None for x in (file, serial, intermediate))
    if chosen != 1:
        raise InvalidInput("give one of: a certificate FILE, --serial with --ca, or --intermediate NAME")
    subject = ""
    if file is not None:
        cert = load_certificates(file.read_bytes())[0]
        issuer_name, number, subject = register_.issuer_of(cert), cert.serial_number, certificate_label(cert)
    elif intermediate is not None:
        rec = cadir.get(intermediate)
        if rec.parent is None:
            raise InvalidInput(f"{intermediate!r} is a root: nothing above it can revoke it; stop trusting it instead")
        cert = cadir.certificate(intermediate)
        issuer_name, number, subject = rec.parent, cert.serial_number, certificate_label(cert)
    else:
        assert serial is not None
        if issuer_name is None:
            raise InvalidInput("--serial needs --ca, the CA that issued the certificate")
        number = parse_serial(serial)
    reason = next(name for name in REASONS if name.lower() == reason.lower())
    issuer = signing_issuer(cadir, issuer_name, passphrase, pkcs11_uri)
    done = register_.revoke(issuer, number, reason, _now(), subject=subject)
    what = f"{subject} " if subject else ""
    if not done.new:
        click.echo(f"{what}serial {number:X} was already revoked by {issuer_name} ({done.entry.reason})")
        return
    crl = register_.current_crl(issuer_name)
    assert crl is not None
    click.echo(f"revoked {what}serial {number:X} under CA {issuer_name} ({reason})")
    click.echo(
        f"CRL of {issuer_name} written to {register_.crl_path(issuer_name)} "
        f"(number {summarize(crl).number}, next update {crl.next_update_utc:%Y-%m-%d %H:%M:%SZ}); "
        f"upload it: iotdps crl upload {issuer_name} {register_.crl_path(issuer_name)}"
    )


@click.group("crl")
def crl_group() -> None:
    """CRLs: sign them where the CA keys are, hand them to the service."""


@crl_group.command("generate")
@click.option("--ca", "names", multiple=True, help="re-sign this CA's CRL (repeatable); default: every CRL due")
@click.option("--days", type=int, default=None, help="CRL lifetime in days (default: as before, first 7)")
@_PASSPHRASE
@pkcs11_option(PKCS11_HELP)
@ca_dir_option
@edge
def crl_generate(
    names: tuple[str, ...], days: int | None, passphrase: str | None, pkcs11_uri: str | None, ca_dir: Path | None
) -> None:
    """Sign the next CRL of each CA named, or of each CA whose CRL is past half its lifetime."""
    cadir = open_ca_dir(ca_dir)
    register_ = CaRevocations(cadir)
    now = _now()
    todo = list(names) or register_.due(now)
    if not todo:
        click.echo("no CRL is due")
        return
    for name in todo:
        crl = register_.generate(signing_issuer(cadir, name, passphrase, pkcs11_uri), now, days)
        click.echo(
            f"CRL of {name}: number {summarize(crl).number}, {len(crl)} revoked, "
            f"next update {crl.next_update_utc:%Y-%m-%d %H:%M:%SZ} -> {register_.crl_path(name)}"
        )


@crl_group.command("upload")
@click.argument("name")
@click.argument("file", type=IN_FILE)
@target_options
def crl_upload(name: str, file: Path) -> None:
    """Hand the CRL FILE (PEM or DER) of the uploaded CA NAME to the service."""
    raw = file.read_bytes()
    load_crl(raw)  # a clear error here rather than from the server
    text = raw.decode("ascii") if b"-----BEGIN" in raw[:4096] else base64.b64encode(raw).decode("ascii")
    ca = run_client(lambda client: client.upload_crl(name, text))
    info = ca.crl_info or {}
    click.echo(
        f"CRL of CA {ca.name} held: number {info.get('number')}, {info.get('revokedCount')} revoked, "
        f"next update {info.get('nextUpdate')}; enforced now"
    )


@crl_group.command("list")
@target_options
def crl_list() -> None:
    """The CRLs the service holds; EXPIRED ones are past their nextUpdate (still enforced)."""
    cas = run_client(lambda client: client.list_cas())
    now = dt.datetime.now(dt.UTC)
    rows = []
    for ca in cas:
        info = ca.crl_info
        if info is None:
            continue
        nxt = info.get("nextUpdate")
        expired = isinstance(nxt, str) and dt.datetime.fromisoformat(nxt.replace("Z", "+00:00")) < now
        rows.append([ca.name, info.get("number"), info.get("revokedCount"), nxt, "EXPIRED" if expired else "ok"])
    table("CRLs", ["CA", "number", "revoked", "next update", "state"], rows)


@click.command("set-crl-url")
@click.argument("url", required=False)
@click.option("--none", "clear", is_flag=True, help="stop adding a CRL distribution point")
@ca_dir_option
@edge
def set_crl_url(url: str | None, clear: bool, ca_dir: Path | None) -> None:
    """New certificates carry URL as their CRL distribution point; `{ca}` stands for the name
    of the CA that signed them, e.g. http://crl.example.com:8080/crl/{ca}.crl"""
    if (url is None) == (not clear):
        raise InvalidInput("give a URL, or --none")
    CaRevocations(open_ca_dir(ca_dir)).set_crl_url(None if clear else url)
    click.echo(f"CRL distribution point: {url}" if url else "no CRL distribution point")


def register(group: click.Group) -> None:
    group.add_command(revoke)
    group.add_command(crl_group)
    ca_dir = group.commands.get("ca-dir")
    if not isinstance(ca_dir, click.Group):
        ca_dir = click.Group("ca-dir", help="The local CA directory.")
        group.add_command(ca_dir)
    ca_dir.add_command(set_crl_url)
