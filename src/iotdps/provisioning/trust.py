"""What the TLS layer's trust store must hold: the trust anchors of every handshake, and the
revocations it enforces (`current_revocations`, from the uploaded CAs' CRLs).

Every verified uploaded CA, and every individual X.509 enrollment's device certificate (used
with PARTIAL_CHAIN, so that an enrolled device certificate vouches for itself). The server
builds its TLS context from this and rebuilds it when CAs or enrollments change.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from iotdps.attestation.x509 import revocations_of
from iotdps.errors import InvalidInput
from iotdps.pki import certs
from iotdps.pki.encoding import load_certificates
from iotdps.pki.revocation import Revocations
from iotdps.ports import Store
from iotdps.timestamps import parse_time

__all__ = ["current_revocations", "trust_anchors"]


async def trust_anchors(store: Store) -> list[x509.Certificate]:
    """The anchors, read in one read-only unit of work.

    From an enrollment only its one device certificate is taken, never a CA certificate: with
    PARTIAL_CHAIN an anchor ends every chain through it, so an intermediate here would stop its
    whole line short of the verified root. The write path refuses both (provisioning.admin);
    this also holds for records an older version stored."""
    out: list[x509.Certificate] = []
    async with store.read() as uow:
        for ca in await uow.cas.list():
            if ca.is_verified:
                out.extend(_load_all(ca.certificate))
        for enrollment in await uow.enrollments.list_x509():
            if enrollment.attestation.x509 is not None:
                for slot in enrollment.attestation.x509.client_certificates:
                    device = _load_all(slot.certificate)[:1] if slot is not None else []
                    out.extend(c for c in device if not certs.is_ca(c))
    return out


def _load_all(pem: str) -> list[x509.Certificate]:
    try:
        return load_certificates(pem)
    except InvalidInput:
        return []


async def current_revocations(store: Store, now: datetime) -> tuple[Revocations, list[str]]:
    """The revocations of every CRL held, and the names of the CAs whose CRL is past its
    nextUpdate (still enforced: see pki.revocation)."""
    async with store.read() as uow:
        cas = list(await uow.cas.list())
    expired = []
    for ca in cas:
        next_update = (ca.crl_info or {}).get("nextUpdate")
        if ca.crl and isinstance(next_update, str) and parse_time(next_update) < now:
            expired.append(ca.name)
    return revocations_of(cas), expired
