"""Where a CA's key lives, and getting a signer for it: a key file, a PKCS#11 token, or nowhere here.

A CA directory entry (cadir.CaRecord) names its key by a file, by an RFC 7512 URI (the key is
in a token), or by neither (the key is someone else's: a parent in a factory's exported
directory, or a factory CA the root signed from a CSR). The token's module and PIN come from the
environment (pkcs11_uri.Pkcs11Config.from_env), never from an argument a command line could
carry. python-pkcs11 is imported only when a token is used: a CA directory of key files works
without the hsm extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cryptography import x509

from iotdps.errors import InvalidInput
from iotdps.pki.keys import KeySpec, PrivateKey
from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Uri, parse_pkcs11_uri

if TYPE_CHECKING:
    from iotdps.pki.pkcs11 import Pkcs11Signer, Pkcs11Token

__all__ = [
    "create_token_key",
    "destroy_token_key",
    "import_into_token",
    "made_token_key",
    "open_token_signer",
    "token_key_uri",
    "token_signer",
]


def token_key_uri(text: str) -> Pkcs11Uri:
    """A URI that names a private key and nothing we take from elsewhere (module, PIN)."""
    uri = parse_pkcs11_uri(text).key_only()
    if uri.type not in (None, "private"):
        raise InvalidInput(f"a CA key's PKCS#11 URI names a private key (type=private), not type={uri.type}")
    if uri.object is None and uri.id is None:
        raise InvalidInput("the PKCS#11 URI must name the key: object= (its label) or id=")
    return uri


def _config(config: Pkcs11Config | None) -> Pkcs11Config:
    return config if config is not None else Pkcs11Config.from_env()


def open_token_signer(
    uri: Pkcs11Uri, certificate: x509.Certificate | None = None, *, config: Pkcs11Config | None = None
) -> Pkcs11Signer:
    """The token key `uri` names, as a Signer. With `certificate`, the key must be its key.

    The token stays logged in for as long as the process (or the signer) needs it: a command
    signs and exits, and a bulk batch's workers open their own sessions.
    """
    from iotdps.pki.pkcs11 import Pkcs11Token

    token = Pkcs11Token.open(_config(config), uri)
    try:
        return token.find_key(uri, public_key=certificate.public_key() if certificate is not None else None)  # type: ignore[arg-type]
    except BaseException:
        token.close()
        raise


@contextlib.contextmanager
def token_signer(
    uri: Pkcs11Uri, certificate: x509.Certificate | None = None, *, config: Pkcs11Config | None = None
) -> Iterator[Pkcs11Signer]:
    """As open_token_signer, for a long-running process that signs now and then: the token is
    logged out again when the block ends, rather than staying logged in for the process's life."""
    from iotdps.pki.pkcs11 import Pkcs11Token

    with Pkcs11Token.open(_config(config), uri) as token:
        yield token.find_key(uri, public_key=certificate.public_key() if certificate is not None else None)  # type: ignore[arg-type]


def create_token_key(uri: Pkcs11Uri, spec: KeySpec, *, config: Pkcs11Config | None = None) -> tuple[Pkcs11Signer, bool]:
    """The key `uri` names if the token has it (made there by its vendor's tool, say), else a
    new one generated inside the token, never extractable. Returns (signer, generated)."""
    from iotdps.pki.pkcs11 import Pkcs11Token

    _need_label(uri)
    token = Pkcs11Token.open(_config(config), uri)
    try:
        return _find_or_generate(token, uri, spec)
    except BaseException:
        token.close()
        raise


@contextlib.contextmanager
def made_token_key(
    uri: Pkcs11Uri, spec: KeySpec, *, config: Pkcs11Config | None = None
) -> Iterator[tuple[Pkcs11Signer, bool]]:
    """As create_token_key, logged out again when the block ends (see token_signer)."""
    from iotdps.pki.pkcs11 import Pkcs11Token

    _need_label(uri)
    with Pkcs11Token.open(_config(config), uri) as token:
        yield _find_or_generate(token, uri, spec)


def _need_label(uri: Pkcs11Uri) -> None:
    if uri.object is None:
        raise InvalidInput("to create a key in the token, name it: object=LABEL in the PKCS#11 URI")


def _find_or_generate(token: Pkcs11Token, uri: Pkcs11Uri, spec: KeySpec) -> tuple[Pkcs11Signer, bool]:
    from iotdps.pki.pkcs11_uri import KeyNotFound

    assert uri.object is not None
    try:
        return token.find_key(uri), False
    except KeyNotFound:
        return token.generate_key(spec, label=uri.object, key_id=uri.id), True


def import_into_token(key: PrivateKey, uri: Pkcs11Uri, *, config: Pkcs11Config | None = None) -> Pkcs11Signer:
    """Copy a file key into the token, sensitive and non-extractable (once: the label must be free)."""
    from iotdps.pki.pkcs11 import Pkcs11Token

    if uri.object is None:
        raise InvalidInput("to import a key into the token, name it: object=LABEL in the PKCS#11 URI")
    token = Pkcs11Token.open(_config(config), uri)
    try:
        return token.import_key(key, label=uri.object, key_id=uri.id)
    except BaseException:
        token.close()
        raise


def destroy_token_key(
    uri: Pkcs11Uri, certificate: x509.Certificate | None = None, *, config: Pkcs11Config | None = None
) -> bool:
    """Destroy the token key `uri` names (private and public objects), only if it is
    `certificate`'s key when that is given; False if there was no such key."""
    from iotdps.pki.pkcs11 import Pkcs11Token

    public_key = certificate.public_key() if certificate is not None else None
    with Pkcs11Token.open(_config(config), uri) as token:
        return token.destroy_key(uri, public_key=public_key)  # type: ignore[arg-type]
