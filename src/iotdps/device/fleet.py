"""What a simulated fleet needs before its first registration: enrollments and credentials.

One run makes its own names (`sim-<run>-000000`...) so runs never collide with each other or
with real devices:
- X.509: a root CA (P-256) and a "line" intermediate are minted for the run; the root is
  uploaded and proven (verification code, verification certificate) like an operator would,
  and an enrollment group references it. Device certificates come from the intermediate
  through iotdps.pki's template minting; a device presents leaf + intermediate.
- symmetric key: one enrollment group; each device's key is derived from the group key.
- TPM: one individual enrollment per device with its TPM's EK (TPM cannot be used by groups);
  the caller brings the TPMs (iotdps.device.swtpm: software TPMs), and the keys stay in them.

Everything goes through a `FleetAdmin` the caller passes in (the CLI's administration client,
on the local data dir or, with `--server`, through the management API): the device side never
imports the provisioning service itself. Device keys
and certificates are written to `work_dir` (0600): Python's `ssl` loads client certificates
from files only.
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives import serialization

from iotdps.device.credentials import Credential, SymmetricKey, TpmCredential, TpmSigner, X509Files, tls_context
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.pki import (
    Issuer,
    Validity,
    create_intermediate_ca,
    create_root_ca,
    generate_private_key,
    issue_verification_certificate,
    mint_devices,
)
from iotdps.ports import CaAdmin
from iotdps.secret import Secret

__all__ = ["AttestationChoice", "Fleet", "FleetAdmin", "SimDevice", "create_fleet", "fleet_prefix"]

AttestationChoice = Literal["x509", "symmetric-key", "tpm"]


class FleetAdmin(CaAdmin, Protocol):
    """What a fleet needs of the provisioning service: CA proof of possession and writing its
    enrollment group (validated as the management API does). cli.client.AdminClient is one."""

    async def put_group(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup: ...

    async def put_enrollment(
        self, enrollment: IndividualEnrollment, if_match: str | None = None
    ) -> IndividualEnrollment: ...


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device: its registration id, credential and ready TLS context.

    The context is built before the clock starts (loading a key and certificate is the device's
    boot, not its registration); every connection on it still does a full handshake.
    """

    registration_id: str
    credential: Credential
    context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class Fleet:
    attestation: AttestationChoice
    prefix: str  # registration ids are f"{prefix}-{i:06d}"
    group_id: str
    ca_name: str | None
    devices: tuple[SimDevice, ...]


def fleet_prefix() -> str:
    """A fresh registration-id prefix for one run."""
    return f"sim-{secrets.token_hex(3)}"


def _pem(cert: object) -> str:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def _x509_group(admin: FleetAdmin, prefix: str, work_dir: Path) -> tuple[Issuer, str, str]:
    validity = Validity.days(30)
    root_key = generate_private_key()
    root = Issuer(create_root_ca(f"{prefix} root", root_key, validity, path_length=1), root_key, name="root")
    line_key = generate_private_key()
    line_cert = create_intermediate_ca(root, f"{prefix} line", line_key.public_key(), Validity.days(29))
    line = Issuer(line_cert, line_key, (root.certificate,), name="line")
    ca_name = f"{prefix}-root"
    uploaded = await admin.upload_ca(ca_name, _pem(root.certificate), False)
    code, uploaded = await admin.generate_verification_code(ca_name, uploaded.etag)
    proof = issue_verification_certificate(root, code, generate_private_key().public_key(), Validity.days(1))
    await admin.verify_ca(ca_name, _pem(proof), uploaded.etag)
    group_id = f"{prefix}-x509"
    group = EnrollmentGroup.from_json(
        {"enrollmentGroupId": group_id, "attestation": {"type": "x509", "x509": {"caReferences": {"primary": ca_name}}}}
    )
    await admin.put_group(group)
    # For benchmarks that hand the same CA to another TLS server (bench/registrations.py).
    (work_dir / "fleet-root.pem").write_text(_pem(root.certificate))
    return line, ca_name, group_id


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def create_fleet(
    admin: FleetAdmin,
    attestation: AttestationChoice,
    count: int,
    work_dir: Path,
    ca_pem: str,
    *,
    prefix: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    tpms: Sequence[TpmSigner] = (),
) -> Fleet:
    """Create the enrollment group (and CA) and `count` devices' credentials in `work_dir`.

    `ca_pem` is the server CA the devices trust. `on_progress(n)` is called as devices are
    readied. Minting uses `workers` processes (default: every core). For "tpm", `tpms` holds
    one TPM per device (`count` is then at most their number).
    """
    prefix = prefix or fleet_prefix()
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ids: Sequence[str] = [f"{prefix}-{i:06d}" for i in range(count)]
    devices: list[SimDevice] = []
    if attestation == "x509":
        line, ca_name, group_id = await _x509_group(admin, prefix, work_dir)
        for chunk in mint_devices(line, ids, Validity.days(7), workers=workers):
            for minted in chunk:
                cert_file = work_dir / f"{minted.registration_id}.cert.pem"
                key_file = work_dir / f"{minted.registration_id}.key.pem"
                cert_file.write_bytes(minted.chain_pem)
                _write_private(key_file, minted.key_pem)
                credential: Credential = X509Files(cert_file, key_file)
                devices.append(SimDevice(minted.registration_id, credential, tls_context(ca_pem, credential)))
            if on_progress is not None:
                on_progress(len(chunk))
        return Fleet(attestation, prefix, group_id, ca_name, tuple(devices))
    if attestation == "tpm":
        if len(tpms) < count:
            raise ValueError(f"a TPM fleet of {count} needs {count} TPMs, got {len(tpms)}")
        # No client certificate, so one context serves every device (as for symmetric keys).
        shared_tpm = tls_context(ca_pem, SymmetricKey(Secret("")))
        for rid, tpm in zip(ids, tpms, strict=False):
            ek = base64.b64encode(tpm.endorsement_key()).decode("ascii")
            enrollment = IndividualEnrollment.from_json(
                {"registrationId": rid, "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}}
            )
            await admin.put_enrollment(enrollment)
            devices.append(SimDevice(rid, TpmCredential(tpm), shared_tpm))
            if on_progress is not None:
                on_progress(1)
        return Fleet(attestation, prefix, f"{prefix}-tpm (individual)", None, tuple(devices))
    group_id = f"{prefix}-sas"
    group = await admin.put_group(
        EnrollmentGroup.from_json({"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}),
    )
    assert group.attestation.symmetric_key is not None
    group_key: Secret[str] = group.attestation.symmetric_key.primary_key
    # No client certificate: every device can share one context (nothing in it is per device,
    # and the client never resumes a session, so each connection is still a full handshake).
    shared = tls_context(ca_pem, SymmetricKey(Secret("")))
    for i, rid in enumerate(ids):
        devices.append(SimDevice(rid, SymmetricKey.from_group(group_key, rid), shared))
        if on_progress is not None and (i + 1) % 500 == 0:
            on_progress(500)
    if on_progress is not None and count % 500:
        on_progress(count % 500)
    return Fleet(attestation, prefix, group_id, None, tuple(devices))
