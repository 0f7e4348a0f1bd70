"""The service's configuration: CA certificates (unique by thumbprint), linked hubs and the
service settings. Every registration reads them, so their lists go through the read cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import Row, bindparam, select

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.cas import CaCertificate
from iotdps.errors import AlreadyExists, StoreError
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql import keyed
from iotdps.store.sql.engine import INTEGRITY_ERRORS
from iotdps.store.sql.tx import SqlTx

__all__ = ["Cas", "Hubs", "Settings"]


class Cas:
    _t = t.ca_certificates

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> CaCertificate:
        return rec.ca_from_doc(row.doc, *keyed.stamp(row))

    async def get(self, name: str) -> CaCertificate | None:
        row = await keyed.get(self._tx, self._t, {"name": name})
        return self._load(row) if row else None

    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None:
        wanted = sha256_thumbprint.upper()
        if not wanted:
            return None
        rows = await keyed.select_docs(
            self._tx,
            self._t,
            self._t.c.sha256_thumbprint == bindparam("thumbprint"),
            order="name",
            shape="thumbprint",
            bind={"thumbprint": wanted},
        )
        return self._load(rows[0]) if rows else None

    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate:
        thumbprint = ca.sha256_thumbprint or None
        if thumbprint:
            other = (
                await self._tx.run(
                    select(self._t.c.name).where(self._t.c.sha256_thumbprint == thumbprint, self._t.c.name != ca.name)
                )
            ).first()
            if other is not None:
                raise AlreadyExists(f"this certificate is already uploaded as CA {other.name!r}")
        doc = rec.ca_to_doc(ca)
        columns = {
            "sha256_thumbprint": thumbprint,
            "is_verified": ca.is_verified,
            "verification_code_hash": doc["verificationCodeHash"],
        }
        try:
            stamp = await keyed.put(
                self._tx, self._t, {"name": ca.name}, f"CA certificate {ca.name}", doc, if_match, columns
            )
        except StoreError as exc:
            # The unique thumbprint index lost a race against a concurrent upload.
            if isinstance(exc.__cause__, INTEGRITY_ERRORS):
                raise AlreadyExists("this certificate is already uploaded as another CA") from None
            raise
        return rec.ca_from_doc(doc, *stamp)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        await keyed.delete_row(self._tx, self._t, {"name": name}, f"CA certificate {name}", if_match)

    async def list(self) -> Sequence[CaCertificate]:
        return list(await self._tx.cached(("cas",), self._list))

    async def _list(self) -> Sequence[CaCertificate]:
        return tuple(self._load(r) for r in await keyed.select_docs(self._tx, self._t, order="name"))


class Hubs:
    _t = t.linked_hubs

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def get(self, host_name: str, *, for_update: bool = False) -> LinkedHub | None:
        if for_update:
            # Nodes linking a hub none linked yet, at once: the lock must hold with no row.
            await keyed.lock_key(self._tx, "hub lock", "linked-hub:" + host_name.lower())
        row = await keyed.get(self._tx, self._t, {"host_name": host_name}, lock=for_update)
        return rec.hub_from_doc(row.doc) if row else None

    async def put(self, hub: LinkedHub) -> LinkedHub:
        doc = rec.hub_to_doc(hub)
        await keyed.put(self._tx, self._t, {"host_name": hub.host_name}, f"linked hub {hub.host_name}", doc, None)
        return rec.hub_from_doc(doc)

    async def delete(self, host_name: str) -> None:
        await keyed.delete_row(self._tx, self._t, {"host_name": host_name}, f"linked hub {host_name}", None)

    async def list(self) -> Sequence[LinkedHub]:
        return list(await self._tx.cached(("hubs",), self._list))

    async def _list(self) -> Sequence[LinkedHub]:
        return tuple(rec.hub_from_doc(r.doc) for r in await keyed.select_docs(self._tx, self._t, order="host_name"))


class Settings:
    _t = t.service_settings
    _KEY: ClassVar[Mapping[str, str]] = {"id": "service"}

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def get(self) -> ServiceSettings | None:
        return await self._tx.cached(("settings",), self._get)

    async def _get(self) -> ServiceSettings | None:
        row = await keyed.get(self._tx, self._t, self._KEY)
        return rec.settings_from_doc(row.doc) if row else None

    async def put(self, settings: ServiceSettings) -> ServiceSettings:
        doc = rec.settings_to_doc(settings)
        await keyed.put(self._tx, self._t, self._KEY, "service settings", doc, None)
        return rec.settings_from_doc(doc)
