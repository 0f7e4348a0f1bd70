"""Local CA directory and certificate tools (no service involved).

iotdps ca-dir list                 what the CA directory holds, and where each key lives
iotdps cert inspect | verify       read a certificate; explain why a bundle would (not) validate
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from cryptography import x509

from iotdps.cli.output import EXIT_NEGATIVE, echo_json, json_option, wants_json
from iotdps.cli.pki_common import ENV_DEVICE_PASSPHRASE, IN_FILE, ca_dir_option, edge, open_ca_dir
from iotdps.errors import InvalidInput
from iotdps.pki import certificate_info, explain_chain, load_certificates, load_private_key
from iotdps.pki.certs import certificate_label
from iotdps.pki.keys import describe_public_key
from iotdps.secret import Secret

if TYPE_CHECKING:
    from iotdps.pki.revocation import Revocations

__all__ = ["register"]


@click.group("ca-dir")
def ca_group() -> None:
    """The local CA directory."""


@ca_group.command("list")
@ca_dir_option
@json_option
@edge
def ca_list(ca_dir: Path | None) -> None:
    """List the CAs in the CA directory."""
    cadir = open_ca_dir(ca_dir)
    records = cadir.records()
    if wants_json():
        echo_json([_record_json(r) for r in records])
        return
    if not records:
        click.echo(f"no CAs in {cadir.path}")
        return
    click.echo(f"CA directory {cadir.path}")
    for r in sorted(records, key=lambda r: (r.kind != "root", r.name)):
        plen = "-" if r.path_length is None else str(r.path_length)
        click.echo(
            f"{r.name:20} {r.kind:12} parent={r.parent or '-':12} pathlen={plen:3} key={r.custody:9} "
            f"expires={r.not_after_utc}  {r.subject}"
        )


def _record_json(r: Any) -> dict[str, Any]:
    return {
        "name": r.name,
        "kind": r.kind,
        "parent": r.parent,
        "pathLength": r.path_length,
        "notAfterUtc": r.not_after_utc,
        "subject": r.subject,
        "sha256Thumbprint": r.sha256_thumbprint,
        "certFile": r.cert_file,
        "keyCustody": r.custody,
    }


@click.group("cert")
def cert_group() -> None:
    """Read certificates and explain chains."""


def _read_certs(path: Path) -> list[Any]:
    try:
        return load_certificates(path.read_bytes())
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.message}") from None


def _extensions(cert: Any) -> list[tuple[str, str, str]]:
    """(label for text, JSON key, value) of the extensions `cert inspect` shows."""
    from cryptography import x509

    out: list[tuple[str, str, str]] = []
    for ext in cert.extensions:
        v = ext.value
        crit = " (critical)" if ext.critical else ""
        if isinstance(v, x509.BasicConstraints):
            text = f"CA:{'TRUE' if v.ca else 'FALSE'}" + (
                f", pathlen {v.path_length}" if v.path_length is not None else ""
            )
            out.append(("basic", "basicConstraints", text + crit))
        elif isinstance(v, x509.KeyUsage):
            names = [n for n in ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign") if getattr(v, n)]
            out.append(("key usage", "keyUsage", f"{', '.join(names) or '-'}{crit}"))
        elif isinstance(v, x509.ExtendedKeyUsage):
            out.append(("ext usage", "extendedKeyUsage", f"{', '.join(u._name for u in v)}{crit}"))
        elif isinstance(v, x509.SubjectAlternativeName):
            out.append(("alt names", "subjectAltNames", f"{', '.join(str(g.value) for g in v)}{crit}"))
        elif isinstance(v, x509.SubjectKeyIdentifier):
            out.append(("subject key", "subjectKeyIdentifier", v.digest.hex()))
        elif isinstance(v, x509.AuthorityKeyIdentifier) and v.key_identifier:
            out.append(("authority", "authorityKeyIdentifier", v.key_identifier.hex()))
    return out


@cert_group.command("inspect")
@click.argument("file", type=IN_FILE)
@json_option
@edge
def cert_inspect(file: Path) -> None:
    """Show every certificate in FILE (PEM bundle, DER or base64)."""
    certs = _read_certs(file)
    if wants_json():
        docs = []
        for cert in certs:
            doc = dict(certificate_info(cert))
            doc["publicKey"] = describe_public_key(cert.public_key())
            doc["extensions"] = {key: value for _, key, value in _extensions(cert)}
            docs.append(doc)
        echo_json(docs)
        return
    for i, cert in enumerate(certs):
        info = certificate_info(cert)
        if i:
            click.echo("")
        click.echo(f"[{i}] subject      {info['subjectName']}")
        click.echo(f"    issuer       {info['issuerName']}")
        click.echo(f"    serial       {info['serialNumber']}")
        click.echo(f"    valid        {info['notBeforeUtc']} .. {info['notAfterUtc']}")
        click.echo(f"    key          {describe_public_key(cert.public_key())}")
        for label, _, value in _extensions(cert):
            click.echo(f"    {label:12} {value}")
        click.echo(f"    sha1         {info['sha1Thumbprint']}")
        click.echo(f"    sha256       {info['sha256Thumbprint']}")


@cert_group.command("verify")
@click.argument("file", type=IN_FILE)
@click.option(
    "--chain", "chain_files", multiple=True, type=IN_FILE, help="extra intermediate certificates (repeatable)"
)
@click.option(
    "--root",
    "root_files",
    multiple=True,
    type=IN_FILE,
    help="trusted roots (repeatable; default: the roots in the CA directory)",
)
@click.option(
    "--key",
    "key_file",
    type=IN_FILE,
    default=None,
    help="the device's private key: check that it matches the certificate",
)
@click.option("--key-passphrase", envvar=ENV_DEVICE_PASSPHRASE, default=None, help="if the key is encrypted")
@click.option(
    "--server",
    "server_name",
    default=None,
    help="check a server certificate for this host name instead of a device certificate",
)
@click.option(
    "--crl",
    "crl_files",
    multiple=True,
    type=IN_FILE,
    help="a CRL to enforce (repeatable; its CA must be in the CA directory or among --root/--chain); "
    "default: the CA directory's CRLs",
)
@ca_dir_option
@edge
def cert_verify(
    file: Path,
    chain_files: tuple[Path, ...],
    root_files: tuple[Path, ...],
    key_file: Path | None,
    key_passphrase: str | None,
    server_name: str | None,
    crl_files: tuple[Path, ...],
    ca_dir: Path | None,
) -> None:
    """Explain, in words, whether the device bundle FILE would validate. Exit 0 if it does, 1 if not."""
    certs = _read_certs(file)
    intermediates = certs[1:] + [c for p in chain_files for c in _read_certs(p)]
    roots = [c for p in root_files for c in _read_certs(p)] if root_files else open_ca_dir(ca_dir).roots()
    revoked = _revocations(ca_dir, crl_files, [*intermediates, *roots])
    public_key = None
    if key_file is not None:
        key = load_private_key(
            key_file.read_bytes(), Secret(key_passphrase) if key_passphrase else None, what=f"key {key_file}"
        )
        public_key = key.public_key()
    report = explain_chain(
        certs[0],
        intermediates,
        roots,
        public_key=public_key,
        purpose="server" if server_name else "client",
        server_name=server_name,
        revoked=revoked,
    )
    click.echo(report.explain())
    if not report.valid:
        sys.exit(EXIT_NEGATIVE)


def _revocations(ca_dir: Path | None, crl_files: tuple[Path, ...], given: list[x509.Certificate]) -> Revocations:
    """The CRLs `cert verify` enforces: --crl files, each checked against its CA (from the CA
    directory or the certificates given), else every CRL of the CA directory."""
    from iotdps.pki.ca_revocations import CaRevocations
    from iotdps.pki.revocation import Revocations, check_crl, load_crl

    cadir = open_ca_dir(ca_dir)
    known = [*given, *(cadir.certificate(r.name) for r in cadir.records())]
    if not crl_files:
        return Revocations.build(CaRevocations(cadir).all_crls(), known)
    now = dt.datetime.now(dt.UTC)
    crls = []
    for path in crl_files:
        crl = load_crl(path.read_bytes())
        ca = next((c for c in known if c.subject == crl.issuer), None)
        if ca is None:
            raise InvalidInput(f"{path}: the CA that issued this CRL ({crl.issuer.rfc4514_string()}) is not known")
        check_crl(crl, ca, now)
        crls.append((certificate_label(ca), ca, crl))
    return Revocations.build(crls, known)


def register(group: click.Group) -> None:
    for command in (ca_group, cert_group):
        group.add_command(command)
