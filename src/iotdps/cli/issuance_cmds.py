"""Certificate issuance administration (issue 18): trust bundles, issuing CAs, issued certificates.

Every command runs on the local data dir, or against a running server (`--server` and
credentials, cli.remote), like the other administration commands. Secrets (a CFSSL auth key, a
CA key's passphrase) go in, never come out: locally they are sealed with the data dir's
`sealing.key`, remotely the server seals them with its own.

    iotdps trust-bundle set ID --cert FILE [--cert FILE ...]   create, or make the next version
    iotdps trust-bundle list | show ID | delete ID
    iotdps issuing-ca add-local NAME --ca CA [--ca-dir DIR]    a CA of the CA toolkit (key file or token)
    iotdps issuing-ca add-pkcs11 NAME --pkcs11-uri URI (--ca CA | --ca-chain FILE)   a CA key in a token
    iotdps issuing-ca add-cfssl NAME --url URL --profile P --auth-key-file F --ca-chain FILE
    iotdps issuing-ca list | delete NAME
    iotdps certificate list [--registration-id ID] [--limit N]
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from iotdps.cli.actor import local_actor
from iotdps.cli.pki_common import PKCS11_HELP
from iotdps.cli.target import run_client, target_options, target_params
from iotdps.errors import InvalidInput, NotFound
from iotdps.ports import Store

if TYPE_CHECKING:
    from cryptography import x509

    from iotdps.cli.client import AdminClient

__all__ = ["register"]

T = TypeVar("T")
_ENV_PASSPHRASE = "IOTDPS_CA_PASSPHRASE"  # noqa: S105 - a variable name, as the CA toolkit's


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def _pems(paths: tuple[Path, ...]) -> list[str]:
    from iotdps.pki.encoding import certs_to_pem, load_certificates

    out: list[str] = []
    for path in paths:
        for cert in load_certificates(_read(path)):
            out.append(certs_to_pem([cert]).decode("ascii"))
    return out


def _sealing() -> Any:
    """The local data dir's sealing key (created on first use, 0600), as the server uses it."""
    from iotdps.issuance.sealing import SEALING_KEY_FILE, SealingKey
    from iotdps.paths import default_data_dir

    params = target_params()
    data_dir = Path(params["data_dir"]) if params.get("data_dir") else default_data_dir()
    return SealingKey.load_or_create(data_dir / SEALING_KEY_FILE)


def _run(remote: Callable[[Any], Awaitable[T]], local: Callable[[Store], Awaitable[T]]) -> T:
    """`remote(http)` against --server (the management API's HTTP client), else `local(store)`."""

    async def go(client: AdminClient) -> T:
        from iotdps.cli.local import LocalAdminClient

        if isinstance(client, LocalAdminClient):
            return await local(client.store)
        return await remote(getattr(client, "http"))  # noqa: B009 - RemoteAdminClient, imported only for --server

    return run_client(go)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def _echo(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- trust bundles


@click.group("trust-bundle")
def trust_bundle_group() -> None:
    """Trust bundles: named, versioned sets of CA certificates for devices' root stores."""


@trust_bundle_group.command("set")
@click.argument("bundle_id")
@click.option("--cert", "certs", multiple=True, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--if-match", default=None, help="Only if the bundle's etag is still this.")
@target_options
def bundle_set(bundle_id: str, certs: tuple[Path, ...], if_match: str | None) -> None:
    """Create bundle BUNDLE_ID, or make its next version, with the CA certificates in the files."""
    body = {"certificates": [{"certificate": pem} for pem in _pems(certs)]}

    async def remote(http: Any) -> dict[str, Any]:
        doc, _ = await http.call("PUT", f"/trustBundles/{_seg(bundle_id)}", body, if_match=if_match)
        return dict(doc)

    async def local(store: Store) -> dict[str, Any]:
        from iotdps.issuance.admin import put_trust_bundle
        from iotdps.pki.trust_bundle import certificates_from_json

        certificates = certificates_from_json(body)
        return (await put_trust_bundle(store, bundle_id, certificates, if_match, actor=local_actor())).to_json()

    doc = _run(remote, local)
    click.echo(f"trust bundle {doc['id']} version {doc['version']} ({len(doc['certificates'])} certificates)")


@trust_bundle_group.command("show")
@click.argument("bundle_id")
@target_options
def bundle_show(bundle_id: str) -> None:
    async def remote(http: Any) -> Any:
        doc, _ = await http.call("GET", f"/trustBundles/{_seg(bundle_id)}")
        return doc

    async def local(store: Store) -> Any:
        async with store.read() as uow:
            found = await uow.trust_bundles.get(bundle_id)
        if found is None:
            raise NotFound(f"trust bundle {bundle_id} not found")
        return found.to_json()

    _echo(_run(remote, local))


@trust_bundle_group.command("list")
@target_options
def bundle_list() -> None:
    async def remote(http: Any) -> Any:
        doc, _ = await http.call("GET", "/trustBundles")
        return doc

    async def local(store: Store) -> Any:
        async with store.read() as uow:
            return [b.to_json() for b in await uow.trust_bundles.list()]

    rows = [
        [d["id"], d["version"], ", ".join(c["metadata"]["subjectName"] for c in d["certificates"]), d["etag"]]
        for d in _run(remote, local)
    ]
    _table("Trust bundles", ["id", "version", "certificates", "etag"], rows)


@trust_bundle_group.command("delete")
@click.argument("bundle_id")
@target_options
def bundle_delete(bundle_id: str) -> None:
    async def remote(http: Any) -> None:
        await http.call("DELETE", f"/trustBundles/{_seg(bundle_id)}")

    async def local(store: Store) -> None:
        from iotdps.issuance.admin import delete_trust_bundle

        await delete_trust_bundle(store, bundle_id, actor=local_actor())

    _run(remote, local)
    click.echo(f"trust bundle {bundle_id} deleted")


# --------------------------------------------------------------------------- issuing CAs


def _put_ca(name: str, body: dict[str, Any]) -> dict[str, Any]:
    async def remote(http: Any) -> dict[str, Any]:
        doc, _ = await http.call("PUT", f"/certificateAuthorities/{_seg(name)}", body)
        return dict(doc)

    async def local(store: Store) -> dict[str, Any]:
        from iotdps.issuance.admin import put_issuing_ca

        return (await put_issuing_ca(store, _sealing(), name, body, actor=local_actor())).to_json()

    return _run(remote, local)


@click.group("issuing-ca")
def issuing_ca_group() -> None:
    """Issuing CAs: what signs device certificates at registration (an enrollment names one)."""


@issuing_ca_group.command("add-local")
@click.argument("name")
@click.option("--ca", "ca_name", required=True, help="The CA toolkit's CA that signs (root or intermediate).")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="CA directory.")
@click.option("--passphrase", envvar=_ENV_PASSPHRASE, show_envvar=True, default=None, help="The CA key's passphrase.")
@target_options
def ca_add_local(name: str, ca_name: str, ca_dir: Path | None, passphrase: str | None) -> None:
    """Make CA_NAME of the CA toolkit the issuing CA NAME. A key file is stored as the toolkit
    keeps it (encrypted) and the passphrase sealed; a key in a PKCS#11 token (the CA directory
    entry's URI) stays there, and only its URI is stored (kind pkcs11)."""
    from iotdps.cli.pki_cmds import default_ca_dir
    from iotdps.pki.cadir import CaDirectory
    from iotdps.pki.encoding import certs_to_pem

    cadir = CaDirectory(ca_dir or default_ca_dir())
    chain = cadir.chain(ca_name)
    key_uri = cadir.get(ca_name).key_uri
    if key_uri:
        doc = _put_token_ca(name, key_uri, chain)
        click.echo(f"issuing CA {doc['name']} (pkcs11, CA {ca_name}, key {doc['pkcs11Uri']}) saved")
        return
    key_pem = cadir.encrypted_key(ca_name).decode("ascii")
    if passphrase is None:
        passphrase = click.prompt(f"Passphrase of CA {ca_name!r}", hide_input=True, err=True)
    body = {
        "kind": "local",
        "caChain": [certs_to_pem([c]).decode("ascii") for c in chain],
        "key": key_pem,
        "passphrase": passphrase,
    }
    doc = _put_ca(name, body)
    click.echo(f"issuing CA {doc['name']} (local, CA {ca_name}) saved")


def _put_token_ca(name: str, key_uri: str, chain: Sequence[x509.Certificate]) -> dict[str, Any]:
    """A pkcs11 issuing CA: whoever stores it (this process locally, the server with --server)
    logs in with its own IOTDPS_PKCS11_* settings to check the key is the CA certificate's."""
    from iotdps.pki.encoding import certs_to_pem

    body = {"kind": "pkcs11", "caChain": [certs_to_pem([c]).decode("ascii") for c in chain], "pkcs11Uri": key_uri}
    return _put_ca(name, body)


@issuing_ca_group.command("add-pkcs11")
@click.argument("name")
@click.option("--pkcs11-uri", "pkcs11_uri", required=True, help=f"The CA's key in a token {PKCS11_HELP}")
@click.option("--ca", "ca_name", default=None, help="The CA toolkit's CA whose key it is (its chain from --ca-dir).")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="CA directory.")
@click.option(
    "--ca-chain", type=click.Path(path_type=Path, dir_okay=False), default=None, help="The CA's certificate, to root."
)
@target_options
def ca_add_pkcs11(name: str, pkcs11_uri: str, ca_name: str | None, ca_dir: Path | None, ca_chain: Path | None) -> None:
    """The CA whose key --pkcs11-uri names in a PKCS#11 token as the issuing CA NAME. Its chain
    comes from the CA directory (--ca) or a file (--ca-chain, the CA first, ending at the root).
    The service signs through the token with its own IOTDPS_PKCS11_MODULE and PIN."""
    from iotdps.pki.custody import token_key_uri
    from iotdps.pki.encoding import load_certificates

    token_key_uri(pkcs11_uri)  # a URI with a PIN or a module is refused before anything is sent
    if (ca_name is None) == (ca_chain is None):
        raise InvalidInput("give one of --ca (a CA of the CA directory) and --ca-chain (a PEM file)")
    if ca_name is not None:
        from iotdps.cli.pki_cmds import default_ca_dir
        from iotdps.pki.cadir import CaDirectory

        chain: Sequence[x509.Certificate] = CaDirectory(ca_dir or default_ca_dir()).chain(ca_name)
    else:
        assert ca_chain is not None
        chain = load_certificates(_read(ca_chain))
    doc = _put_token_ca(name, pkcs11_uri, chain)
    click.echo(f"issuing CA {doc['name']} (pkcs11, key {doc['pkcs11Uri']}) saved")


@issuing_ca_group.command("add-cfssl")
@click.argument("name")
@click.option("--url", required=True, help="The CFSSL server, e.g. https://ca.internal:8888")
@click.option("--profile", required=True, help="The CFSSL signing profile.")
@click.option("--auth-key-file", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Hex auth key.")
@click.option("--ca-chain", required=True, type=click.Path(path_type=Path, dir_okay=False), help="CFSSL's CA, to root.")
@click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Anchor for its TLS.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per request.")
@target_options
def ca_add_cfssl(
    name: str, url: str, profile: str, auth_key_file: Path, ca_chain: Path, tls_ca: Path | None, timeout: float
) -> None:
    """A CFSSL server's authsign endpoint as the issuing CA NAME."""
    body: dict[str, Any] = {
        "kind": "cfssl",
        "url": url,
        "profile": profile,
        "authKey": _read(auth_key_file).strip(),
        "caChain": _pems((ca_chain,)),
        "timeoutSeconds": timeout,
    }
    if tls_ca is not None:
        body["tlsCa"] = _pems((tls_ca,))
    doc = _put_ca(name, body)
    click.echo(f"issuing CA {doc['name']} (cfssl, {url}, profile {profile}) saved")


@issuing_ca_group.command("list")
@target_options
def ca_list() -> None:
    async def remote(http: Any) -> Any:
        doc, _ = await http.call("GET", "/certificateAuthorities")
        return doc

    async def local(store: Store) -> Any:
        async with store.read() as uow:
            return [c.to_json() for c in await uow.issuing_cas.list()]

    from iotdps.pki.encoding import load_certificate

    rows = [
        [
            d["name"],
            d["kind"],
            load_certificate(d["caChain"][0]).subject.rfc4514_string(),
            d.get("url") or d.get("pkcs11Uri"),
        ]
        for d in _run(remote, local)
    ]
    _table("Issuing CAs", ["name", "kind", "CA", "url / key"], rows)


@issuing_ca_group.command("delete")
@click.argument("name")
@target_options
def ca_delete(name: str) -> None:
    async def remote(http: Any) -> None:
        await http.call("DELETE", f"/certificateAuthorities/{_seg(name)}")

    async def local(store: Store) -> None:
        from iotdps.issuance.admin import delete_issuing_ca

        await delete_issuing_ca(store, name, actor=local_actor())

    _run(remote, local)
    click.echo(f"issuing CA {name} deleted")


# --------------------------------------------------------------------------- issued certificates


@click.group("certificate")
def certificate_group() -> None:
    """Certificates issued to devices at registration."""


@certificate_group.command("list")
@click.option("--registration-id", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The records as JSON, certificates included.")
@target_options
def certificate_list(registration_id: str | None, limit: int, as_json: bool) -> None:
    """Issued certificates, newest first."""

    async def remote(http: Any) -> Any:
        query = {"limit": str(limit), **({"registrationId": registration_id} if registration_id else {})}
        doc, _ = await http.call("GET", "/issuedCertificates", query=query)
        return doc

    async def local(store: Store) -> Any:
        async with store.read() as uow:
            return [c.to_json() for c in await uow.issued_certificates.list(registration_id, limit)]

    docs = _run(remote, local)
    if as_json:
        _echo(docs)
        return
    rows = [
        [
            d["issuedDateTimeUtc"][:19],
            d["registrationId"],
            d["serialNumber"],
            d["certificateAuthorityName"],
            d.get("issuedVia", "dps"),
            d["notAfterUtc"][:19],
            d["sha256Thumbprint"][:16] + "...",
        ]
        for d in docs
    ]
    _table(
        "Issued certificates",
        ["issued (UTC)", "registration id", "serial", "issuing CA", "via", "not after", "sha256"],
        rows,
    )


def register(group: click.Group) -> None:
    for command in (trust_bundle_group, issuing_ca_group, certificate_group):
        group.add_command(command)
