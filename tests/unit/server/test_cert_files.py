"""The server certificate from files, followed without a restart (server/cert_files.py).

Real handshakes on loopback: what a client sees is read from its own TLS session."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import PkiError
from iotdps.server.cert_files import CertificateFiles, CertificateReloader, check_pair, load_pair
from iotdps.server.tls import ServerTls

from .conftest import NOW, ec_key, key_pem, make_cert, pem, start_echo


def _issue(ca: tuple[x509.Certificate, object], cn: str = "localhost", **kw: object) -> tuple[x509.Certificate, object]:
    key = ec_key()
    return make_cert(cn, key, ca, server_names=("localhost", "127.0.0.1"), **kw), key  # type: ignore[arg-type]


def _ca(name: str) -> tuple[x509.Certificate, object]:
    key = ec_key()
    return make_cert(name, key, ca=True), key


def _write(d: Path, leaf: x509.Certificate, key: object, *chain: x509.Certificate) -> CertificateFiles:
    (d / "server.pem").write_bytes(pem(leaf, *chain))
    (d / "server.key").write_bytes(key_pem(key))  # type: ignore[arg-type]
    return CertificateFiles(d / "server.pem", d / "server.key")


async def _presented(port: int, ca: x509.Certificate) -> x509.Certificate:
    ctx = ssl.create_default_context(cadata=pem(ca).decode())
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


async def test_a_changed_pair_is_presented_to_new_handshakes(tmp_path: Path) -> None:
    ca = _ca("Corporate CA 1")
    leaf1, key1 = _issue(ca)
    files = _write(tmp_path, leaf1, key1, ca[0])
    tls = ServerTls(*load_pair(files))
    server, echo = await start_echo(tls)
    try:
        reloader = CertificateReloader(tls, lambda: files, settle=0.05)
        assert await _presented(echo.port, ca[0]) == leaf1
        assert not await reloader.poll()  # nothing changed

        ca2 = _ca("Corporate CA 2")
        leaf2, key2 = _issue(ca2)
        _write(tmp_path, leaf2, key2, ca2[0])
        assert await reloader.poll()
        assert await _presented(echo.port, ca2[0]) == leaf2
        # A client trusting only the first CA is refused at the handshake now.
        with pytest.raises(ssl.SSLCertVerificationError):
            await _presented(echo.port, ca[0])
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("problem", ["key_mismatch", "expired", "garbage", "missing_key", "out_of_order", "ca_leaf"])
async def test_a_bad_new_pair_keeps_the_old_chain_and_logs_one_error(
    tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    ca = _ca("Corporate CA")
    leaf1, key1 = _issue(ca)
    files = _write(tmp_path, leaf1, key1, ca[0])
    tls = ServerTls(*load_pair(files))
    server, echo = await start_echo(tls)
    try:
        reloader = CertificateReloader(tls, lambda: files, settle=0.05)
        leaf2, key2 = _issue(ca)
        if problem == "key_mismatch":
            _write(tmp_path, leaf2, ec_key(), ca[0])
        elif problem == "expired":
            old, old_key = _issue(ca, not_before=NOW - dt.timedelta(days=9), not_after=NOW - dt.timedelta(days=1))
            _write(tmp_path, old, old_key, ca[0])
        elif problem == "garbage":
            files.chain.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        elif problem == "missing_key":
            files.key.unlink()
        elif problem == "out_of_order":
            _write(tmp_path, leaf2, key2, ca[0])
            files.chain.write_bytes(pem(ca[0], leaf2))
            files.key.write_bytes(key_pem(key2))  # type: ignore[arg-type]
        else:
            ca_key = ec_key()
            _write(tmp_path, make_cert("a CA", ca_key, ca=True), ca_key)
        caplog.set_level(logging.INFO, "iotdps.server.tls")
        assert not await reloader.poll()
        assert not await reloader.poll()  # the same bad files are not tried (or logged) again
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        assert "previous one stays in service" in errors[0].getMessage()
        assert "PRIVATE KEY" not in caplog.text
        assert await _presented(echo.port, ca[0]) == leaf1

        # Fixed files are picked up.
        _write(tmp_path, leaf2, key2, ca[0])
        assert await reloader.poll()
        assert await _presented(echo.port, ca[0]) == leaf2
    finally:
        server.close()
        await server.wait_closed()


async def test_files_still_being_written_are_not_loaded_until_they_settle(tmp_path: Path) -> None:
    ca = _ca("CA")
    leaf1, key1 = _issue(ca)
    files = _write(tmp_path, leaf1, key1, ca[0])
    tls = ServerTls(*load_pair(files))
    reloader = CertificateReloader(tls, lambda: files, settle=0.3)
    leaf2, key2 = _issue(ca)

    async def certbot_like() -> None:
        # The certificate first, the key a moment later: in between they do not match.
        files.chain.write_bytes(pem(leaf2, ca[0]))
        await asyncio.sleep(0.1)
        files.key.write_bytes(key_pem(key2))  # type: ignore[arg-type]

    writer = asyncio.create_task(certbot_like())
    assert not await reloader.poll()  # changed again while settling: not loaded, not failed
    await writer
    assert await reloader.poll()
    assert tls.server_chain[0] == leaf2


def test_check_pair_words(tmp_path: Path) -> None:
    ca = _ca("CA")
    leaf, key = _issue(ca)
    with pytest.raises(PkiError, match="does not match"):
        check_pair([leaf], ec_key(), tmp_path / "x.pem")
    with pytest.raises(PkiError, match="no certificate"):
        check_pair([], key, tmp_path / "x.pem")  # type: ignore[arg-type]
    check_pair([leaf, ca[0]], key, tmp_path / "x.pem")  # type: ignore[arg-type]


def test_an_encrypted_key_opens_with_the_environment_passphrase(tmp_path: Path) -> None:
    ca = _ca("CA")
    leaf, key = _issue(ca)
    (tmp_path / "s.pem").write_bytes(pem(leaf, ca[0]))
    (tmp_path / "s.key").write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    env = {"IOTDPS_TLS_KEY_PASSPHRASE": "correct horse"}
    chain, _ = load_pair(CertificateFiles.with_env_passphrase(tmp_path / "s.pem", tmp_path / "s.key", env))
    assert chain[0] == leaf
    with pytest.raises(PkiError) as err:
        load_pair(CertificateFiles.with_env_passphrase(tmp_path / "s.pem", tmp_path / "s.key", {}))
    assert "correct horse" not in str(err.value)
    assert os.environ.get("IOTDPS_TLS_KEY_PASSPHRASE") is None
