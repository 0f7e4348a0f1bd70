"""From issuing CA objects to working issuers, and from a management request to an object.

`issuing_ca_from_request` validates a create/update body completely before anything is stored
(a local CA's passphrase must open its key and the key must be the CA certificate's; a CFSSL
URL, profile and auth key must be usable; a pkcs11 CA's token key must be the CA certificate's,
checked by logging in with this process's IOTDPS_PKCS11_* configuration), then seals the
secret. An update that leaves the secret out keeps the stored one (it is write-only: nobody
can read it back to resend it).

`IssuerCache` builds an issuer once per stored version of its object (decrypting a scrypt-
protected key takes a noticeable fraction of a second) and closes replaced CFSSL sessions and
token logins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from iotdps.errors import BadPassphrase, InvalidInput, PkiError
from iotdps.issuance.models import ISSUER_KINDS, IssuingCa, certificates_from_pem_list
from iotdps.issuance.sealing import SealingKey
from iotdps.pki.issuer import Issuer
from iotdps.pki.issuing.base import CertificateIssuer, check_ca_chain
from iotdps.pki.issuing.cfssl import CfsslIssuer
from iotdps.pki.issuing.local import LocalIssuer
from iotdps.pki.issuing.token import TokenIssuer
from iotdps.pki.keys import load_private_key
from iotdps.secret import Secret

__all__ = ["IssuerCache", "build_issuer", "issuing_ca_from_request"]

_FIELDS = {
    "local": {"name", "kind", "caChain", "key", "passphrase", "etag"},
    "cfssl": {"name", "kind", "caChain", "url", "profile", "authKey", "tlsCa", "timeoutSeconds", "etag"},
    "pkcs11": {"name", "kind", "caChain", "pkcs11Uri", "etag"},
}
# Read-only fields of our own answers, accepted (and ignored) so a GET document can be PUT back.
_ECHOED = {"createdDateTimeUtc", "lastUpdatedDateTimeUtc"}
_MARKER = "(set, write-only)"


def _local_issuer(ca: IssuingCa, passphrase: Secret[str]) -> LocalIssuer:
    assert ca.key_pem is not None
    try:
        key = load_private_key(ca.key_pem.encode("ascii"), passphrase, what=f"key of issuing CA {ca.name!r}")
    except BadPassphrase:
        raise InvalidInput(f"the passphrase does not open the key of issuing CA {ca.name!r}") from None
    except (PkiError, UnicodeEncodeError) as exc:
        raise InvalidInput(f"the key of issuing CA {ca.name!r} does not load: {exc}") from None
    try:
        issuer = Issuer(ca.ca_chain[0], key, ca.ca_chain[1:], name=ca.name)
    except PkiError as exc:
        raise InvalidInput(exc.message) from None
    return LocalIssuer(ca.name, issuer)


def _cfssl_issuer(ca: IssuingCa, auth_key: Secret[str]) -> CfsslIssuer:
    assert ca.url is not None and ca.profile is not None
    return CfsslIssuer(
        ca.name,
        ca.url,
        auth_key,
        ca.profile,
        ca.ca_chain,
        timeout=ca.timeout_seconds,
        tls_ca=ca.tls_ca or None,
    )


def _token_issuer(ca: IssuingCa) -> TokenIssuer:
    from iotdps.pki.custody import token_key_uri

    assert ca.pkcs11_uri is not None
    return TokenIssuer(ca.name, token_key_uri(ca.pkcs11_uri), ca.ca_chain)


def _checked_token_uri(name: str, doc: Mapping[str, Any], chain: tuple[Any, ...]) -> str:
    """The key's full URI, once the token showed it holds the CA certificate's key."""
    from iotdps.pki.custody import token_key_uri

    text = doc.get("pkcs11Uri")
    if not isinstance(text, str) or not text:
        raise InvalidInput("a pkcs11 issuing CA needs pkcs11Uri (the RFC 7512 URI of the CA's key)")
    issuer = TokenIssuer(name, token_key_uri(text), chain)
    try:
        return str(issuer.check())
    except PkiError as exc:  # wrong PIN, no token, no key, not the CA certificate's key
        raise InvalidInput(f"issuing CA {name!r}: {exc.message}") from None


def build_issuer(ca: IssuingCa, sealing: SealingKey) -> CertificateIssuer:
    """A working issuer for a stored object (ConfigError when its secret does not open). A
    pkcs11 CA logs in to its token at its first issuance, not here."""
    if ca.kind == "pkcs11":
        return _token_issuer(ca)
    secret = sealing.open(ca.sealed_secret, ca.name)
    if ca.kind == "local":
        return _local_issuer(ca, secret)
    return _cfssl_issuer(ca, secret)


def _secret(doc: Mapping[str, Any], field: str, before: IssuingCa | None, kind: str) -> Secret[str] | None:
    value = doc.get(field)
    if value is None or value == _MARKER:
        if before is None or before.kind != kind:
            raise InvalidInput(f"a {kind} issuing CA needs {field}")
        return None  # keep the sealed one
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string")
    return Secret(value)


def issuing_ca_from_request(
    name: str, doc: Mapping[str, Any], sealing: SealingKey, before: IssuingCa | None
) -> IssuingCa:
    """The object a PUT body describes, checked and with its secret sealed (see module doc)."""
    kind = doc.get("kind")
    if kind not in ISSUER_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(ISSUER_KINDS)}")
    unknown = sorted(set(doc) - _FIELDS[kind] - _ECHOED)
    if unknown:
        raise InvalidInput(f"a {kind} issuing CA has no field(s) {', '.join(map(repr, unknown))}")
    named = doc.get("name")
    if named is not None and named != name:
        raise InvalidInput(f"the body names {named!r} but the path names {name!r}")
    chain = certificates_from_pem_list(doc.get("caChain"), "caChain")
    try:
        check_ca_chain(chain, f"issuing CA {name!r}")
    except PkiError as exc:
        raise InvalidInput(exc.message) from None
    if kind == "pkcs11":
        return IssuingCa(name, "pkcs11", chain, "", pkcs11_uri=_checked_token_uri(name, doc, chain))
    if kind == "local":
        key_pem = doc.get("key")
        if key_pem is None and before is not None and before.kind == "local":
            key_pem = before.key_pem
        if not isinstance(key_pem, str) or "ENCRYPTED PRIVATE KEY" not in key_pem:
            raise InvalidInput("key must be the CA's encrypted PKCS#8 PEM key (as the CA toolkit stores it)")
        passphrase = _secret(doc, "passphrase", before, "local")
        if passphrase is None:
            assert before is not None
            passphrase = sealing.open(before.sealed_secret, name)
        ca = IssuingCa(name, "local", chain, sealing.seal(passphrase, name), key_pem=key_pem)
        _local_issuer(ca, passphrase)  # the passphrase opens the key, the key is the CA's
        return ca
    url, profile, timeout = doc.get("url"), doc.get("profile"), doc.get("timeoutSeconds", 10)
    if not isinstance(url, str) or not isinstance(profile, str):
        raise InvalidInput("a cfssl issuing CA needs url and profile (strings)")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidInput("timeoutSeconds must be a number")
    tls_ca = certificates_from_pem_list(doc.get("tlsCa") or [], "tlsCa")
    auth_key = _secret(doc, "authKey", before, "cfssl")
    if auth_key is None:
        assert before is not None
        auth_key = sealing.open(before.sealed_secret, name)
    ca = IssuingCa(
        name,
        "cfssl",
        chain,
        sealing.seal(auth_key, name),
        url=url,
        profile=profile,
        tls_ca=tls_ca,
        timeout_seconds=float(timeout),
    )
    _cfssl_issuer(ca, auth_key)  # checks the URL, the profile name, the key, the timeout
    return ca


class IssuerCache:
    """Issuers by CA object name, rebuilt when the stored object's etag changes."""

    def __init__(self, sealing: SealingKey) -> None:
        self._sealing = sealing
        self._built: dict[str, tuple[str | None, CertificateIssuer]] = {}
        self._lock = asyncio.Lock()

    async def issuer(self, ca: IssuingCa) -> CertificateIssuer:
        async with self._lock:
            found = self._built.get(ca.name)
            if found is not None and found[0] == ca.etag:
                return found[1]
            # Key decryption (scrypt) is CPU work: off the event loop. (A token logs in later.)
            built = await asyncio.to_thread(build_issuer, ca, self._sealing)
            self._built[ca.name] = (ca.etag, built)
        if found is not None:
            await found[1].close()
        return built

    async def close(self) -> None:
        built, self._built = self._built, {}
        for _, issuer in built.values():
            await issuer.close()
