"""Where a built-in server CA's key lives, and a signer for it: an encrypted file or a token.

A directory that holds a server CA (`<data_dir>/tls`, or `tls/next` during a rotation) has its
certificate, `server-ca.pem`, and exactly one of:

    server-ca.key      the key, PKCS#8 encrypted with the server CA passphrase (identity.py)
    server-ca.pkcs11   one line: the RFC 7512 URI of the key in a PKCS#11 token

The URI file is no secret: it names the key, and the token's module and PIN come from the
environment only (IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE; see
pki/pkcs11_uri.py), never a file here nor a command line. It lives beside the certificate,
rather than only in the configuration, because it says which key signs *this* certificate, as
the key file did: a rotation makes the next CA's key under a label of its own, a move into the
token happens after the first start, and `iotdps tls` runs without the server's configuration.
`[tls] ca_pkcs11_uri` only says where the first start makes the key.

Only the CA's key can live in the token. The server certificate's own key signs every TLS
handshake (thousands a second when a fleet reconnects); a token on that path would make the
HSM's signing rate the service's connection rate and its availability the service's, while a
leaked leaf key is worth little: the leaf expires, and the CA in the token can reissue it.

Everything here raises ServerCaKeyError, a ConfigError whose message is one line, so `iotdps
up` and `iotdps tls` stop with one `error:` line (exit 2) for a wrong PIN, a missing token or a
missing key.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from iotdps.errors import ConfigError, InvalidInput, PkiError
from iotdps.fsutil import atomic_write
from iotdps.pki import KeySpec, PrivateKey, load_private_key
from iotdps.pki.custody import (
    destroy_token_key,
    import_into_token,
    made_token_key,
    open_token_signer,
    token_key_uri,
    token_signer,
)
from iotdps.pki.external_signing import Signer, verify_signature
from iotdps.pki.keys import public_keys_match
from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Error, Pkcs11Uri
from iotdps.secret import Secret

if TYPE_CHECKING:  # python-pkcs11 is optional: imported only when a token is used
    from iotdps.pki.pkcs11 import Pkcs11Signer

__all__ = [
    "KEY_FILE",
    "URI_FILE",
    "CaKeyPlace",
    "CaKeyRef",
    "CaSigner",
    "ServerCaKeyError",
    "adopt_shared_record",
    "ca_signer",
    "destroy_token_ca_key",
    "key_record",
    "move_file_key_to_token",
    "new_token_ca_key",
    "open_ca_signer",
    "parse_key_record",
    "shared_key_record",
]

KEY_FILE = "server-ca.key"
URI_FILE = "server-ca.pkcs11"

CaSigner = PrivateKey | Signer
# What a CA's directory (or a cluster's record) holds of its key: the encrypted key file's
# bytes, or the URI of the key in a token.
CaKeyRef = bytes | Pkcs11Uri
Custody = Literal["file", "token", "none"]


class ServerCaKeyError(ConfigError):
    """The server CA's key cannot be reached. One problem, shown as one line (ConfigError's own
    message lists problems, one per line)."""

    def __init__(self, message: str) -> None:
        super().__init__([message])
        self.message = message


@dataclass(frozen=True, slots=True)
class CaKeyPlace:
    """The directory of one server CA (its certificate and where its key is)."""

    directory: Path

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def uri_file(self) -> Path:
        return self.directory / URI_FILE

    def custody(self) -> Custody:
        if self.uri_file.exists():
            return "token"
        return "file" if self.key_file.exists() else "none"

    def token_uri(self) -> Pkcs11Uri | None:
        """The URI the directory records, or None when the key is not in a token."""
        if not self.uri_file.exists():
            return None
        text = self.uri_file.read_text("utf-8").strip()
        try:
            return token_key_uri(text)
        except InvalidInput as exc:
            raise ServerCaKeyError(f"{self.uri_file} does not hold a usable PKCS#11 URI: {exc.message}") from None

    def record_uri(self, uri: Pkcs11Uri) -> None:
        atomic_write(self.uri_file, f"{uri}\n".encode(), mode=0o644)

    def held(self) -> CaKeyRef:
        """The key as this directory holds it: the token URI, else the key file's bytes."""
        uri = self.token_uri()
        if uri is not None:
            return uri
        if not self.key_file.exists():
            raise ServerCaKeyError(f"the server CA key is missing: neither {self.key_file} nor {self.uri_file} exists")
        return self.key_file.read_bytes()

    def hold(self, key: CaKeyRef) -> None:
        """Make this directory hold `key` (and not the other kind)."""
        if isinstance(key, Pkcs11Uri):
            self.record_uri(key)
            self.key_file.unlink(missing_ok=True)
        else:
            atomic_write(self.key_file, key, mode=0o600)
            self.uri_file.unlink(missing_ok=True)


def _pkcs11_config(environ: Mapping[str, str] | None) -> Pkcs11Config:
    try:
        return Pkcs11Config.from_env(os.environ if environ is None else environ)
    except Pkcs11Error as exc:
        raise ServerCaKeyError(f"the server CA key is in a PKCS#11 token: {exc.message}") from None


def _token_error(exc: Pkcs11Error | InvalidInput) -> ServerCaKeyError:
    return ServerCaKeyError(f"server CA key: {exc.message}")


def open_ca_signer(
    place: CaKeyPlace,
    certificate: x509.Certificate,
    passphrase: Callable[[], Secret[str]],
    environ: Mapping[str, str] | None = None,
) -> CaSigner:
    """The key of the CA in `place`, ready to sign: from the token the URI file names (which
    must hold the certificate's key), else the key file decrypted with `passphrase()`."""
    uri = place.token_uri()
    if uri is not None:
        config = _pkcs11_config(environ)
        try:
            return open_token_signer(uri, certificate, config=config)
        except (Pkcs11Error, InvalidInput) as exc:
            raise _token_error(exc) from None
    if not place.key_file.exists():
        raise ServerCaKeyError(f"the server CA key is missing: neither {place.key_file} nor {place.uri_file} exists")
    return load_private_key(place.key_file.read_bytes(), passphrase(), what="server CA key")


@contextlib.contextmanager
def ca_signer(
    place: CaKeyPlace,
    certificate: x509.Certificate,
    passphrase: Callable[[], Secret[str]],
    environ: Mapping[str, str] | None = None,
) -> Iterator[CaSigner]:
    """As open_ca_signer, for the server: a token is logged out again when the block ends, so
    a running server holds no logged-in session it does not use."""
    uri = place.token_uri()
    if uri is None:
        yield open_ca_signer(place, certificate, passphrase, environ)
        return
    config = _pkcs11_config(environ)
    try:
        with token_signer(uri, certificate, config=config) as signer:
            yield signer
    except (Pkcs11Error, InvalidInput) as exc:
        raise _token_error(exc) from None


@contextlib.contextmanager
def new_token_ca_key(
    uri: Pkcs11Uri, environ: Mapping[str, str] | None = None, spec: KeySpec = KeySpec.P256
) -> Iterator[Pkcs11Signer]:
    """A new CA key inside the token (sensitive, never extractable), or the key already there
    under that label (made by the vendor's tool, or by a start that stopped before its
    certificate was written); the token is logged out again when the block ends."""
    config = _pkcs11_config(environ)
    try:
        with made_token_key(uri, spec, config=config) as (signer, _generated):
            yield signer
    except (Pkcs11Error, InvalidInput) as exc:
        raise _token_error(exc) from None


def move_file_key_to_token(
    place: CaKeyPlace,
    certificate: x509.Certificate,
    passphrase: Secret[str],
    uri: Pkcs11Uri,
    environ: Mapping[str, str] | None = None,
) -> Pkcs11Uri:
    """Import the CA's key file into the token once (pki/custody.py, as `ca-dir move-to-token`
    does), check that the token's key signs for the certificate, record the URI, then delete
    the file. Returns the URI recorded (with the key's id)."""
    recorded = place.token_uri()
    if recorded is not None:
        if not place.key_file.exists():
            raise InvalidInput(f"the server CA key in {place.directory} is already in a PKCS#11 token ({recorded})")
        # A move that stopped between recording the URI and deleting the file: finish it,
        # once the token's key is known to be the certificate's.
        _check_signs(open_ca_signer(place, certificate, lambda: passphrase, environ), certificate)
        place.key_file.unlink()
        return recorded
    if not place.key_file.exists():
        raise InvalidInput(f"{place.directory} has no server CA key file to move")
    key = load_private_key(place.key_file.read_bytes(), passphrase, what="server CA key")
    if not public_keys_match(key.public_key(), certificate.public_key()):
        raise InvalidInput(f"{place.key_file} is not the key of the server CA certificate beside it")
    config = _pkcs11_config(environ)
    try:
        signer = import_into_token(key, uri, config=config)
    except (Pkcs11Error, InvalidInput) as exc:
        raise _token_error(exc) from None
    _check_signs(signer, certificate)
    recorded = signer.uri
    # The URI first: after a crash between the two, the URI file wins and a second run of
    # the move deletes the file (above).
    place.record_uri(recorded)
    place.key_file.unlink()
    return recorded


def _check_signs(signer: CaSigner, certificate: x509.Certificate) -> None:
    """One signature by the token's key, verified with the certificate's public key: the proof
    that the token can sign for this CA before the only other copy of the key is deleted."""
    if not isinstance(signer, Signer):
        raise ServerCaKeyError("the server CA key was expected in the PKCS#11 token, not in a file")
    probe = b"iotdps: server CA key custody check"
    try:
        verify_signature(certificate.public_key(), signer.algorithm, signer.sign(probe), probe)  # type: ignore[arg-type]
    except (PkiError, Pkcs11Error) as exc:
        raise ServerCaKeyError(f"the token's key does not sign for the server CA certificate: {exc.message}") from None


def destroy_token_ca_key(
    uri: Pkcs11Uri, certificate: x509.Certificate, environ: Mapping[str, str] | None = None
) -> bool:
    """Destroy a retired CA's key object in the token, only if it is `certificate`'s key;
    False when it was already gone."""
    config = _pkcs11_config(environ)
    try:
        return destroy_token_key(uri, certificate, config=config)
    except (Pkcs11Error, InvalidInput) as exc:
        raise _token_error(exc) from None


# -- the cluster's record (wiring/shared_identity.py) -------------------------------------------


def shared_key_record(place: CaKeyPlace) -> dict[str, str]:
    """What a cluster's database holds of the CA's key beside its certificate: the encrypted
    key file's text, or, for a key in a token, only its URI (every node reaches the same
    token, a network HSM, with its own module and PIN; the key itself is never in the database)."""
    return key_record(place.held())


def key_record(key: CaKeyRef) -> dict[str, str]:
    """A key reference as the database's records spell it (see shared_key_record)."""
    if isinstance(key, Pkcs11Uri):
        return {"pkcs11_uri": str(key)}
    return {"key": key.decode("utf-8")}


def parse_key_record(record: Mapping[str, object], what: str) -> CaKeyRef:
    """The key reference a database record holds; ConfigError when it holds none or a bad URI."""
    uri_text, key_pem = record.get("pkcs11_uri"), record.get("key")
    if isinstance(uri_text, str):
        try:
            return token_key_uri(uri_text)
        except InvalidInput as exc:
            raise ServerCaKeyError(f"the shared secret {what!r} in the database has a bad URI: {exc.message}") from None
    if isinstance(key_pem, str):
        return key_pem.encode("utf-8")
    raise ConfigError([f"the shared secret {what!r} in the database is incomplete"])


def adopt_shared_record(place: CaKeyPlace, record: Mapping[str, object], *, joining: bool) -> bool:
    """Make the directory's key custody the database's (a joining node, or one whose CA was
    moved into the token by another node); False when the record names no key at all.

    A member whose key is in the token while the record still holds the key file was moved
    without the cluster's database: refused, rather than writing the key file back."""
    uri_text, key_pem = record.get("pkcs11_uri"), record.get("key")
    if isinstance(uri_text, str):
        try:
            uri = token_key_uri(uri_text)
        except InvalidInput as exc:
            raise ServerCaKeyError(f"the database's server CA record has an unusable URI: {exc.message}") from None
        if place.token_uri() != uri:
            place.record_uri(uri)
        place.key_file.unlink(missing_ok=True)
        return True
    if isinstance(key_pem, str):
        if not joining and place.custody() == "token":
            raise ServerCaKeyError(
                "this node's server CA key is in a PKCS#11 token, but the shared database still holds the key: "
                "run `iotdps tls move-to-token --dsn DATABASE-URL --pkcs11-uri URI` here to update the service's record"
            )
        if not place.key_file.exists() or place.key_file.read_text("utf-8") != key_pem:
            atomic_write(place.key_file, key_pem.encode(), mode=0o600)
        place.uri_file.unlink(missing_ok=True)
        return True
    return False
