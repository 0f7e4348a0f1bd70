"""The `--csr` part of bench/registrations.py: certificate issuance at registration (issue 18).

Per round, on the same server and devices: `n` X.509 registrations without a CSR, `n` with one
(the group's issuance policy is `optional`, so the same group serves both; a local issuing CA
signs), and `openssl x509 -req` signing the same kind of CSRs with the same CA, one process
per CSR (`concurrency` at a time): what a shell-script CA costs per certificate.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["csrs_for", "enable_issuance", "openssl_signing"]

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


