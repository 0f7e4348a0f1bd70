"""The local CA directory: roots and intermediates remembered by name.

Layout (one directory, mode 0700):

    index.json             {"version": 1, "cas": {name: record}}: kind, parent, file names, path length
    <name>.cert.pem        the CA certificate
    <name>.key.pem         its private key, always encrypted PKCS#8 (mode 0600)

The certificate and key are separate records: the index names the key file, so a later key
store (an HSM) can replace the file without touching the certificate. Files appear atomically,
key and certificate together, and the index is rewritten atomically under a lock, so two
concurrent commands cannot lose each other's CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import AlreadyExists, InvalidInput, NotFound, PkiError
from iotdps.fsutil import atomic_write, atomic_write_many
from iotdps.pki.encoding import load_certificate, name_to_text, sha256_thumbprint, utc_text
from iotdps.pki.issuer import Issuer
from iotdps.pki.keys import PrivateKey, encode_private_key, load_private_key
from iotdps.secret import Secret

__all__ = ["CaDirectory", "CaKind", "CaRecord", "check_ca_name"]

CaKind = Literal["root", "intermediate"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_INDEX = "index.json"
_VERSION = 1


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
        try:
            return (self.path / rec.key_file).read_bytes()
        except OSError:
            raise PkiError(f"the key file of CA {name!r} is missing") from None

    def issuer(self, name: str, passphrase: Secret[str] | None) -> Issuer:
        """An Issuer for CA `name`, its key decrypted with `passphrase` (BadPassphrase if wrong)."""
        chain = self.chain(name)
        key = load_private_key(self.encrypted_key(name), passphrase, what=f"key of CA {name!r}")
        return Issuer(chain[0], key, chain[1:], name=name)

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
        if not isinstance(passphrase, Secret) or not passphrase.reveal():
            raise InvalidInput("a CA key is always encrypted: a non-empty passphrase is required")
        bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        key_pem = encode_private_key(key, passphrase)
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
                key_file=f"{name}.key.pem",
                path_length=bc.path_length,
                subject=name_to_text(certificate.subject),
                sha256_thumbprint=sha256_thumbprint(certificate),
                not_after_utc=utc_text(certificate.not_valid_after_utc),
            )
            cert_path, key_path = self.path / rec.cert_file, self.path / rec.key_file
            # All or nothing: a key without its index entry would be an orphan nobody can use.
            written: list[Path] = []
            try:
                written += atomic_write_many({key_path: key_pem}, overwrite=False)
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
