"""CfsslIssuer against a real CFSSL (`cfssl serve`, Debian golang-cfssl) on loopback, over TLS.

What came back is judged by `openssl verify`; each failure mode maps to its reason: a wrong
auth key and a CSR the CFSSL profile refuses are CA_REFUSED, a stopped server or one that never
answers is CA_UNREACHABLE within the timeout, and an answer that is not a certificate for this
CSR under the configured chain is CA_BAD_RESPONSE.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from iotdps.errors import InvalidInput
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile, vet_csr
from iotdps.pki.issuing import CertificateIssuer, CfsslIssuer, IssuanceError, IssuanceFailure
from iotdps.secret import Secret
from iotdps_testing.cfssl import CfsslServer, running_cfssl
from iotdps_testing.issuance import make_csr, openssl_verify
from iotdps_testing.net import free_port

pytestmark = pytest.mark.e2e

WHITELIST = r"^dev-[0-9]+$"  # the CFSSL profile signs only these CNs


@pytest.fixture(scope="module")
def cfssl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CfsslServer]:
    with running_cfssl(tmp_path_factory.mktemp("cfssl"), name_whitelist=WHITELIST) as server:
        yield server


def accepted(cn: str = "dev-1", **kw: object) -> AcceptedCsr:
    return vet_csr(make_csr(cn, **kw), cn)  # type: ignore[arg-type]


async def failure(issuer: CfsslIssuer, csr: AcceptedCsr | None = None, days: int = 30) -> IssuanceError:
    try:
        with pytest.raises(IssuanceError) as caught:
            await issuer.issue(csr or accepted(), IssuanceProfile(days))
    finally:
        await issuer.close()
    return caught.value


async def test_issued_chain_verifies_with_openssl(tmp_path: Path, cfssl: CfsslServer) -> None:
    issuer = cfssl.issuer()
    assert isinstance(issuer, CertificateIssuer)
    assert cfssl.url.startswith("https://")
    try:
        csr = accepted("dev-1")
        chain = await issuer.issue(csr, IssuanceProfile(30))
        # A second issuance on the same pooled connection; an RSA device key this time.
        rsa_csr = accepted("dev-2", key=rsa.generate_private_key(65537, 2048))
        second = await issuer.issue(rsa_csr, IssuanceProfile(30))
    finally:
        await issuer.close()
    assert chain.leaf.public_key() == csr.public_key()
    assert chain.intermediates == (cfssl.issuing.certificate,) and chain.root == cfssl.root.certificate
    assert chain.issuer_name == "cfssl-ca"
    for name, issued in (("ec", chain), ("rsa", second)):
        result = openssl_verify(tmp_path, issued.certificates[:-1], [cfssl.root.certificate], name=name)
        assert result.returncode == 0, result.stderr
    assert second.serial_number != chain.serial_number


async def test_requested_hosts_are_dropped(cfssl: CfsslServer) -> None:
    csr = accepted(extensions=[(x509.SubjectAlternativeName([x509.DNSName("dps.example.com")]), False)])
    issuer = cfssl.issuer()
    try:
        leaf = (await issuer.issue(csr, IssuanceProfile(30))).leaf
    finally:
        await issuer.close()
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


async def test_wrong_auth_key_is_refused(cfssl: CfsslServer) -> None:
    err = await failure(cfssl.issuer(auth_key=secrets.token_hex(32)))
    assert err.reason is IssuanceFailure.CA_REFUSED and not err.retryable
    assert "invalid token" in err.message
    assert cfssl.auth_key not in err.message and cfssl.auth_key not in repr(cfssl.issuer())


async def test_csr_the_cfssl_profile_refuses(cfssl: CfsslServer) -> None:
    # A valid registration id that CFSSL's name_whitelist does not allow.
    err = await failure(cfssl.issuer(), accepted("rogue-1"))
    assert err.reason is IssuanceFailure.CA_REFUSED
    assert "whitelist" in err.message and "5500" in err.message


async def test_unknown_profile_is_refused_not_signed_by_the_default(cfssl: CfsslServer) -> None:
    err = await failure(cfssl.issuer(profile="no-such-profile"))
    assert err.reason is IssuanceFailure.CA_REFUSED


async def test_profile_longer_than_the_policy_is_a_bad_response(cfssl: CfsslServer) -> None:
    err = await failure(cfssl.issuer(), days=7)  # CFSSL's profile gives 30 days
    assert err.reason is IssuanceFailure.CA_BAD_RESPONSE
    assert "more than the policy's 7" in err.message


async def test_leaf_from_another_ca_than_configured_is_a_bad_response(cfssl: CfsslServer) -> None:
    key = generate_private_key()
    stranger = Issuer(create_root_ca("Stranger Root", key, Validity.days(10)), key)
    err = await failure(cfssl.issuer(ca_chain=(stranger.certificate,)))
    assert err.reason is IssuanceFailure.CA_BAD_RESPONSE
    assert "not signed by the configured CA" in err.message


async def test_untrusted_tls_server_is_unreachable(cfssl: CfsslServer) -> None:
    key = generate_private_key()
    other_anchor = create_root_ca("Other TLS CA", key, Validity.days(10))
    err = await failure(cfssl.issuer(tls_ca=other_anchor))
    assert err.reason is IssuanceFailure.CA_UNREACHABLE
    assert "TLS" in err.message


async def test_stopped_cfssl_is_unreachable_within_the_timeout(tmp_path: Path) -> None:
    with running_cfssl(tmp_path / "cfssl", tls=False) as server:
        issuer = server.issuer(timeout=3.0)
        try:
            assert server.url.startswith("http://")
            first = await issuer.issue(accepted(), IssuanceProfile(30))  # plain http to loopback works
            server.stop()
            started = time.monotonic()
            with pytest.raises(IssuanceError) as caught:
                await issuer.issue(accepted(), IssuanceProfile(30))
            elapsed = time.monotonic() - started
            assert caught.value.reason is IssuanceFailure.CA_UNREACHABLE and caught.value.retryable
            assert f"{server.host}:{server.port}" in caught.value.message
            assert elapsed < 3.0
            # Back up: the same issuer works again (the retry a registration will make).
            server.start()
            again = await issuer.issue(accepted(), IssuanceProfile(30))
            assert again.serial_number != first.serial_number
        finally:
            await issuer.close()


# --------------------------------------------------------------------------- answers CFSSL would not give


@pytest.fixture
async def fake_ca() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """A loopback HTTP server answering the authsign path with whatever a test puts in `state`;
    `hang` makes it accept the request and never answer."""
    state: dict[str, object] = {"status": 200, "body": b"{}", "hang": False}
    release = asyncio.Event()  # set at teardown, so a hanging handler ends and cleanup is quick

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if state["hang"]:
            await asyncio.wait_for(release.wait(), timeout=60)
        return web.Response(status=int(state["status"]), body=state["body"])  # type: ignore[call-overload]

    app = web.Application()
    app.router.add_post("/api/v1/cfssl/authsign", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        release.set()
        await runner.cleanup()


def fake_issuer(url: str, cfssl: CfsslServer, timeout: float = 5.0) -> CfsslIssuer:
    return CfsslIssuer("fake-ca", url, Secret(secrets.token_hex(16)), "device", cfssl.ca_chain, timeout=timeout)


@pytest.mark.parametrize(
    ("status", "body", "reason", "words"),
    [
        (503, b'{"success":false,"errors":[{"code":1,"message":"overloaded"}]}', "CA_UNREACHABLE", "overloaded"),
        (200, b"<html>not json</html>", "CA_BAD_RESPONSE", "without a JSON object"),
        (200, b'{"success":true,"result":{}}', "CA_BAD_RESPONSE", "no certificate"),
        (
            200,
            b'{"success":true,"result":{"certificate":"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END'
            b' CERTIFICATE-----\\n"}}',
            "CA_BAD_RESPONSE",
            "not valid PEM",
        ),
        (302, b"", "CA_BAD_RESPONSE", "302"),
        (403, b"forbidden\x1b[31m", "CA_REFUSED", "no error text"),
    ],
)
async def test_answers_that_are_not_certificates(
    fake_ca: tuple[str, dict[str, object]],
    cfssl: CfsslServer,
    status: int,
    body: bytes,
    reason: str,
    words: str,
) -> None:
    url, state = fake_ca
    state.update(status=status, body=body)
    err = await failure(fake_issuer(url, cfssl))
    assert err.reason.value == reason
    assert words in err.message
    assert "\x1b" not in err.message


async def test_server_that_never_answers_is_unreachable_within_the_timeout(
    fake_ca: tuple[str, dict[str, object]], cfssl: CfsslServer
) -> None:
    url, state = fake_ca
    state["hang"] = True
    started = time.monotonic()
    err = await failure(fake_issuer(url, cfssl, timeout=1.0))
    elapsed = time.monotonic() - started
    assert err.reason is IssuanceFailure.CA_UNREACHABLE and "within 1 s" in err.message
    assert 0.9 <= elapsed < 3.0


@pytest.mark.parametrize(
    ("url", "key", "words"),
    [
        ("http://ca.example.com:8888", "00" * 16, "over https"),
        ("ftp://127.0.0.1", "00" * 16, "http(s)"),
        ("https://user:pw@127.0.0.1", "00" * 16, "credentials"),
        ("https://127.0.0.1", "zq" * 16, "not hexadecimal"),
        ("https://127.0.0.1", "00" * 8, "shorter than 16 bytes"),
    ],
)
def test_configuration_errors(cfssl: CfsslServer, url: str, key: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(words)) as caught:
        CfsslIssuer("bad-ca", url, Secret(key), "device", cfssl.ca_chain)
    assert key not in caught.value.message  # the API key never appears in an error
