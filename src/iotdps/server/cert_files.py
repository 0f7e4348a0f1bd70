"""The server certificate the listeners present, read from files and followed when they change.

Two sources share this: the operator's own pair (`[tls] cert_file/key_file`, e.g. from a
corporate or public CA) and the built-in pair under `<data_dir>/tls` (server/identity.py),
which `iotdps tls activate` rewrites when a new server CA takes over (server/ca_rotation.py).
Either way the running server picks the new pair up without a restart: new handshakes get the
new chain, connections already open keep theirs (ServerTls swaps whole contexts).

Why polling and not inotify: it works the same on every file system (including the bind
mounts and network volumes certificates are often delivered on) and costs two `stat` calls
every few seconds. A change is loaded only once both files have stopped changing for a
moment, because tools such as certbot write the certificate and the key one after the other,
and the first file alone would not match the old key.

A bad new pair (unreadable, not PEM, key not matching, expired, chain out of order) keeps the
old chain in service and is logged once, as one error line naming the file and the problem;
never the key or its passphrase. When the files change again they are tried again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import PkiError
from iotdps.secret import Secret
from iotdps.server.tls import ServerPrivateKey, ServerTls, load_pem_chain, load_pem_key

__all__ = ["KEY_PASSPHRASE_ENV", "CertificateFiles", "CertificateReloader", "check_pair", "load_pair"]

log = logging.getLogger("iotdps.server.tls")

KEY_PASSPHRASE_ENV = "IOTDPS_TLS_KEY_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
# How long both files must stay unchanged before a change is loaded (see the module doc).
SETTLE_SECONDS = 0.5

# (inode, size, mtime in ns): a rename over the file (atomic writes) changes the inode, an
# in-place rewrite changes the size or the time.
_Stamp = tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    chain: Path
    key: Path
    passphrase: Secret[bytes] | None = None

    @classmethod
    def with_env_passphrase(cls, chain: Path, key: Path, environ: dict[str, str] | None = None) -> CertificateFiles:
        value = (os.environ if environ is None else environ).get(KEY_PASSPHRASE_ENV)
        return cls(chain, key, Secret(value.encode()) if value else None)

    def stamp(self) -> tuple[_Stamp, _Stamp]:
        return _stamp(self.chain), _stamp(self.key)


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _public_der(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    der: bytes = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def check_pair(
    chain: Sequence[x509.Certificate], key: ServerPrivateKey, where: Path, now: dt.datetime | None = None
) -> None:
    """PkiError unless `chain` (leaf first) is a chain a server can present with `key`."""
    if not chain:
        raise PkiError(f"{where} holds no certificate")
    leaf = chain[0]
    if _public_der(leaf) != _public_der(key):
        raise PkiError(f"the private key does not match the first certificate in {where}")
    moment = now or dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= moment:
        raise PkiError(f"the server certificate in {where} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > moment:
        raise PkiError(
            f"the server certificate in {where} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise PkiError(f"the first certificate in {where} is a CA certificate, not a server certificate")
    # Leaf first, then each issuer: a chain out of order makes clients fail in confusing ways.
    for lower, upper in itertools.pairwise(chain):
        if lower.issuer != upper.subject:
            raise PkiError(
                f"the chain in {where} is out of order: {lower.subject.rfc4514_string()!r} is not issued by "
                f"the certificate after it ({upper.subject.rfc4514_string()!r}); put the leaf first, then its issuers"
            )


def load_pair(files: CertificateFiles) -> tuple[list[x509.Certificate], ServerPrivateKey]:
    """The chain and key in `files`, checked (PkiError, in words, otherwise)."""
    chain = load_pem_chain(files.chain)
    key = load_pem_key(files.key, files.passphrase)
    check_pair(chain, key, files.chain)
    return chain, key


class CertificateReloader:
    """Follows `files` and swaps a changed, valid pair into `tls` (see the module doc).

    `files` is asked for afresh on every poll, so the wiring may point it elsewhere."""

    def __init__(
        self,
        tls: ServerTls,
        files: Callable[[], CertificateFiles],
        *,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self._tls = tls
        self._files = files
        self._settle = settle
        self._loaded = files().stamp()
        self._failed: tuple[_Stamp, _Stamp] | None = None

    async def poll(self) -> bool:
        """Look once; True when a new chain is now presented."""
        files = self._files()
        seen = files.stamp()
        if seen == self._loaded or seen == self._failed:
            return False
        await asyncio.sleep(self._settle)
        if files.stamp() != seen:
            return False  # still being written: the next poll looks again
        try:
            chain, key = load_pair(files)
            self._tls.update_server_certificate(chain, key)
        except PkiError as exc:
            self._failed = seen
            log.error("the server certificate was not reloaded, the previous one stays in service: %s", exc.message)
            return False
        self._loaded, self._failed = seen, None
        leaf = chain[0]
        log.info(
            "server certificate reloaded from %s: %s, issued by %s, valid until %s",
            files.chain,
            leaf.subject.rfc4514_string(),
            leaf.issuer.rfc4514_string(),
            leaf.not_valid_after_utc.isoformat(),
        )
        return True

    async def run(self, stopped: asyncio.Event, interval: float) -> None:
        while not stopped.is_set():
            try:
                await asyncio.wait_for(stopped.wait(), interval)
            except TimeoutError:
                pass
            if stopped.is_set():
                return
            try:
                await self.poll()
            except Exception:  # a watcher that dies would silently freeze the chain
                log.warning("checking the server certificate files failed", exc_info=True)
