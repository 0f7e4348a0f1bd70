"""An issuing CA whose key is in a PKCS#11 token, logged in with the service's own module and PIN.

The CA object holds the chain and the key's RFC 7512 URI; `Pkcs11Config` (by default read from
IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE, IOTDPS_PKCS11_TOKEN) says how to
reach the token. The token is opened at the first issuance, not at construction: a service must
start (and answer every other registration) while a token is unplugged or its PIN is wrong.
Once open, the one logged-in session is reused for every certificate (pki.pkcs11 shares it per
process and serialises operations on it); signing runs in a worker thread, off the event loop.

A failure is an IssuanceError, never a traceback, and is not remembered: the configuration is
read again at the next attempt, so fixing a PIN file or plugging the token back in is enough,
without a restart. A session that stops working (the token was removed) is closed so that the
next attempt logs in afresh.

* wrong PIN, a key that is not the CA certificate's, a URI it cannot use -> CA_REFUSED
  (someone must change configuration)
* no configuration, module, token or key missing, a locked PIN, a signing error ->
  CA_UNREACHABLE (may pass once it is back)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cryptography import x509

from iotdps.errors import InvalidInput, PkiError
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile
from iotdps.pki.issuing.base import IssuanceError, IssuanceFailure, IssuedChain, check_ca_chain
from iotdps.pki.issuing.local import LocalIssuer
from iotdps.pki.pkcs11_uri import KeyMismatch, Pkcs11Config, Pkcs11Error, Pkcs11Uri, WrongPin

if TYPE_CHECKING:
    from iotdps.pki.pkcs11 import Pkcs11Token

__all__ = ["TokenIssuer"]


class _Mismatch(PkiError):
    """The token key is not the CA certificate's key."""


class TokenIssuer:
    """A CertificateIssuer over a CA key in a PKCS#11 token (see the module docstring)."""

    kind = "pkcs11"

    def __init__(
        self,
        name: str,
        uri: Pkcs11Uri,
        chain: Sequence[x509.Certificate],
        config: Callable[[], Pkcs11Config] = Pkcs11Config.from_env,
    ) -> None:
        self._name = check_ca_name(name)
        self._uri = uri.key_only()
        self._chain = check_ca_chain(chain, f"issuing CA {name!r}")
        self._config = config
        self._open: tuple[Pkcs11Token, LocalIssuer, Pkcs11Uri] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"TokenIssuer(name={self._name!r}, key={str(self._uri)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def open_now(self) -> tuple[Pkcs11Token, LocalIssuer, Pkcs11Uri]:
        """Log in and find the key (blocking): the token, an issuer signing through it, and the
        key's URI as the token names it (token label, object label and id: what a CA object
        stores, so it never depends on a default token). Pkcs11Error, InvalidInput, or PkiError
        when the key is not the CA certificate's."""
        from iotdps.pki.pkcs11 import Pkcs11Token

        token = Pkcs11Token.open(self._config(), self._uri)
        try:
            signer = token.find_key(self._uri, public_key=self._chain[0].public_key())  # type: ignore[arg-type]
            try:
                return token, LocalIssuer.with_signer(self._name, signer, self._chain), signer.uri
            except PkiError as exc:
                raise _Mismatch(exc.message) from None
        except BaseException:
            token.close()
            raise

    def check(self) -> Pkcs11Uri:
        """Log in, check the key is the CA certificate's, log out: the key's full URI."""
        token, _, uri = self.open_now()
        token.close()
        return uri

    def _refused(self, reason: IssuanceFailure, message: str) -> IssuanceError:
        return IssuanceError(reason, self._name, message)

    async def _issuer(self) -> LocalIssuer:
        async with self._lock:
            if self._open is not None:
                return self._open[1]
            try:
                self._open = await asyncio.to_thread(self.open_now)
            except WrongPin as exc:
                raise self._refused(
                    IssuanceFailure.CA_REFUSED, f"{exc.message} (the service's IOTDPS_PKCS11_PIN or _PIN_FILE)"
                ) from None
            except (_Mismatch, KeyMismatch) as exc:
                raise self._refused(IssuanceFailure.CA_REFUSED, exc.message) from None
            except InvalidInput as exc:
                raise self._refused(IssuanceFailure.CA_REFUSED, exc.message) from None
            except PkiError as exc:  # Pkcs11Error: module, token or key not there (or no python-pkcs11)
                raise self._refused(IssuanceFailure.CA_UNREACHABLE, exc.message) from None
            return self._open[1]

    async def issue(self, csr: AcceptedCsr, profile: IssuanceProfile) -> IssuedChain:
        issuer = await self._issuer()
        try:
            return await issuer.issue(csr, profile)
        except IssuanceError as exc:
            if exc.reason is IssuanceFailure.CA_UNREACHABLE:
                await self._drop(issuer)  # the session may be dead: log in again next time
            raise

    async def _drop(self, issuer: LocalIssuer) -> None:
        async with self._lock:
            if self._open is None or self._open[1] is not issuer:
                return  # another attempt already replaced it
            token, self._open = self._open[0], None
        await asyncio.to_thread(_close_quietly, token)

    async def close(self) -> None:
        async with self._lock:
            opened, self._open = self._open, None
        if opened is not None:
            await asyncio.to_thread(_close_quietly, opened[0])


def _close_quietly(token: Pkcs11Token) -> None:
    try:
        token.close()
    except Pkcs11Error:
        pass  # the token is gone already; nothing is left to release
