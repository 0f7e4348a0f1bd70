"""An issuing CA reached over CFSSL's HTTP API (`cfssl serve`), with its authenticated endpoint.

The operator configures what seed 002's diagram calls a CA object: the server's URL, an API
key and a signing profile. We POST to `/api/v1/cfssl/authsign`:

    {"token": base64(HMAC-SHA256(key, request)), "request": base64(request)}

where `request` is the JSON sign request `{"certificate_request": PEM, "profile": name,
"hosts": []}` and the key is the profile's hex `auth_key` decoded to bytes (CFSSL's "standard"
auth provider: HMAC over the request bytes; the two byte fields travel base64-encoded, as Go
encodes []byte in JSON). Verified against Debian's golang-cfssl 1.2.0: the HMAC is over the
decoded request bytes, a wrong key is a 400 `invalid token`, a profile policy refusal is a 400
with CFSSL's code (5300 policy violation, 5500 whitelist), a success is
`{"success": true, "result": {"certificate": PEM}}`.

Facts about that CFSSL that shape the request:
* `"hosts": []` replaces the CSR's requested SANs with none; without it CFSSL copies them
  into the certificate (and a profile `name_whitelist` is matched against them).
* An unknown profile name falls back to the config's default profile, silently. So the
  answer is checked (`check_issued`: clientAuth, validity within the policy, chain) rather
  than trusted; give the default profile an auth key nobody has.
* The validity is the profile's `expiry`; the request cannot shorten it (1.2.0 ignores
  `expiry`/`not_after`), so a profile longer than the policy is a bad response.
* The CSR's subject is copied whole (O, OU... beside the CN); only the CN is checked here.

CFSSL returns only the leaf, so the chain above it (issuing CA first, ending at the root) is
configuration, checked once; every leaf must be signed by its first certificate.

Errors: no connection, a timeout or a 5xx is CA_UNREACHABLE (retry later); a 4xx is
CA_REFUSED with CFSSL's own message and code; anything else is CA_BAD_RESPONSE. The API key
appears in no message and no repr. Plain http is allowed only to a loopback address: the
HMAC does not hide the request, and TLS (1.2 or later) is how the CA is authenticated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509

from iotdps.errors import InvalidInput
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile
from iotdps.pki.encoding import certs_to_pem
from iotdps.pki.issuing.base import IssuanceError, IssuanceFailure, IssuedChain, check_ca_chain, check_issued
from iotdps.secret import Secret

__all__ = ["AUTHSIGN_PATH", "CfsslIssuer", "cfssl_auth_token"]

AUTHSIGN_PATH = "/api/v1/cfssl/authsign"
_MAX_BODY = 256 * 1024  # a certificate answer is ~1 KB; never buffer more than this
_MAX_WORDS = 300  # CFSSL's message, cut to a log-line's worth
_PROFILE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def cfssl_auth_token(key: bytes, request: bytes) -> bytes:
    """CFSSL's standard auth token: HMAC-SHA256 of the request bytes under the decoded key."""
    return hmac.new(key, request, hashlib.sha256).digest()


def _decode_key(auth_key: Secret[str]) -> bytes:
    if not isinstance(auth_key, Secret):
        raise TypeError("auth_key must be a Secret[str] (the profile's hex auth key)")
    text = auth_key.reveal()
    try:
        key = bytes.fromhex(text.strip()) if isinstance(text, str) else b""
    except ValueError:
        raise InvalidInput("the CFSSL auth key is not hexadecimal") from None
    if len(key) < 16:
        # CFSSL accepts any non-empty key; a short one is guessable, so we refuse it here.
        raise InvalidInput("the CFSSL auth key is shorter than 16 bytes (32 hex digits)")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str) -> tuple[str, str]:
    """The authsign URL and "host:port" for messages, from the server's base URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"the CFSSL URL {url!r} must be http(s)://host[:port][/prefix]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput("the CFSSL URL may not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise InvalidInput("a CFSSL server that is not on this machine must be reached over https")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"the CFSSL URL {url!r} has an invalid port") from None
    where = f"{parts.hostname}:{port or (443 if parts.scheme == 'https' else 80)}"
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{AUTHSIGN_PATH}", where


def _words(text: object) -> str:
    """CFSSL's text, safe for a log line: printable ASCII, bounded."""
    raw = str(text)
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in raw)
    return clean[:_MAX_WORDS] + ("..." if len(clean) > _MAX_WORDS else "")


def _cfssl_errors(doc: Any) -> str:
    """`message (code N)` for each of CFSSL's errors, or "" when it gave none."""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    out = []
    for err in errors[:3]:
        if isinstance(err, dict):
            out.append(f"{_words(err.get('message', ''))} (code {_words(err.get('code', '?'))})")
    return "; ".join(out)


class CfsslIssuer:
    """A CertificateIssuer over a CFSSL server's authsign endpoint (see the module docstring).

    `ca_chain`: the certificate of the CA that CFSSL signs with, then its parents, ending at the
    root. `tls_ca`: trust anchors for an https server (default: the system's). `timeout`: for
    the whole request, connection included.
    """

    kind = "cfssl"

    def __init__(
        self,
        name: str,
        url: str,
        auth_key: Secret[str],
        profile: str,
        ca_chain: Sequence[x509.Certificate],
        *,
        timeout: float = 10.0,
        tls_ca: Sequence[x509.Certificate] | None = None,
    ) -> None:
        self._name = check_ca_name(name)
        self._url, self._where = _check_url(url)
        self._key = _decode_key(auth_key)
        if not profile or len(profile) > 64 or not set(profile) <= _PROFILE_CHARS:
            raise InvalidInput(f"the CFSSL profile name {profile!r} must be 1-64 letters, digits, '.', '_' or '-'")
        self._profile = profile
        self._chain = check_ca_chain(ca_chain, f"issuing CA {name!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise InvalidInput("the CFSSL timeout must be between 0 and 300 seconds")
        self._timeout = float(timeout)
        self._ssl: ssl.SSLContext | None = None
        if self._url.startswith("https:"):
            if tls_ca is not None:
                ctx = ssl.create_default_context(cadata=certs_to_pem(list(tls_ca)).decode("ascii"))
            else:
                ctx = ssl.create_default_context()
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl = ctx
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"CfsslIssuer(name={self._name!r}, url={self._url!r}, profile={self._profile!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> str:
        return self._profile

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def _failure(self, reason: IssuanceFailure, message: str) -> IssuanceError:
        return IssuanceError(reason, self._name, message)

    def _body(self, csr: AcceptedCsr) -> bytes:
        request = json.dumps(
            {"certificate_request": csr.pem, "profile": self._profile, "hosts": []}, separators=(",", ":")
        ).encode("utf-8")
        token = cfssl_auth_token(self._key, request)
        doc = {"token": base64.b64encode(token).decode("ascii"), "request": base64.b64encode(request).decode("ascii")}
        return json.dumps(doc).encode("utf-8")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        session = self._get_session()
        try:
            async with asyncio.timeout(self._timeout):
                async with session.post(
                    self._url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as response:
                    return response.status, await response.content.read(_MAX_BODY + 1)
        except TimeoutError:
            raise self._failure(
                IssuanceFailure.CA_UNREACHABLE, f"no answer from CFSSL at {self._where} within {self._timeout:g} s"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise self._failure(
                IssuanceFailure.CA_UNREACHABLE, f"TLS with CFSSL at {self._where} failed: {_words(exc)}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            cause = type(exc.__cause__ or exc).__name__
            raise self._failure(
                IssuanceFailure.CA_UNREACHABLE, f"cannot reach CFSSL at {self._where} ({cause})"
            ) from None

    async def issue(self, csr: AcceptedCsr, profile: IssuanceProfile) -> IssuedChain:
        if not isinstance(csr, AcceptedCsr):
            raise TypeError("issue() takes an AcceptedCsr (from csr_policy.vet_csr)")
        status, raw = await self._post(self._body(csr))
        if len(raw) > _MAX_BODY:
            raise self._failure(
                IssuanceFailure.CA_BAD_RESPONSE, f"CFSSL answered {status} with more than {_MAX_BODY} bytes"
            )
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            doc = None
        if 500 <= status <= 599:
            said = _cfssl_errors(doc) or "no error text"
            raise self._failure(IssuanceFailure.CA_UNREACHABLE, f"CFSSL answered {status}: {said}")
        if 400 <= status <= 499:
            said = _cfssl_errors(doc) or "no error text"
            raise self._failure(IssuanceFailure.CA_REFUSED, f"CFSSL refused ({status}): {said}")
        if status != 200 or not isinstance(doc, dict):
            raise self._failure(IssuanceFailure.CA_BAD_RESPONSE, f"CFSSL answered {status} without a JSON object")
        result = doc.get("result")
        pem = result.get("certificate") if isinstance(result, dict) else None
        if doc.get("success") is not True or not isinstance(pem, str):
            said = _cfssl_errors(doc) or "no certificate in the result"
            raise self._failure(IssuanceFailure.CA_BAD_RESPONSE, f"CFSSL answered 200 without success: {said}")
        try:
            certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise self._failure(IssuanceFailure.CA_BAD_RESPONSE, "CFSSL's certificate is not valid PEM") from None
        if len(certs) != 1:
            raise self._failure(IssuanceFailure.CA_BAD_RESPONSE, f"CFSSL returned {len(certs)} certificates, not one")
        return check_issued(self._name, certs[0], self._chain, csr, profile)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
