"""Certificate issuance (issue 18) in memory, held to the SQL store's contract
(tests/contract/test_issuance_store.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.ids import registration_key
from iotdps.issuance.models import IssuedCertificate, IssuingCa
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.store._issuance_docs import bundle_doc, bundle_from_doc
from iotdps.store.memory.tx import MemoryTx, Row

__all__ = ["IssuedCertificates", "IssuingCas", "TrustBundles"]


def _stamp(row: Row) -> tuple[str | None, datetime | None, datetime | None]:
    return row.etag, row.created, row.updated


class IssuingCas:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def get(self, name: str) -> IssuingCa | None:
        row = self._tx.get("issuing_cas", name)
        return IssuingCa.from_doc(row.load(), *_stamp(row)) if row else None

    async def put(self, ca: IssuingCa, if_match: str | None = None) -> IssuingCa:
        row = self._tx.put("issuing_cas", ca.name, f"issuing CA {ca.name}", ca.to_doc(), if_match)
        return IssuingCa.from_doc(row.load(), *_stamp(row))

    async def delete(self, name: str, if_match: str | None = None) -> None:
        self._tx.delete("issuing_cas", name, f"issuing CA {name}", if_match)

    async def list(self) -> Sequence[IssuingCa]:
        rows = self._tx.read("issuing_cas")
        return [IssuingCa.from_doc(rows[k].load(), *_stamp(rows[k])) for k in sorted(rows, key=str)]


class TrustBundles:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def get(self, bundle_id: str, *, for_update: bool = False) -> TrustBundle | None:
        row = self._tx.get("trust_bundles", bundle_id.lower())
        return bundle_from_doc(row.load(), *_stamp(row)) if row else None

    async def put(self, bundle: TrustBundle, if_match: str | None = None) -> TrustBundle:
        what = f"trust bundle {bundle.bundle_id}"
        row = self._tx.put("trust_bundles", bundle.bundle_id.lower(), what, bundle_doc(bundle), if_match)
        return bundle_from_doc(row.load(), *_stamp(row))

    async def delete(self, bundle_id: str, if_match: str | None = None) -> None:
        self._tx.delete("trust_bundles", bundle_id.lower(), f"trust bundle {bundle_id}", if_match)

    async def list(self) -> Sequence[TrustBundle]:
        rows = self._tx.read("trust_bundles")
        return [bundle_from_doc(rows[k].load(), *_stamp(rows[k])) for k in sorted(rows, key=str)]


class IssuedCertificates:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def add(self, cert: IssuedCertificate) -> None:
        if cert.sha256_thumbprint in self._tx.read("issued_certificates"):
            raise AlreadyExists(f"certificate {cert.sha256_thumbprint} is already recorded")
        what = f"issued certificate {cert.sha256_thumbprint}"
        self._tx.put("issued_certificates", cert.sha256_thumbprint, what, cert.to_json(), None)

    async def get(self, sha256_thumbprint: str) -> IssuedCertificate | None:
        row = self._tx.get("issued_certificates", sha256_thumbprint.upper())
        return IssuedCertificate.from_json(row.load()) if row else None

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[IssuedCertificate]:
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        certs = [IssuedCertificate.from_json(json.loads(r.doc)) for r in self._tx.read("issued_certificates").values()]
        if registration_id is not None:
            wanted = registration_key(registration_id)
            certs = [c for c in certs if registration_key(c.registration_id) == wanted]
        certs.sort(key=lambda c: c.sha256_thumbprint)
        certs.sort(key=lambda c: c.issued_at, reverse=True)
        return certs[:limit]
