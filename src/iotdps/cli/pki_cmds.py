"""CA toolkit commands: the factory side of provisioning.

    iotdps create-ca-root              a self-signed root in the local CA directory
    iotdps create-ca-intermediate      a factory or line CA under a root or an intermediate
    iotdps create-device-cert          one device, a batch (--count), or a device CSR (--csr)
    iotdps proof-ca-root-possession    the verification certificate for a verification code
    iotdps ca-dir list                 what the CA directory holds
    iotdps cert inspect | verify       read a certificate; explain why a bundle would (not) validate

Passphrases come from --passphrase, then IOTDPS_CA_PASSPHRASE, then a prompt (confirmed when a
new key is being encrypted); they are never printed.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives import serialization

from iotdps.cli.client import enroll_signing_group, prove_possession
from iotdps.cli.target import run_client, target_options
from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.fsutil import atomic_write
from iotdps.ids import check_registration_id
from iotdps.pki import (
    CaDirectory,
    KeySpec,
    Validity,
    certificate_info,
    certs_to_pem,
    check_ca_name,
    check_device_csr,
    create_intermediate_ca,
    create_root_ca,
    describe_certificate,
    explain_chain,
    generate_private_key,
    issue_verification_certificate,
    load_certificates,
    load_private_key,
    mint_device,
    mint_packed,
    open_device_sink,
    sign_device_csr,
    write_device_files,
)
from iotdps.pki.keys import describe_public_key
from iotdps.pki.output import is_archive
from iotdps.secret import Secret

__all__ = ["default_ca_dir", "register"]

F = TypeVar("F", bound=Callable[..., Any])

ENV_CA_DIR = "IOTDPS_CA_DIR"
ENV_PASSPHRASE = "IOTDPS_CA_PASSPHRASE"  # noqa: S105 - a variable name
ENV_PARENT_PASSPHRASE = "IOTDPS_CA_PARENT_PASSPHRASE"  # noqa: S105
ENV_DEVICE_PASSPHRASE = "IOTDPS_DEVICE_PASSPHRASE"  # noqa: S105


def default_ca_dir() -> Path:
    """IOTDPS_CA_DIR, else `ca` under the user's data directory (platformdirs)."""
    env = os.environ.get(ENV_CA_DIR)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("iotdps") / "ca"


def _edge(fn: F) -> F:
    """File-system errors become one-line IotdpsErrors, which main() prints with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileExistsError as exc:
            raise AlreadyExists(f"{exc.filename or exc.args[0]} already exists; not overwriting it") from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise InvalidInput(f"{where}{exc.strerror or 'I/O error'}") from None

    return wrapper  # type: ignore[return-value]


def _ca_dir_option(fn: F) -> F:
    return click.option(
        "--ca-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"CA directory [env {ENV_CA_DIR}; default: the user data dir]",
    )(fn)


def _cadir(path: Path | None) -> CaDirectory:
    return CaDirectory(path or default_ca_dir())


def _secret(value: str | None, *, prompt: str, confirm: bool) -> Secret[str]:
    if value is None:
        value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise InvalidInput("the passphrase is empty")
    return Secret(value)


def _key_spec(ctx: click.Context, param: click.Parameter, value: str) -> KeySpec:
    return KeySpec.parse(value)


_KEY_TYPE = click.option(
    "--key-type", default="p256", show_default=True, callback=_key_spec, help="p256, p384, rsa2048 or rsa3072"
)
_CN = click.option("--cn", default=None, help="subject CN (default: the name)")
_ORG = click.option("--org", default=None, help="subject O")
_PASSPHRASE = click.option(
    "--passphrase",
    envvar=ENV_PASSPHRASE,
    show_envvar=True,
    default=None,
    help="passphrase of the CA key (prompted if not given)",
)


def _validity(days: int) -> Validity:
    return Validity.days(days)


def _pick_signing_ca(cadir: CaDirectory, name: str | None) -> str:
    if name:
        return name
    records = cadir.records()
    parents = {r.parent for r in records if r.parent}
    leaves = [r.name for r in records if r.name not in parents]
    if len(leaves) == 1:
        return leaves[0]
    if not records:
        raise InvalidInput("the CA directory is empty: run `iotdps create-ca-root` first")
    raise InvalidInput(f"several CAs could sign ({', '.join(sorted(leaves))}); choose one with --ca")


# -- CA creation ------------------------------------------------------------------------------


def _check_new_ca(cadir: CaDirectory, name: str, parent: str | None = None) -> None:
    """Refuse a bad or taken CA name (and an unknown parent) before any prompt or key generation."""
    check_ca_name(name)
    if parent is not None:
        cadir.get(parent)
    if any(r.name == name for r in cadir.records()):
        raise AlreadyExists(f"a CA named {name!r} already exists in {cadir.path}")


@click.command("create-ca-root")
@click.option("--name", default="root", show_default=True, help="name of the CA in the CA directory")
@_CN
@_ORG
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option(
    "--path-length",
    type=click.IntRange(min=0),
    default=None,
    help="how many intermediate levels may follow (default: unlimited)",
)
@_KEY_TYPE
@_PASSPHRASE
@_ca_dir_option
@_edge
def create_ca_root(
    name: str,
    cn: str | None,
    org: str | None,
    days: int,
    path_length: int | None,
    key_type: KeySpec,
    passphrase: str | None,
    ca_dir: Path | None,
) -> None:
    """Create a self-signed root CA and keep it in the CA directory."""
    cadir = _cadir(ca_dir)
    _check_new_ca(cadir, name)
    secret = _secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
    key = generate_private_key(key_type)
    cert = create_root_ca(cn or name, key, _validity(days), path_length=path_length, organization=org)
    rec = cadir.add(name, cert, key, secret)
    click.echo(f"root CA {name!r} created: {cadir.path / rec.cert_file}")
    click.echo(f"sha256 thumbprint {rec.sha256_thumbprint}")


@click.command("create-ca-intermediate")
@click.option("--name", required=True, help="name of the new CA (e.g. factory-a, line-1)")
@click.option("--parent", required=True, help="the root or intermediate that signs it")
@_CN
@_ORG
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=1825,
    show_default=True,
    help="validity; shortened to the parent's if the parent expires sooner",
)
@click.option(
    "--path-length",
    type=click.IntRange(min=0),
    default=None,
    help="intermediate levels allowed below (default: what the parents leave)",
)
@_KEY_TYPE
@_PASSPHRASE
@click.option(
    "--parent-passphrase",
    envvar=ENV_PARENT_PASSPHRASE,
    show_envvar=True,
    default=None,
    help="passphrase of the parent's key (default: --passphrase, else prompted)",
)
@click.option(
    "--enroll",
    is_flag=True,
    help="also create an enrollment group with this CA as its signing certificate (local data dir or --server)",
)
@click.option("--group-id", default=None, help="id of the enrollment group (default: the CA name)")
@click.option("--hub", "hubs", multiple=True, help="linked hub(s) the group's devices may be assigned to")
@_ca_dir_option
@target_options
@_edge
def create_ca_intermediate(
    name: str,
    parent: str,
    cn: str | None,
    org: str | None,
    days: int,
    path_length: int | None,
    key_type: KeySpec,
    passphrase: str | None,
    parent_passphrase: str | None,
    enroll: bool,
    group_id: str | None,
    hubs: tuple[str, ...],
    ca_dir: Path | None,
) -> None:
    """Create an intermediate CA (one per factory or production line) signed by --parent.

    With --enroll, also create its enrollment group on the provisioning service: on the local
    data dir, or through the management API with --server."""
    cadir = _cadir(ca_dir)
    _check_new_ca(cadir, name, parent)
    parent_secret = _secret(
        parent_passphrase if parent_passphrase is not None else passphrase,
        prompt=f"Passphrase of CA {parent!r}",
        confirm=False,
    )
    issuer = cadir.issuer(parent, parent_secret)
    issuer.child_ca_path_length(path_length)  # refuse before asking for a new passphrase
    secret = _secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
    key = generate_private_key(key_type)
    cert = create_intermediate_ca(
        issuer, cn or name, key.public_key(), _validity(days), path_length=path_length, organization=org, clamp=True
    )
    rec = cadir.add(name, cert, key, secret, parent=parent)
    plen = "unlimited" if rec.path_length is None else str(rec.path_length)
    click.echo(
        f"intermediate CA {name!r} (parent {parent!r}, path length {plen}) created: {cadir.path / rec.cert_file}"
    )
    click.echo(f"sha256 thumbprint {rec.sha256_thumbprint}")
    if enroll:
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        gid = group_id or name
        group = run_client(lambda client: enroll_signing_group(client, gid, pem, hubs))
        click.echo(f"enrollment group {group.enrollment_group_id!r} created with CA {name!r} as signing certificate")


# -- devices ----------------------------------------------------------------------------------


_IN_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.command("create-device-cert")
@click.option("--ca", "ca_name", default=None, help="signing CA (default: the only CA without children)")
@click.option("--registration-id", "-r", default=None, help="one device: its DPS registration id (the CN)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="a batch of N devices")
@click.option("--id-prefix", default="device-", show_default=True, help="batch ids are PREFIX + number")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True, help="first batch number")
@click.option(
    "--csr",
    "csr_file",
    type=_IN_FILE,
    default=None,
    help="sign this device CSR (PEM, DER or base64) instead of generating a key",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="single device/CSR: output directory (default .); batch: a new directory or a "
    ".tar/.tar.gz/.tgz/.zip archive (default devices-<CA>-<time>)",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="validity; shortened to the CA's if it expires sooner",
)
@_KEY_TYPE
@click.option(
    "--device-passphrase",
    envvar=ENV_DEVICE_PASSPHRASE,
    show_envvar=True,
    default=None,
    help="encrypt device keys with this passphrase (default: unencrypted, for flashing)",
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="processes for a batch (default: cores)")
@_PASSPHRASE
@_ca_dir_option
@_edge
def create_device_cert(
    ca_name: str | None,
    registration_id: str | None,
    count: int | None,
    id_prefix: str,
    start: int,
    csr_file: Path | None,
    out: Path | None,
    days: int,
    key_type: KeySpec,
    device_passphrase: str | None,
    workers: int | None,
    passphrase: str | None,
    ca_dir: Path | None,
) -> None:
    """Create device certificates: key + certificate bundle (leaf + intermediates) per device."""
    modes = sum(x is not None for x in (count, csr_file)) + (registration_id is not None and csr_file is None)
    if count is not None and (registration_id is not None or csr_file is not None):
        raise InvalidInput("--count cannot be combined with --registration-id or --csr")
    if modes == 0:
        raise InvalidInput("say which device: --registration-id ID, --count N or --csr FILE")
    cadir = _cadir(ca_dir)
    name = _pick_signing_ca(cadir, ca_name)
    cadir.get(name)
    ids: list[str] = []
    if count is not None:
        width = max(6, len(str(start + count - 1)))
        ids = [check_registration_id(f"{id_prefix}{n:0{width}d}") for n in range(start, start + count)]
        if out is None:
            out = Path(f"devices-{name}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
        if out.exists():
            raise AlreadyExists(f"{out} already exists; a batch never merges into an existing output")
    elif registration_id is not None:
        check_registration_id(registration_id)
    csr_data = csr_file.read_bytes() if csr_file is not None else None
    if csr_data is not None:
        check_device_csr(csr_data, registration_id)  # a bad CSR fails before the passphrase prompt
    secret = _secret(passphrase, prompt=f"Passphrase of CA {name!r}", confirm=False)
    issuer = cadir.issuer(name, secret)
    dev_secret = Secret(device_passphrase) if device_passphrase else None
    validity = _validity(days)

    if csr_data is not None:
        cert = sign_device_csr(issuer, csr_data, validity, expected_registration_id=registration_id, clamp=True)
        rid = describe_certificate(cert).strip("'\"")
        target = out if out is not None and out.suffix == ".pem" else (out or Path(".")) / f"{rid}.cert.pem"
        atomic_write(
            target,
            cert.public_bytes(serialization.Encoding.PEM) + certs_to_pem(issuer.bundle),
            mode=0o644,
            overwrite=False,
        )
        click.echo(f"signed the CSR of {rid!r}: {target}")
        return
    if count is None:
        assert registration_id is not None
        dev = mint_device(
            issuer, registration_id, validity, key_spec=key_type, device_passphrase=dev_secret, clamp=True
        )
        cert_path, key_path = write_device_files(dev, out or Path("."))
        click.echo(f"device {registration_id!r}: certificate bundle {cert_path}, key {key_path}")
        click.echo(f"sha1 thumbprint {dev.sha1_thumbprint}  sha256 thumbprint {dev.sha256_thumbprint}")
        return

    assert out is not None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # auto_refresh off: no refresh thread exists when the worker pool forks.
    with (
        open_device_sink(out) as sink,
        Progress(
            TextColumn("minting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
        ) as progress,
    ):
        task = progress.add_task("mint", total=len(ids))
        for packed in mint_packed(
            issuer,
            ids,
            validity,
            sink.packer,
            key_spec=key_type,
            device_passphrase=dev_secret,
            workers=workers,
            clamp=True,
        ):
            sink.add_packed(packed)
            progress.advance(task, len(packed))
            progress.refresh()
    kind = "archive" if is_archive(out) else "directory"
    click.echo(f"{len(ids)} devices ({ids[0]} .. {ids[-1]}) written to {kind} {out} with manifest.csv")


@click.command("proof-ca-root-possession")
@click.option(
    "--verification-code",
    default=None,
    help="only write the verification certificate for this code (default: the whole round trip with the service)",
)
@click.option("--ca", "ca_name", default=None, help="the CA being proven (default: the only root)")
@click.option("--service-name", default=None, help="the CA's name on the provisioning service (default: the CA name)")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="output file (default: verification-<CA>.cert.pem)",
)
@_PASSPHRASE
@_ca_dir_option
@target_options
@_edge
def proof_ca_root_possession(
    verification_code: str | None,
    ca_name: str | None,
    service_name: str | None,
    out: Path | None,
    passphrase: str | None,
    ca_dir: Path | None,
) -> None:
    """Prove possession of a CA's key to the provisioning service.

    Without --verification-code: the whole round trip, on the local data dir or against
    --server: upload the CA if the service lacks it, get a code, sign the verification
    certificate (CN = the code) with the CA key, verify. With --verification-code: only write
    that verification certificate, for a service you talk to yourself."""
    cadir = _cadir(ca_dir)
    name = ca_name or cadir.default_root()
    record = cadir.get(name)
    secret = _secret(passphrase, prompt=f"Passphrase of CA {name!r}", confirm=False)
    issuer = cadir.issuer(name, secret)

    def sign(code: str) -> str:
        # The subject key is a throwaway: the service checks only the CN and the CA's signature.
        throwaway = generate_private_key()
        cert = issue_verification_certificate(issuer, code, throwaway.public_key(), Validity.days(30))
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    if verification_code is None:
        ca_pem = (cadir.path / record.cert_file).read_text(encoding="ascii")
        target = service_name or name
        verified = run_client(lambda client: prove_possession(client, target, ca_pem, sign))
        click.echo(f"CA {name!r} verified on the provisioning service as {verified.name!r}")
        click.echo(f"sha256 thumbprint {verified.sha256_thumbprint}")
        return
    target_file = out or Path(f"verification-{name}.cert.pem")
    atomic_write(target_file, sign(verification_code).encode("ascii"), mode=0o644)
    click.echo(f"verification certificate for CA {name!r}: {target_file}")
    click.echo("upload it to the provisioning service to complete the proof of possession")


# -- CA directory and certificate tools ---------------------------------------------------


@click.group("ca-dir")
def ca_group() -> None:
    """The local CA directory."""


@ca_group.command("list")
@_ca_dir_option
@_edge
def ca_list(ca_dir: Path | None) -> None:
    """List the CAs in the CA directory."""
    cadir = _cadir(ca_dir)
    records = cadir.records()
    if not records:
        click.echo(f"no CAs in {cadir.path}")
        return
    click.echo(f"CA directory {cadir.path}")
    for r in sorted(records, key=lambda r: (r.kind != "root", r.name)):
        plen = "-" if r.path_length is None else str(r.path_length)
        click.echo(
            f"{r.name:20} {r.kind:12} parent={r.parent or '-':12} pathlen={plen:3} "
            f"expires={r.not_after_utc}  {r.subject}"
        )


@click.group("cert")
def cert_group() -> None:
    """Read certificates and explain chains."""


def _read_certs(path: Path) -> list[Any]:
    try:
        return load_certificates(path.read_bytes())
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.message}") from None


@cert_group.command("inspect")
@click.argument("file", type=_IN_FILE)
@_edge
def cert_inspect(file: Path) -> None:
    """Show every certificate in FILE (PEM bundle, DER or base64)."""
    from cryptography import x509

    certs = _read_certs(file)
    for i, cert in enumerate(certs):
        info = certificate_info(cert)
        if i:
            click.echo("")
        click.echo(f"[{i}] subject      {info['subjectName']}")
        click.echo(f"    issuer       {info['issuerName']}")
        click.echo(f"    serial       {info['serialNumber']}")
        click.echo(f"    valid        {info['notBeforeUtc']} .. {info['notAfterUtc']}")
        click.echo(f"    key          {describe_public_key(cert.public_key())}")
        for ext in cert.extensions:
            v = ext.value
            crit = " (critical)" if ext.critical else ""
            if isinstance(v, x509.BasicConstraints):
                text = f"CA:{'TRUE' if v.ca else 'FALSE'}" + (
                    f", pathlen {v.path_length}" if v.path_length is not None else ""
                )
                click.echo(f"    basic        {text}{crit}")
            elif isinstance(v, x509.KeyUsage):
                names = [
                    n for n in ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign") if getattr(v, n)
                ]
                click.echo(f"    key usage    {', '.join(names) or '-'}{crit}")
            elif isinstance(v, x509.ExtendedKeyUsage):
                click.echo(f"    ext usage    {', '.join(u._name for u in v)}{crit}")
            elif isinstance(v, x509.SubjectAlternativeName):
                click.echo(f"    alt names    {', '.join(str(g.value) for g in v)}{crit}")
            elif isinstance(v, x509.SubjectKeyIdentifier):
                click.echo(f"    subject key  {v.digest.hex()}")
            elif isinstance(v, x509.AuthorityKeyIdentifier) and v.key_identifier:
                click.echo(f"    authority    {v.key_identifier.hex()}")
        click.echo(f"    sha1         {info['sha1Thumbprint']}")
        click.echo(f"    sha256       {info['sha256Thumbprint']}")


@cert_group.command("verify")
@click.argument("file", type=_IN_FILE)
@click.option(
    "--chain", "chain_files", multiple=True, type=_IN_FILE, help="extra intermediate certificates (repeatable)"
)
@click.option(
    "--root",
    "root_files",
    multiple=True,
    type=_IN_FILE,
    help="trusted roots (repeatable; default: the roots in the CA directory)",
)
@click.option(
    "--key",
    "key_file",
    type=_IN_FILE,
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
@_ca_dir_option
@_edge
def cert_verify(
    file: Path,
    chain_files: tuple[Path, ...],
    root_files: tuple[Path, ...],
    key_file: Path | None,
    key_passphrase: str | None,
    server_name: str | None,
    ca_dir: Path | None,
) -> None:
    """Explain, in words, whether the device bundle FILE would validate. Exit 0 if it does, 1 if not."""
    certs = _read_certs(file)
    intermediates = certs[1:] + [c for p in chain_files for c in _read_certs(p)]
    roots = [c for p in root_files for c in _read_certs(p)] if root_files else _cadir(ca_dir).roots()
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
    )
    click.echo(report.explain())
    if not report.valid:
        sys.exit(1)


def register(group: click.Group) -> None:
    for command in (
        create_ca_root,
        create_ca_intermediate,
        create_device_cert,
        proof_ca_root_possession,
        ca_group,
        cert_group,
    ):
        group.add_command(command)
