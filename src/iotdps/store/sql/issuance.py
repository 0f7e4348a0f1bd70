"""Certificate issuance (issue 18): issuing CA objects (their secret sealed inside the
document), trust bundles (keyed by the lower-case id), and the append-only record of issued
certificates. Neither list goes through the read cache: only registrations that issue read them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select

from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.ids import registration_key
from iotdps.issuance.models import IssuedCertificate, IssuingCa
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.store import tables as t
from iotdps.store._common import dump_doc
from iotdps.store._issuance_docs import bundle_doc, bundle_from_doc
from iotdps.store.sql import keyed
from iotdps.store.sql.tx import SqlTx

__all__ = ["IssuedCertificates", "IssuingCas", "TrustBundles"]


class IssuingCas:
    _t = t.issuing_cas

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def get(self, name: str) -> IssuingCa | None:
        row = await keyed.get(self._tx, self._t, {"name": name})
        return IssuingCa.from_doc(row.doc, *keyed.stamp(row)) if row else None

    async def put(self, ca: IssuingCa, if_match: str | None = None) -> IssuingCa:
        doc = ca.to_doc()
        stamp = await keyed.put(self._tx, self._t, {"name": ca.name}, f"issuing CA {ca.name}", doc, if_match)
        return IssuingCa.from_doc(doc, *stamp)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        await keyed.delete_row(self._tx, self._t, {"name": name}, f"issuing CA {name}", if_match)

    async def list(self) -> Sequence[IssuingCa]:
        return [
            IssuingCa.from_doc(r.doc, *keyed.stamp(r)) for r in await keyed.select_docs(self._tx, self._t, order="name")
        ]


class TrustBundles:
    _t = t.trust_bundles

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def get(self, bundle_id: str, *, for_update: bool = False) -> TrustBundle | None:
        row = await keyed.get(self._tx, self._t, {"bundle_key": bundle_id.lower()}, lock=for_update)
        return bundle_from_doc(row.doc, *keyed.stamp(row)) if row else None

    async def put(self, bundle: TrustBundle, if_match: str | None = None) -> TrustBundle:
        doc = bundle_doc(bundle)
        stamp = await keyed.put(
            self._tx,
            self._t,
            {"bundle_key": bundle.bundle_id.lower()},
            f"trust bundle {bundle.bundle_id}",
            doc,
            if_match,
            {"version": bundle.version},
        )
        return bundle_from_doc(doc, *stamp)

    async def delete(self, bundle_id: str, if_match: str | None = None) -> None:
        await keyed.delete_row(
            self._tx, self._t, {"bundle_key": bundle_id.lower()}, f"trust bundle {bundle_id}", if_match
        )

    async def list(self) -> Sequence[TrustBundle]:
        rows = await keyed.select_docs(self._tx, self._t, order="bundle_key")
        return [bundle_from_doc(r.doc, *keyed.stamp(r)) for r in rows]


class IssuedCertificates:
    _t = t.issued_certificates

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def add(self, cert: IssuedCertificate) -> None:
        await self._tx.wrote(self._t)
        found = (
            await self._tx.run(
                select(self._t.c.sha256_thumbprint).where(self._t.c.sha256_thumbprint == cert.sha256_thumbprint)
            )
        ).first()
        if found is not None:
            raise AlreadyExists(f"certificate {cert.sha256_thumbprint} is already recorded")
        doc = cert.to_json()
        await self._tx.run(
            insert(self._t).values(
                sha256_thumbprint=cert.sha256_thumbprint,
                registration_key=registration_key(cert.registration_id),
                serial_number=cert.serial_number,
                issuer_name=cert.issuer_name,
                not_after=cert.not_after,
                issued_at=cert.issued_at,
                doc=dump_doc(doc, f"issued certificate {cert.sha256_thumbprint}"),
            )
        )

    async def get(self, sha256_thumbprint: str) -> IssuedCertificate | None:
        row = (
            await self._tx.run(select(self._t.c.doc).where(self._t.c.sha256_thumbprint == sha256_thumbprint.upper()))
        ).first()
        return IssuedCertificate.from_json(row.doc) if row else None

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[IssuedCertificate]:
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        query = select(self._t.c.doc)
        if registration_id is not None:
            query = query.where(self._t.c.registration_key == registration_key(registration_id))
        query = query.order_by(self._t.c.issued_at.desc(), self._t.c.sha256_thumbprint).limit(limit)
        return [IssuedCertificate.from_json(r.doc) for r in (await self._tx.run(query)).all()]
