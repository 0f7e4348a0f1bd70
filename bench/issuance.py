"""The `--csr` part of bench/registrations.py: certificate issuance at registration (issue 18).

Per round, on the same server and devices: `n` X.509 registrations without a CSR, `n` with one
(the group's issuance policy is `optional`, so the same group serves both; a local issuing CA
signs), and `openssl x509 -req` signing the same kind of CSRs with the same CA, one process
per CSR (`concurrency` at a time): what a shell-script CA costs per certificate.

With `--hsm` (`enable_token_issuance`), the same CA key is also imported into a fresh SoftHSM2
token and a `pkcs11` issuing CA object names it; the group's policy is switched to it for a
third batch, so the run prints token-signed issuance next to file-key issuance. The server logs
in with IOTDPS_PKCS11_* from its environment, set here before `iotdps up` starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization

import _harness as h
from iotdps.audit import Actor
from iotdps.device.fleet import Fleet
from iotdps.device.issued import new_key_and_csr
from iotdps.issuance.admin import put_issuing_ca
from iotdps.issuance.sealing import SEALING_KEY_FILE, SealingKey
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.csr_policy import CsrRequirement, IssuancePolicy
from iotdps.pki.keys import encode_private_key
from iotdps.provisioning.admin import put_group
from iotdps.secret import Secret
from iotdps.store import open_store

__all__ = [
    "csrs_for",
    "enable_issuance",
    "enable_token_issuance",
    "issued_by",
    "openssl_signing",
    "token_environment",
    "use_issuer",
]

_PASS = "bench-issuing-pass"


async def enable_issuance(server: h.Iotdps, fleet: Fleet, work: Path) -> Issuer:
    """A local issuing CA on the server and an optional issuance policy on the fleet's group."""
    key = generate_private_key()
    ca = Issuer(create_root_ca("bench issuing CA", key, Validity.days(30)), key)
    store = await open_store(server.dsn, create=False)
    try:
        body = {
            "kind": "local",
            "caChain": [ca.certificate.public_bytes(serialization.Encoding.PEM).decode()],
            "key": encode_private_key(key, Secret(_PASS)).decode(),
            "passphrase": _PASS,
        }
        sealing = SealingKey.load_or_create(server.data_dir / SEALING_KEY_FILE)
        await put_issuing_ca(store, sealing, "bench-ca", body, actor=Actor("local", "bench"))
        async with store.begin() as uow:
            group = await uow.groups.get(fleet.group_id)
        assert group is not None
        policy = IssuancePolicy("bench-ca", 7, csr_requirement=CsrRequirement.OPTIONAL)
        bench = Actor("local", "bench")
        await put_group(store, replace(group, settings=replace(group.settings, issuance_policy=policy)), actor=bench)
    finally:
        await store.close()
    (work / "issuing-ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    (work / "issuing-ca.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca


_TOKEN, _PIN = "bench-issuing", "bench-issuing-pin-1"


def token_environment(work: Path) -> None:
    """A SoftHSM2 token for the issuing CA, and IOTDPS_PKCS11_* naming it in this process's
    environment, which `iotdps up` inherits: call before the server starts."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from iotdps_testing.softhsm import SOFTHSM_MODULE, start_softhsm

    hsm = start_softhsm(work / "softhsm")  # sets SOFTHSM2_CONF before any module loads
    hsm.init_token(_TOKEN, user_pin=_PIN)
    os.environ.update({"IOTDPS_PKCS11_MODULE": str(SOFTHSM_MODULE), "IOTDPS_PKCS11_PIN": _PIN})


async def enable_token_issuance(server: h.Iotdps, ca: Issuer) -> None:
    """`ca`'s key imported into the token (sensitive, non-extractable) as the issuing CA bench-hsm-ca."""
    from iotdps.pki.pkcs11 import Pkcs11Token
    from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Uri

    assert ca.private_key is not None
    with Pkcs11Token.open(Pkcs11Config.from_env(), Pkcs11Uri(token=_TOKEN)) as token:
        token.import_key(ca.private_key, label="bench-ca")
    store = await open_store(server.dsn, create=False)
    try:
        body = {
            "kind": "pkcs11",
            "caChain": [ca.certificate.public_bytes(serialization.Encoding.PEM).decode()],
            "pkcs11Uri": f"pkcs11:token={_TOKEN};object=bench-ca",
        }
        sealing = SealingKey.load_or_create(server.data_dir / SEALING_KEY_FILE)
        await put_issuing_ca(store, sealing, "bench-hsm-ca", body, actor=Actor("local", "bench"))
    finally:
        await store.close()


async def use_issuer(server: h.Iotdps, fleet: Fleet, name: str) -> None:
    """Point the fleet's group's issuance policy at issuing CA `name`."""
    store = await open_store(server.dsn, create=False)
    try:
        async with store.begin() as uow:
            group = await uow.groups.get(fleet.group_id)
        assert group is not None
        policy = IssuancePolicy(name, 7, csr_requirement=CsrRequirement.OPTIONAL)
        settings = replace(group.settings, issuance_policy=policy)
        await put_group(store, replace(group, settings=settings), actor=Actor("local", "bench"))
    finally:
        await store.close()


async def issued_by(server: h.Iotdps, registration_id: str) -> str | None:
    """The kind of issuing CA that signed `registration_id`'s newest certificate."""
    store = await open_store(server.dsn, create=False)
    try:
        async with store.read() as uow:
            found = await uow.issued_certificates.list(registration_id, 1)
    finally:
        await store.close()
    return found[0].issuer_kind if found else None


def csrs_for(registration_ids: list[str]) -> list[str]:
    return [new_key_and_csr(rid)[1] for rid in registration_ids]


async def openssl_signing(work: Path, csrs: list[str], concurrency: int) -> tuple[int, float]:
    """Sign every CSR with `openssl x509 -req`, one process each; (signed, seconds)."""
    directory = work / "openssl-csrs"
    directory.mkdir(exist_ok=True)
    paths = []
    for i, csr in enumerate(csrs):
        body = "\n".join(csr[j : j + 64] for j in range(0, len(csr), 64))
        path = directory / f"{i}.csr"
        path.write_text(f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n")
        paths.append(path)
    gate = asyncio.Semaphore(max(1, concurrency))
    signed = 0

    async def one(i: int, path: Path) -> None:
        nonlocal signed
        async with gate:
            process = await asyncio.create_subprocess_exec(
                "openssl", "x509", "-req", "-in", str(path), "-CA", str(work / "issuing-ca.pem"),
                "-CAkey", str(work / "issuing-ca.key"), "-days", "7", "-sha256",
                "-set_serial", str(1000 + i), "-out", str(path.with_suffix(".pem")),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await process.wait() == 0:
                signed += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    return signed, time.perf_counter() - start
