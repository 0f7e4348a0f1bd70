"""CA toolkit commands: the factory side of provisioning.

    iotdps create-ca-root              a self-signed root in the local CA directory
    iotdps create-ca-intermediate      a factory or line CA under a root or an intermediate
    iotdps create-device-cert          one device, a batch (--count), or a device CSR (--csr)
    iotdps proof-ca-root-possession    the verification certificate for a verification code
(`ca-dir` and `cert`, the local tools: cli.cert_cmds; create-ca-csr and the custody commands
of `ca-dir`: cli.custody_cmds.)

Passphrases come from --passphrase, then IOTDPS_CA_PASSPHRASE, then a prompt (confirmed when a
new key is being encrypted); they are never printed. A CA key in a PKCS#11 token is named by
--pkcs11-uri (or by its CA directory entry); the token's module and PIN come only from the
environment (IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE), never argv.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from iotdps.cli.client import enroll_signing_group, prove_possession, register_ca
from iotdps.cli.custody_cmds import signing_issuer, token_key
from iotdps.cli.pki_common import (
    ENV_DEVICE_PASSPHRASE,
    ENV_PARENT_PASSPHRASE,
    ENV_PASSPHRASE,
    IN_FILE,
    ca_dir_option,
    default_ca_dir,
    edge,
    open_ca_dir,
    pkcs11_option,
    prompt_secret,
)
from iotdps.cli.seed import generated_ca_name, generated_registration_id, newest_intermediate, service_configured
from iotdps.cli.target import run_client, target_options
from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.fsutil import atomic_write
from iotdps.ids import check_registration_id
from iotdps.pki import (
    CaDirectory,
    KeySpec,
    Validity,
    certs_to_pem,
    check_ca_name,
    check_device_csr,
    create_intermediate_ca,
    create_root_ca,
    describe_certificate,
    generate_private_key,
    issue_verification_certificate,
    mint_device,
    mint_packed,
    open_device_sink,
    sign_device_csr,
    write_device_files,
)
from iotdps.pki.output import is_archive
from iotdps.secret import Secret

__all__ = ["default_ca_dir", "register"]


def _secret(value: str | None, *, prompt: str, confirm: bool) -> Secret[str]:
    return prompt_secret(value, prompt=prompt, confirm=confirm)


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
@pkcs11_option("keep the root's key in a PKCS#11 token: generated there (non-extractable) unless it exists")
@click.option(
    "--register/--no-register",
    default=None,
    help="upload the root to the provisioning service (default without --name: when one is configured: "
    "--server, IOTDPS_CONNECTION_STRING or a local data dir)",
)
@ca_dir_option
@target_options
@edge
def create_ca_root(
    name: str,
    cn: str | None,
    org: str | None,
    days: int,
    path_length: int | None,
    key_type: KeySpec,
    passphrase: str | None,
    pkcs11_uri: str | None,
    register: bool | None,
    ca_dir: Path | None,
) -> None:
    """Create a self-signed root CA and keep it in the CA directory.

    Bare (no --name), when a provisioning service is configured, the root is also uploaded to
    it (unverified: `iotdps proof-ca-root-possession` proves it)."""
    if register is None:
        # Bare (no --name), as the seed runs it: register when a service is configured. A
        # named root keeps the old meaning (upload with `proof-ca-root-possession` or
        # `ca upload`), so a root meant to stay unknown to the service stays unknown.
        named = click.get_current_context().get_parameter_source("name") != click.core.ParameterSource.DEFAULT
        register = not named and service_configured()
    cadir = open_ca_dir(ca_dir)
    _check_new_ca(cadir, name)
    if pkcs11_uri is not None:
        signer = token_key(pkcs11_uri, key_type)
        cert = create_root_ca(cn or name, signer, _validity(days), path_length=path_length, organization=org)
        rec = cadir.add_in_token(name, cert, signer.uri)
    else:
        secret = _secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
        key = generate_private_key(key_type)
        cert = create_root_ca(cn or name, key, _validity(days), path_length=path_length, organization=org)
        rec = cadir.add(name, cert, key, secret)
    click.echo(f"root CA {name!r} created: {cadir.path / rec.cert_file}")
    click.echo(f"sha256 thumbprint {rec.sha256_thumbprint}")
    if register:
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        registered = run_client(lambda client: register_ca(client, name, pem))
        click.echo(
            f"registered with the provisioning service as {registered.name!r} (unverified): "
            "next, `iotdps proof-ca-root-possession`"
        )


@click.command("create-ca-intermediate")
@click.option("--name", default=None, help="name of the new CA (e.g. factory-a; default: intermediate-<6 hex>)")
@click.option("--parent", default=None, help="the root or intermediate that signs it (default: the only root)")
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
    "--enroll/--no-enroll",
    default=None,
    help="also create an enrollment group with this CA as its signing certificate (default without "
    "--name: when a service is configured: --server, IOTDPS_CONNECTION_STRING or a local data dir)",
)
@click.option("--group-id", default=None, help="id of the enrollment group (default: the CA name)")
@click.option("--hub", "hubs", multiple=True, help="linked hub(s) the group's devices may be assigned to")
@pkcs11_option("keep the new CA's key in a PKCS#11 token: generated there (non-extractable) unless it exists")
@click.option(
    "--csr",
    "csr_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="certify the key in this CA CSR (the factory keeps its key); only its key is used",
)
@ca_dir_option
@target_options
@edge
def create_ca_intermediate(
    name: str | None,
    parent: str | None,
    cn: str | None,
    org: str | None,
    days: int,
    path_length: int | None,
    key_type: KeySpec,
    passphrase: str | None,
    parent_passphrase: str | None,
    enroll: bool | None,
    group_id: str | None,
    hubs: tuple[str, ...],
    pkcs11_uri: str | None,
    csr_file: Path | None,
    ca_dir: Path | None,
) -> None:
    """Create an intermediate CA (one per factory or production line) signed by --parent.

    With --csr, the factory made the key and sent its CSR: the new CA gets the root's
    extensions and path length whatever the CSR asks, and the CA directory records only its
    certificate (give it to the factory with `iotdps ca-dir export`). With --enroll, also create
    its enrollment group on the provisioning service: on the local data dir, or through the
    management API with --server. Bare, it names the CA intermediate-<6 hex>, signs it with the
    only root and enrolls it when a service is configured."""
    from iotdps.pki.ca_csr import check_ca_csr

    if csr_file is not None and pkcs11_uri is not None:
        raise InvalidInput("--csr and --pkcs11-uri exclude each other: with --csr the factory holds the key")
    cadir = open_ca_dir(ca_dir)
    parent = parent or cadir.default_root()
    if enroll is None:
        # Bare (no --name), as the seed runs it: enroll when a service is configured. A named
        # CA keeps the old meaning (enroll only with --enroll), so scripts that create the
        # group themselves afterwards still work.
        enroll = name is None and service_configured()
    name = name or generated_ca_name(cadir)
    _check_new_ca(cadir, name, parent)
    request = check_ca_csr(csr_file.read_bytes()) if csr_file is not None else None  # before any prompt
    issuer = signing_issuer(cadir, parent, parent_passphrase if parent_passphrase is not None else passphrase, None)
    issuer.child_ca_path_length(path_length)  # refuse before asking for a new passphrase
    validity = _validity(days)
    if request is not None:
        cert = create_intermediate_ca(
            issuer, cn or name, request.public_key, validity, path_length=path_length, organization=org, clamp=True
        )
        rec = cadir.add_certificate(name, cert, parent=parent)
        if request.requested:
            click.echo(f"the CSR asked for {', '.join(request.requested)}: ignored, the root's profile applies")
    elif pkcs11_uri is not None:
        signer = token_key(pkcs11_uri, key_type)
        cert = create_intermediate_ca(
            issuer, cn or name, signer.public_key(), validity, path_length=path_length, organization=org, clamp=True
        )
        rec = cadir.add_in_token(name, cert, signer.uri, parent=parent)
    else:
        secret = _secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
        key = generate_private_key(key_type)
        cert = create_intermediate_ca(
            issuer, cn or name, key.public_key(), validity, path_length=path_length, organization=org, clamp=True
        )
        rec = cadir.add(name, cert, key, secret, parent=parent)
    plen = "unlimited" if rec.path_length is None else str(rec.path_length)
    click.echo(
        f"intermediate CA {name!r} (parent {parent!r}, path length {plen}) created: {cadir.path / rec.cert_file}"
    )
    click.echo(f"sha256 thumbprint {rec.sha256_thumbprint}")
    if request is not None:
        click.echo(f"its key stays with the factory; give it `iotdps ca-dir export {name} --out DIR`")
    if enroll:
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        gid = group_id or name
        group = run_client(lambda client: enroll_signing_group(client, gid, pem, hubs))
        click.echo(f"enrollment group {group.enrollment_group_id!r} created with CA {name!r} as signing certificate")


# -- devices ----------------------------------------------------------------------------------


@click.command("create-device-cert")
@click.option("--ca", "ca_name", default=None, help="signing CA (default: the only CA without children)")
@click.option("--registration-id", "-r", default=None, help="one device: its DPS registration id (the CN)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="a batch of N devices")
@click.option("--id-prefix", default="device-", show_default=True, help="batch ids are PREFIX + number")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True, help="first batch number")
@click.option(
    "--csr",
    "csr_file",
    type=IN_FILE,
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
@pkcs11_option("the signing CA's key is in a PKCS#11 token (default: where its CA directory entry says)")
@ca_dir_option
@edge
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
    pkcs11_uri: str | None,
    ca_dir: Path | None,
) -> None:
    """Create device certificates: key + certificate bundle (leaf + intermediates) per device.

    Bare, one device with a generated registration id (device-<8 hex>, printed) under the
    newest intermediate."""
    modes = sum(x is not None for x in (count, csr_file)) + (registration_id is not None and csr_file is None)
    if count is not None and (registration_id is not None or csr_file is not None):
        raise InvalidInput("--count cannot be combined with --registration-id or --csr")
    cadir = open_ca_dir(ca_dir)
    if modes == 0:
        # Bare, as the seed runs it: a new device under the newest intermediate.
        registration_id = generated_registration_id()
        name = ca_name or newest_intermediate(cadir)
    else:
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
    issuer = signing_issuer(cadir, name, passphrase, pkcs11_uri)
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
        click.echo(f"device {registration_id!r} (CA {name!r}): certificate bundle {cert_path}, key {key_path}")
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
@pkcs11_option("the CA's key is in a PKCS#11 token (default: where its CA directory entry says)")
@ca_dir_option
@target_options
@edge
def proof_ca_root_possession(
    verification_code: str | None,
    ca_name: str | None,
    service_name: str | None,
    out: Path | None,
    passphrase: str | None,
    pkcs11_uri: str | None,
    ca_dir: Path | None,
) -> None:
    """Prove possession of a CA's key to the provisioning service.

    Without --verification-code: the whole round trip, on the local data dir or against
    --server: upload the CA if the service lacks it, get a code, sign the verification
    certificate (CN = the code) with the CA key, verify. With --verification-code: only write
    that verification certificate, for a service you talk to yourself."""
    cadir = open_ca_dir(ca_dir)
    name = ca_name or cadir.default_root()
    record = cadir.get(name)
    issuer = signing_issuer(cadir, name, passphrase, pkcs11_uri)

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


def register(group: click.Group) -> None:
    for command in (
        create_ca_root,
        create_ca_intermediate,
        create_device_cert,
        proof_ca_root_possession,
    ):
        group.add_command(command)
