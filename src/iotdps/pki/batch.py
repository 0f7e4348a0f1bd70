"""Minting device credentials in bulk, on every core.

A factory flashes thousands of devices a shift; each needs a fresh key, a certificate and the
chain. The work is CPU-bound (key generation and one signature per device), so it runs in a
process pool. The CA key is unlocked once in the parent, never per certificate: workers inherit
the ready Issuer through fork (on platforms without fork they receive the key over their own
pipe, never through a file). A CA key in a PKCS#11 token cannot cross fork() that way (a
session belongs to the process that opened it), so each worker opens its own session to the
same key (`ReopenableSigner.reopen`) and signs through it. Results come back in order, in
chunks, so the caller can write them and drive a progress bar while the workers continue.
`mint_packed` also lets the workers turn each chunk into what the caller stores (archive
bytes, say): the parent process then only appends, where packing 20,000 devices' archive
members took it most of a core (bench/mint.py).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import InvalidInput, PkiError
from iotdps.ids import check_registration_id
from iotdps.pki.encoding import certs_to_pem, der_thumbprints, utc_text
from iotdps.pki.external_signing import ReopenableSigner
from iotdps.pki.issuer import Issuer, Validity
from iotdps.pki.keys import KeySpec, encode_private_key, generate_private_key
from iotdps.pki.profiles import MAX_CN_LENGTH
from iotdps.pki.template import DeviceTemplate, der_to_pem
from iotdps.secret import Secret

__all__ = ["MintedDevice", "mint_device", "mint_devices", "mint_packed"]

_T = TypeVar("_T")


@dataclass(frozen=True, repr=False, slots=True)
class MintedDevice:
    """One device's credentials: its key (PEM PKCS#8) and its bundle (leaf + intermediates)."""

    registration_id: str
    key_pem: bytes
    chain_pem: bytes
    serial_number: str
    sha1_thumbprint: str
    sha256_thumbprint: str
    not_after_utc: str

    def __repr__(self) -> str:
        return f"MintedDevice({self.registration_id!r}, sha256={self.sha256_thumbprint[:16]}...)"


@dataclass(frozen=True)
class _Job:
    issuer: Issuer
    validity: Validity
    key_spec: KeySpec
    device_passphrase: Secret[str] | None
    tail_pem: bytes
    template: DeviceTemplate
    not_after_utc: str


def _job(issuer: Issuer, validity: Validity, key_spec: KeySpec, device_passphrase: Secret[str] | None) -> _Job:
    rsa_subject = key_spec in (KeySpec.RSA2048, KeySpec.RSA3072)
    return _Job(
        issuer,
        validity,
        key_spec,
        device_passphrase,
        certs_to_pem(issuer.bundle),
        DeviceTemplate(issuer, validity, rsa_subject=rsa_subject),
        utc_text(validity.not_after),
    )


def mint_device(
    issuer: Issuer,
    registration_id: str,
    validity: Validity,
    *,
    key_spec: KeySpec = KeySpec.P256,
    device_passphrase: Secret[str] | None = None,
    clamp: bool = False,
) -> MintedDevice:
    """Generate a key and issue its device certificate; return both with the chain."""
    check_registration_id(registration_id)
    job = _job(issuer, validity.within(issuer.certificate, clamp=clamp), key_spec, device_passphrase)
    return _mint_one(job, registration_id)


def _mint_one(job: _Job, registration_id: str) -> MintedDevice:
    """Key, certificate (through the template: see template.py for why) and chain for one device.

    `registration_id` was validated by the caller; the CN length limit is checked here because
    the template encoder does not go through the profile's name checks.
    """
    if len(registration_id) > MAX_CN_LENGTH:
        raise InvalidInput(f"registration id {registration_id[:20]!r}... is longer than a CN may be ({MAX_CN_LENGTH})")
    key = generate_private_key(job.key_spec)
    serial = x509.random_serial_number()  # 159 bits from os.urandom
    der = job.template.certificate_der(serial, registration_id, key.public_key())
    sha1, sha256 = der_thumbprints(der)
    return MintedDevice(
        registration_id=registration_id,
        key_pem=encode_private_key(key, job.device_passphrase, bulk=True),
        chain_pem=der_to_pem(der) + job.tail_pem,
        serial_number=format(serial, "X"),
        sha1_thumbprint=sha1,
        sha256_thumbprint=sha256,
        not_after_utc=job.not_after_utc,
    )


# Set in the parent before the pool forks (inherited) or by _init_worker (spawned workers).
_WORKER_JOB: _Job | None = None
_WORKER_PACK: Callable[[list[MintedDevice]], Any] | None = None


def _init_worker(
    job_parts: tuple[bytes, bytes, Validity, KeySpec, str | None, str | None, str | None] | None,
    pack: Callable[[list[MintedDevice]], Any] | None = None,
) -> None:
    global _WORKER_JOB, _WORKER_PACK
    if job_parts is None:  # forked: the job and the packer are already in this process's memory
        job = _WORKER_JOB
        if job is not None and isinstance(job.issuer.key, ReopenableSigner):
            # The parent's token session is not ours: log in again and sign through our own.
            issuer = dataclasses.replace(job.issuer, key=job.issuer.key.reopen())
            _WORKER_JOB = _job(issuer, job.validity, job.key_spec, job.device_passphrase)
        return
    _WORKER_PACK = pack
    chain_pem, key_der, validity, spec, dev_pw, name, crl_url = job_parts
    certs = x509.load_pem_x509_certificates(chain_pem)
    key = serialization.load_der_private_key(key_der, None)
    issuer = Issuer(certs[0], key, tuple(certs[1:]), name=name, crl_url=crl_url)  # type: ignore[arg-type]
    _WORKER_JOB = _job(issuer, validity, spec, Secret(dev_pw) if dev_pw is not None else None)


def _mint_chunk(ids: list[str]) -> Any:
    job = _WORKER_JOB
    assert job is not None, "worker not initialised"
    minted = [_mint_one(job, rid) for rid in ids]
    return minted if _WORKER_PACK is None else _WORKER_PACK(minted)


def mint_devices(
    issuer: Issuer,
    registration_ids: Sequence[str],
    validity: Validity,
    *,
    key_spec: KeySpec = KeySpec.P256,
    device_passphrase: Secret[str] | None = None,
    workers: int | None = None,
    chunk: int | None = None,
    clamp: bool = False,
) -> Iterator[list[MintedDevice]]:
    """Mint one device per registration id; yield lists of results in input order.

    Every id is validated before any work starts, so a typo on line 9,000 of an id list fails
    the batch up front. `workers` defaults to the number of usable cores; 1 runs in-process.
    """
    yield from _mint(issuer, registration_ids, validity, key_spec, device_passphrase, workers, chunk, clamp, None)


def mint_packed(
    issuer: Issuer,
    registration_ids: Sequence[str],
    validity: Validity,
    pack: Callable[[list[MintedDevice]], _T],
    *,
    key_spec: KeySpec = KeySpec.P256,
    device_passphrase: Secret[str] | None = None,
    workers: int | None = None,
    chunk: int | None = None,
    clamp: bool = False,
) -> Iterator[_T]:
    """mint_devices, with `pack(chunk)` applied to each chunk where it was minted (in the
    worker process), yielding what it returns, in input order. `pack` must be a module-level
    function (or a functools.partial of one) for a spawned worker to receive it."""
    yield from _mint(issuer, registration_ids, validity, key_spec, device_passphrase, workers, chunk, clamp, pack)


def _mint(
    issuer: Issuer,
    registration_ids: Sequence[str],
    validity: Validity,
    key_spec: KeySpec,
    device_passphrase: Secret[str] | None,
    workers: int | None,
    chunk: int | None,
    clamp: bool,
    pack: Callable[[list[MintedDevice]], Any] | None,
) -> Iterator[Any]:
    ids = [check_registration_id(r) for r in registration_ids]
    dupes = len(ids) - len(set(ids))
    if dupes:
        raise InvalidInput(f"{dupes} registration id(s) appear more than once in the batch")
    validity = validity.within(issuer.certificate, clamp=clamp)
    job = _job(issuer, validity, key_spec, device_passphrase)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if chunk is None:
        # Large tasks amortise the pool's per-task cost (measured: 128 per task ran at 60% of
        # the speed of 512); a few tasks per worker still keep the progress bar moving.
        chunk = max(32, min(1024, len(ids) // (max(1, workers) * 4) or 1))
    if chunk < 1:
        raise InvalidInput("chunk must be at least 1")
    chunks = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    n_workers = max(1, min(workers, len(chunks)))
    if n_workers == 1:
        for part in chunks:
            minted = [_mint_one(job, rid) for rid in part]
            yield minted if pack is None else pack(minted)
        return
    global _WORKER_JOB, _WORKER_PACK
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods:
        ctx: multiprocessing.context.BaseContext = multiprocessing.get_context("fork")
        _WORKER_JOB, _WORKER_PACK = job, pack
        initargs: tuple[object, ...] = (None,)
    else:  # pragma: no cover - Windows; the key goes over the worker's own pipe
        ctx = multiprocessing.get_context("spawn")
        if issuer.private_key is None:
            raise PkiError("minting on several workers with a token-held CA key needs fork(); use one worker")
        key_der = issuer.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pw = device_passphrase.reveal() if device_passphrase is not None else None
        initargs = ((certs_to_pem(issuer.chain), key_der, validity, key_spec, pw, issuer.name, issuer.crl_url), pack)
    try:
        with ctx.Pool(n_workers, initializer=_init_worker, initargs=initargs) as pool:
            yield from pool.imap(_mint_chunk, chunks)
    finally:
        _WORKER_JOB = _WORKER_PACK = None
