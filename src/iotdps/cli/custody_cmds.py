"""Key custody commands: CA keys in a PKCS#11 token, and factories that never see the root key.

    iotdps create-ca-csr               a factory's CA key (file or token) and the CSR the root signs
    iotdps ca-dir export               a factory's CA directory: its CA, the chain above, no parent keys
    iotdps ca-dir attach-key           give a CA signed from a CSR its key (file or token)
    iotdps ca-dir move-to-token        import a CA's key file into a PKCS#11 token, then delete the file

Also the helpers the signing commands (cli.pki_cmds) use to reach a token: `token_key` and
`signing_issuer`. A token's module and PIN come only from the environment
(IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE), never argv; python-pkcs11
is imported only when a token is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from iotdps.cli.pki_common import (
    ENV_PASSPHRASE,
    IN_FILE,
    PKCS11_HELP,
    ca_dir_option,
    edge,
    open_ca_dir,
    pkcs11_option,
    prompt_secret,
)
from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.fsutil import atomic_write
from iotdps.pki import CaDirectory, Issuer, KeySpec, check_ca_name, generate_private_key, load_private_key
from iotdps.secret import Secret

if TYPE_CHECKING:  # python-pkcs11 is optional and heavy: imported only when a token is used
    from iotdps.pki.pkcs11 import Pkcs11Signer

__all__ = ["register", "signing_issuer", "token_key"]


def token_key(pkcs11_uri: str, key_type: KeySpec) -> Pkcs11Signer:
    """The token key --pkcs11-uri names, generated inside the token if it is not there yet."""
    from iotdps.pki.custody import create_token_key, token_key_uri

    signer, generated = create_token_key(token_key_uri(pkcs11_uri), key_type)
    what = "generated in" if generated else "found in"
    click.echo(f"key {signer.label!r} {what} PKCS#11 token {signer.uri.token!r}: {signer.custody()}")
    return signer


def signing_issuer(cadir: CaDirectory, name: str, passphrase: str | None, pkcs11_uri: str | None) -> Issuer:
    """CA `name` ready to sign: its key from --pkcs11-uri, else where its directory entry says
    (a token needs no passphrase; a key file is decrypted with it, prompted if not given)."""
    from iotdps.pki.custody import open_token_signer, token_key_uri

    if pkcs11_uri is not None:
        chain = cadir.chain(name)
        signer = open_token_signer(token_key_uri(pkcs11_uri), chain[0])
        return Issuer(chain[0], signer, chain[1:], name=name, crl_url=cadir.crl_url(name))
    if not cadir.needs_passphrase(name):
        return cadir.issuer(name, None)
    return cadir.issuer(name, prompt_secret(passphrase, prompt=f"Passphrase of CA {name!r}", confirm=False))


_PASSPHRASE = click.option(
    "--passphrase",
    envvar=ENV_PASSPHRASE,
    show_envvar=True,
    default=None,
    help="passphrase of the CA key (prompted if not given)",
)
_KEY_TYPE = click.option(
    "--key-type",
    default="p256",
    show_default=True,
    callback=lambda ctx, param, value: KeySpec.parse(value),
    help="p256, p384, rsa2048 or rsa3072",
)
_CN = click.option("--cn", default=None, help="subject CN (default: the name)")
_ORG = click.option("--org", default=None, help="subject O")


# Collects this module's ca-dir subcommands; register() moves them into cert_cmds' group.
@click.group("ca-dir")
def _ca_dir_commands() -> None:
    """The local CA directory."""


@_ca_dir_commands.command("export")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="new directory")
@ca_dir_option
@edge
def ca_export(name: str, out: Path, ca_dir: Path | None) -> None:
    """A CA directory for whoever runs CA NAME (a factory): NAME's certificate and its own key
    (if this directory has it), and the certificates above it up to the root, without their keys."""
    cadir = open_ca_dir(ca_dir)
    rec = cadir.get(name)
    exported = cadir.export(name, out)
    chain = " -> ".join(r.name for r in sorted(exported.records(), key=lambda r: r.kind != "root"))
    click.echo(f"CA directory for {name!r} written to {out} ({chain}); no parent keys")
    if rec.custody == "elsewhere":
        click.echo(f"it holds no key: the factory attaches its own with `iotdps ca-dir attach-key {name}`")
    elif rec.custody == "token":
        click.echo(f"its key stays in the PKCS#11 token ({rec.key_uri})")


@_ca_dir_commands.command("attach-key")
@click.argument("name")
@click.option("--key", "key_file", type=IN_FILE, default=None, help="the CA's key file (PEM or DER PKCS#8)")
@click.option(
    "--key-passphrase",
    envvar="IOTDPS_CA_KEY_FILE_PASSPHRASE",
    show_envvar=True,
    default=None,
    help="passphrase of --key if it is encrypted",
)
@_PASSPHRASE
@pkcs11_option("the CA's key is in this PKCS#11 token")
@ca_dir_option
@edge
def ca_attach_key(
    name: str,
    key_file: Path | None,
    key_passphrase: str | None,
    passphrase: str | None,
    pkcs11_uri: str | None,
    ca_dir: Path | None,
) -> None:
    """Give CA NAME (signed from its CSR, or exported without its key) its own key: a key file,
    stored encrypted with --passphrase, or a key in a PKCS#11 token. It must be the certificate's key."""
    from iotdps.pki.custody import token_key_uri

    if (key_file is None) == (pkcs11_uri is None):
        raise InvalidInput("say where the key is: --key FILE or --pkcs11-uri URI")
    cadir = open_ca_dir(ca_dir)
    cadir.get(name)
    if pkcs11_uri is not None:
        rec = cadir.attach_key_uri(name, token_key_uri(pkcs11_uri))
        click.echo(f"CA {name!r} signs with its key in a PKCS#11 token: {rec.key_uri}")
        return
    assert key_file is not None
    # An encrypted key file made by `create-ca-csr` is usually under the CA passphrase itself.
    file_secret = key_passphrase if key_passphrase is not None else passphrase
    key = load_private_key(key_file.read_bytes(), Secret(file_secret) if file_secret else None, what=f"key {key_file}")
    secret = prompt_secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
    rec = cadir.attach_key_file(name, key, secret)
    click.echo(f"CA {name!r} has its key: {cadir.path / rec.key_file} (encrypted)")


@_ca_dir_commands.command("move-to-token")
@click.argument("name")
@_PASSPHRASE
@click.option(
    "--pkcs11-uri",
    "pkcs11_uri",
    required=True,
    help=f"where the key goes: a free label in the token {PKCS11_HELP}",
)
@ca_dir_option
@edge
def ca_move_to_token(name: str, passphrase: str | None, pkcs11_uri: str, ca_dir: Path | None) -> None:
    """Import CA NAME's key file into a PKCS#11 token (sensitive, non-extractable), point the CA
    directory at it, and delete the key file. Back the file up first if your policy wants a copy."""
    from iotdps.pki.custody import token_key_uri

    uri = token_key_uri(pkcs11_uri)
    cadir = open_ca_dir(ca_dir)
    if not cadir.needs_passphrase(name):
        cadir.encrypted_key(name)  # says where the key is instead
    secret = prompt_secret(passphrase, prompt=f"Passphrase of CA {name!r}", confirm=False)
    rec = cadir.move_key_to_token(name, secret, uri)
    click.echo(f"the key of CA {name!r} is now in the PKCS#11 token only ({rec.key_uri}); its key file is deleted")


@click.command("create-ca-csr")
@click.option("--name", required=True, help="the CA's name (e.g. factory-a); the CSR's CN unless --cn")
@_CN
@_ORG
@_KEY_TYPE
@_PASSPHRASE
@pkcs11_option("make the key in a PKCS#11 token (non-extractable) instead of a key file")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the CSR file (default NAME.csr); a key file is written beside it as NAME.key.pem",
)
@edge
def create_ca_csr(
    name: str,
    cn: str | None,
    org: str | None,
    key_type: KeySpec,
    passphrase: str | None,
    pkcs11_uri: str | None,
    out: Path | None,
) -> None:
    """Make a factory CA's key (in a token, or an encrypted file) and the CSR the root signs.

    The root signs it with `create-ca-intermediate --csr`; only the key is taken from it."""
    from iotdps.pki.ca_csr import make_ca_csr
    from iotdps.pki.keys import encode_private_key

    check_ca_name(name)
    csr_path = out or Path(f"{name}.csr")
    if csr_path.exists():
        raise AlreadyExists(f"{csr_path} already exists; not overwriting it")
    if pkcs11_uri is not None:
        signer = token_key(pkcs11_uri, key_type)
        atomic_write(csr_path, make_ca_csr(cn or name, signer, organization=org), mode=0o644, overwrite=False)
        click.echo(f"CSR for CA {name!r}: {csr_path} (key in PKCS#11 token: {signer.uri})")
        return
    key_path = csr_path.with_name(f"{name}.key.pem")
    if key_path.exists():
        raise AlreadyExists(f"{key_path} already exists; not overwriting it")
    secret = prompt_secret(passphrase, prompt=f"New passphrase for CA {name!r}", confirm=True)
    key = generate_private_key(key_type)
    atomic_write(key_path, encode_private_key(key, secret), overwrite=False)
    atomic_write(csr_path, make_ca_csr(cn or name, key, organization=org), mode=0o644, overwrite=False)
    click.echo(f"CSR for CA {name!r}: {csr_path} (key, encrypted: {key_path})")


def register(group: click.Group) -> None:
    """Add export, attach-key and move-to-token to the `ca-dir` group (cert_cmds makes it),
    and create-ca-csr at the top."""
    ca_dir = group.commands.get("ca-dir")
    if not isinstance(ca_dir, click.Group):
        ca_dir = click.Group("ca-dir", help="The local CA directory.")
        group.add_command(ca_dir)
    for command in _ca_dir_commands.commands.values():
        ca_dir.add_command(command)
    group.add_command(create_ca_csr)
