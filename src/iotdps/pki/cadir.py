"""The local CA directory: roots and intermediates remembered by name.

Layout (one directory, mode 0700):

    index.json             {"version": 1, "cas": {name: record}}: kind, parent, file names, path length
    <name>.cert.pem        the CA certificate
    <name>.key.pem         its private key, always encrypted PKCS#8 (mode 0600)
    revocations.json       what each CA revoked, its CRL number, the CRL URL (pki.ca_revocations)
    crl/<name>.crl.pem     each CA's latest CRL

The certificate and key are separate records, and the index says where the key is (custody.py):
a key file, a PKCS#11 URI (`key_uri`: the key is in a token and never here), or neither (the
key is someone else's: the parents in a factory's exported directory, or a factory CA that the
root signed from the factory's CSR). Files appear atomically,
key and certificate together, and the index is rewritten atomically under a lock, so two
concurrent commands cannot lose each other's CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import AlreadyExists, InvalidInput, NotFound, PkiError
from iotdps.fsutil import atomic_write, atomic_write_many
from iotdps.pki.custody import import_into_token, open_token_signer, token_key_uri
from iotdps.pki.encoding import load_certificate, name_to_text, sha256_thumbprint, utc_text
from iotdps.pki.issuer import Issuer
from iotdps.pki.keys import PrivateKey, encode_private_key, load_private_key, public_keys_match
from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Uri
from iotdps.secret import Secret

__all__ = ["REVOCATIONS_FILE", "CaDirectory", "CaKind", "CaRecord", "KeyCustody", "check_ca_name"]

CaKind = Literal["root", "intermediate"]
KeyCustody = Literal["file", "token", "elsewhere"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_INDEX = "index.json"
REVOCATIONS_FILE = "revocations.json"
_VERSION = 1


def _encrypted(key: PrivateKey, passphrase: Secret[str]) -> bytes:
    if not isinstance(passphrase, Secret) or not passphrase.reveal():
        raise InvalidInput("a CA key is always encrypted: a non-empty passphrase is required")
    return encode_private_key(key, passphrase)


def check_ca_name(name: str) -> str:
    """CA names become file names, so they are restricted to a safe alphabet."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"invalid CA name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CaRecord:
    name: str
    kind: CaKind
    parent: str | None
    cert_file: str
    key_file: str
    path_length: int | None
    subject: str
    sha256_thumbprint: str
    not_after_utc: str
    # RFC 7512 URI of the key in a PKCS#11 token; None for a key file or a key held elsewhere.
    key_uri: str | None = None

    @property
    def custody(self) -> KeyCustody:
        if self.key_uri:
            return "token"
        return "file" if self.key_file else "elsewhere"


class CaDirectory:
    """Roots and intermediates stored under `path`, by name."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CaDirectory({str(self.path)!r})"

    # -- index -------------------------------------------------------------------------------

    def _read_index(self) -> dict[str, CaRecord]:
        index = self.path / _INDEX
        if not index.exists():
            return {}
        try:
            raw: Any = json.loads(index.read_text("utf-8"))
            if raw.get("version") != _VERSION:
                raise PkiError(f"{index} has index version {raw.get('version')!r}; this iotdps reads {_VERSION}")
            return {name: CaRecord(**rec) for name, rec in raw["cas"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PkiError(f"the CA index {index} is damaged") from None

    def _write_index(self, records: dict[str, CaRecord]) -> None:
        body = {"version": _VERSION, "cas": {n: asdict(r) for n, r in sorted(records.items())}}
        atomic_write(self.path / _INDEX, (json.dumps(body, indent=2) + "\n").encode("utf-8"), mode=0o644)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The directory's lock, for the other records kept beside the index (revocations)."""
        return self._locked()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Owner-only like everything in the directory, whatever the umask (it holds no secret,
        # but nobody else has any business locking it).
        with os.fdopen(os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600), "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- queries -----------------------------------------------------------------------------

    def records(self) -> list[CaRecord]:
        return list(self._read_index().values())

    def get(self, name: str) -> CaRecord:
        rec = self._read_index().get(name)
        if rec is None:
            known = ", ".join(sorted(self._read_index())) or "none yet"
            raise NotFound(f"no CA named {name!r} in {self.path} (known: {known})")
        return rec

    def certificate(self, name: str) -> x509.Certificate:
        rec = self.get(name)
        try:
            return load_certificate((self.path / rec.cert_file).read_bytes())
        except OSError:
            raise PkiError(f"the certificate file of CA {name!r} is missing") from None

    def chain(self, name: str) -> tuple[x509.Certificate, ...]:
        """The CA's certificate, then its parent's, and so on up to its root."""
        out: list[x509.Certificate] = []
        current: str | None = name
        records = self._read_index()
        # Bounded by the number of CAs: a damaged index with a parent cycle cannot loop forever.
        for _ in range(len(records) + 1):
            if current is None:
                return tuple(out)
            out.append(self.certificate(current))
            current = self.get(current).parent
        raise PkiError(f"the CA index has a parent cycle at {name!r}")

    def roots(self) -> list[x509.Certificate]:
        return [self.certificate(r.name) for r in self.records() if r.kind == "root"]

    def default_root(self) -> str:
        roots = [r.name for r in self.records() if r.kind == "root"]
        if len(roots) != 1:
            raise InvalidInput(
                "no root CA exists yet" if not roots else f"several roots exist ({', '.join(roots)}); name one"
            )
        return roots[0]

    def encrypted_key(self, name: str) -> bytes:
        rec = self.get(name)
        if rec.custody != "file":
            raise PkiError(self._no_key_file(rec))
        try:
            return (self.path / rec.key_file).read_bytes()
        except OSError:
            raise PkiError(f"the key file of CA {name!r} is missing") from None

    def _no_key_file(self, rec: CaRecord) -> str:
        if rec.custody == "token":
            return f"the key of CA {rec.name!r} is in a PKCS#11 token ({rec.key_uri}), not in a file"
        return (
            f"the key of CA {rec.name!r} is not in {self.path}: its owner holds it "
            "(attach it with `iotdps ca-dir attach-key`, or sign where it lives)"
        )

    def needs_passphrase(self, name: str) -> bool:
        """Whether signing as `name` decrypts a key file (a token key needs the PIN instead)."""
        return self.get(name).custody == "file"

    def crl_url(self, name: str) -> str | None:
        """Where CA `name`'s CRL is published (`iotdps ca-dir set-crl-url`), or None."""
        path = self.path / REVOCATIONS_FILE
        if not path.exists():
            return None
        try:
            template = json.loads(path.read_text("utf-8")).get("crlUrl")
        except (ValueError, OSError, AttributeError):
            raise PkiError(f"{path} is damaged") from None
        return template.replace("{ca}", name) if isinstance(template, str) and template else None

    def issuer(self, name: str, passphrase: Secret[str] | None, *, pkcs11_config: Pkcs11Config | None = None) -> Issuer:
        """An Issuer for CA `name`: its key file decrypted with `passphrase` (BadPassphrase if
        wrong), or its token key, logged in with `pkcs11_config` (default: the environment)."""
        chain = self.chain(name)
        rec = self.get(name)
        url = self.crl_url(name)
        if rec.custody == "token":
            assert rec.key_uri is not None
            signer = open_token_signer(token_key_uri(rec.key_uri), chain[0], config=pkcs11_config)
            return Issuer(chain[0], signer, chain[1:], name=name, crl_url=url)
        key = load_private_key(self.encrypted_key(name), passphrase, what=f"key of CA {name!r}")
        return Issuer(chain[0], key, chain[1:], name=name, crl_url=url)

    # -- changes -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        certificate: x509.Certificate,
        key: PrivateKey,
        passphrase: Secret[str],
        *,
        parent: str | None = None,
    ) -> CaRecord:
        """Store a new CA: its certificate, its key encrypted with `passphrase`, its index entry."""
        check_ca_name(name)
        return self._store(name, certificate, _encrypted(key, passphrase), None, parent)

    def add_in_token(
        self, name: str, certificate: x509.Certificate, key_uri: Pkcs11Uri, *, parent: str | None = None
    ) -> CaRecord:
        """Store a new CA whose key is in a PKCS#11 token: its certificate and the key's URI."""
        check_ca_name(name)
        return self._store(name, certificate, None, str(key_uri.key_only()), parent)

    def add_certificate(self, name: str, certificate: x509.Certificate, *, parent: str | None = None) -> CaRecord:
        """Store a CA whose key is held elsewhere (a factory's, signed from its CSR; a parent in
        an exported directory): only its certificate."""
        check_ca_name(name)
        return self._store(name, certificate, None, None, parent)

    def _store(
        self,
        name: str,
        certificate: x509.Certificate,
        key_pem: bytes | None,
        key_uri: str | None,
        parent: str | None,
    ) -> CaRecord:
        bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        with self._locked():
            os.chmod(self.path, 0o700)
            records = self._read_index()
            if name in records:
                raise AlreadyExists(f"a CA named {name!r} already exists in {self.path}")
            if parent is not None and parent not in records:
                raise NotFound(f"no CA named {parent!r} in {self.path}")
            rec = CaRecord(
                name=name,
                kind="root" if parent is None else "intermediate",
                parent=parent,
                cert_file=f"{name}.cert.pem",
                key_file=f"{name}.key.pem" if key_pem is not None else "",
                path_length=bc.path_length,
                subject=name_to_text(certificate.subject),
                sha256_thumbprint=sha256_thumbprint(certificate),
                not_after_utc=utc_text(certificate.not_valid_after_utc),
                key_uri=key_uri,
            )
            cert_path = self.path / rec.cert_file
            # All or nothing: a key without its index entry would be an orphan nobody can use.
            written: list[Path] = []
            try:
                if key_pem is not None:
                    written += atomic_write_many({self.path / rec.key_file: key_pem}, overwrite=False)
                written += atomic_write_many({cert_path: cert_pem}, mode=0o644, overwrite=False)
                records[name] = rec
                self._write_index(records)
            except FileExistsError:
                for path in written:
                    path.unlink(missing_ok=True)
                raise AlreadyExists(f"files for CA {name!r} already exist in {self.path}") from None
            except BaseException:
                for path in written:
                    path.unlink(missing_ok=True)
                raise
        return rec

    # -- custody: export to a factory, attach a key, move a key into a token -----------------

    def _lineage(self, name: str) -> list[CaRecord]:
        """CA `name`'s record, then its parent's, up to its root."""
        chain = self.chain(name)  # checks the certificates exist and the parents do not cycle
        out = [self.get(name)]
        while len(out) < len(chain):
            parent = out[-1].parent
            assert parent is not None
            out.append(self.get(parent))
        return out

    def export(self, name: str, out: str | os.PathLike[str]) -> CaDirectory:
        """A new CA directory at `out` for whoever runs CA `name` (a factory): its certificate
        and its key (file or token reference, if this directory has it), and the certificates
        above it up to the root, without their keys. `out` must not exist; it appears whole."""
        target = Path(out)
        if target.exists():
            raise AlreadyExists(f"{target} already exists; an export never merges into an existing directory")
        lineage = self._lineage(name)
        certs = self.chain(name)
        key_pem = self.encrypted_key(name) if lineage[0].custody == "file" else None
        staging = target.parent / f".{target.name}.export-{os.getpid()}"
        dest = CaDirectory(staging)
        try:
            for rec, cert in reversed(list(zip(lineage, certs, strict=True))):
                own = rec.name == name
                dest._store(
                    rec.name,
                    cert,
                    key_pem if own else None,
                    rec.key_uri if own else None,
                    rec.parent,
                )
            (staging / ".lock").unlink(missing_ok=True)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return CaDirectory(target)

    def _replace(self, name: str, **changes: Any) -> CaRecord:
        """Rewrite one index entry (under the lock)."""
        records = self._read_index()
        if name not in records:
            raise NotFound(f"no CA named {name!r} in {self.path}")
        records[name] = replace(records[name], **changes)
        self._write_index(records)
        return records[name]

    def attach_key_file(
        self, name: str, key: PrivateKey, passphrase: Secret[str], *, replace_existing: bool = False
    ) -> CaRecord:
        """Give CA `name` its key (the factory's own, whose CSR the root signed), encrypted
        with `passphrase`. The key must be the certificate's."""
        cert = self.certificate(name)
        if not public_keys_match(key.public_key(), cert.public_key()):
            raise PkiError(f"the key is not the key of CA {name!r} (its certificate has another public key)")
        key_pem = _encrypted(key, passphrase)
        with self._locked():
            rec = self.get(name)
            if rec.custody != "elsewhere" and not replace_existing:
                raise AlreadyExists(f"CA {name!r} already has its key ({rec.custody}) in {self.path}")
            key_file = f"{name}.key.pem"
            atomic_write_many({self.path / key_file: key_pem}, overwrite=False)
            try:
                return self._replace(name, key_file=key_file, key_uri=None)
            except BaseException:
                (self.path / key_file).unlink(missing_ok=True)
                raise

    def attach_key_uri(self, name: str, key_uri: Pkcs11Uri, *, pkcs11_config: Pkcs11Config | None = None) -> CaRecord:
        """Point CA `name` at its key in a token; the token is asked to prove it is the
        certificate's key before the index changes."""
        cert = self.certificate(name)
        rec = self.get(name)
        if rec.custody != "elsewhere":
            raise AlreadyExists(f"CA {name!r} already has its key ({rec.custody}) in {self.path}")
        signer = open_token_signer(key_uri, cert, config=pkcs11_config)
        with self._locked():
            return self._replace(name, key_uri=str(signer.uri))

    def move_key_to_token(
        self,
        name: str,
        passphrase: Secret[str] | None,
        key_uri: Pkcs11Uri,
        *,
        pkcs11_config: Pkcs11Config | None = None,
    ) -> CaRecord:
        """Import CA `name`'s key file into a token (sensitive, non-extractable), point the
        index at the token, then delete the key file: from then on the key is only in the token."""
        rec = self.get(name)
        if rec.custody != "file":
            raise PkiError(self._no_key_file(rec))
        key = load_private_key(self.encrypted_key(name), passphrase, what=f"key of CA {name!r}")
        signer = import_into_token(key, key_uri, config=pkcs11_config)
        with self._locked():
            updated = self._replace(name, key_file="", key_uri=str(signer.uri))
        (self.path / rec.key_file).unlink(missing_ok=True)
        return updated
