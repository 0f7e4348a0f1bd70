"""The service's configuration in memory: CA certificates (unique by thumbprint), linked hubs
and the service settings."""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.cas import CaCertificate
from iotdps.errors import AlreadyExists
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import _records as rec
from iotdps.store.memory.tx import MemoryTx, Row, stamp

__all__ = ["Cas", "Hubs", "Settings"]


class Cas:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row) -> CaCertificate:
        return rec.ca_from_doc(row.load(), *stamp(row))

    async def get(self, name: str) -> CaCertificate | None:
        row = self._tx.get("cas", name)
        return self._load(row) if row else None

    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None:
        wanted = sha256_thumbprint.upper()
        if not wanted:
            return None
        for row in self._tx.read("cas").values():
            ca = self._load(row)
            if ca.sha256_thumbprint == wanted:
                return ca
        return None

    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate:
        # The thumbprint is unique: one certificate cannot be two CA records.
        if ca.sha256_thumbprint:
            other = await self.get_by_thumbprint(ca.sha256_thumbprint)
            if other is not None and other.name != ca.name:
                raise AlreadyExists(f"this certificate is already uploaded as CA {other.name!r}")
        row = self._tx.put("cas", ca.name, f"CA certificate {ca.name}", rec.ca_to_doc(ca), if_match)
        return self._load(row)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        self._tx.delete("cas", name, f"CA certificate {name}", if_match)

    async def list(self) -> Sequence[CaCertificate]:
        rows = self._tx.read("cas")
        return [self._load(rows[k]) for k in sorted(rows, key=str)]


class Hubs:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def get(self, host_name: str, *, for_update: bool = False) -> LinkedHub | None:
        # Every transaction holds the store's one lock: for_update has nothing to add.
        row = self._tx.get("hubs", host_name)
        return rec.hub_from_doc(row.load()) if row else None

    async def put(self, hub: LinkedHub) -> LinkedHub:
        row = self._tx.put("hubs", hub.host_name, f"linked hub {hub.host_name}", rec.hub_to_doc(hub), None)
        return rec.hub_from_doc(row.load())

    async def delete(self, host_name: str) -> None:
        self._tx.delete("hubs", host_name, f"linked hub {host_name}", None)

    async def list(self) -> Sequence[LinkedHub]:
        rows = self._tx.read("hubs")
        return [rec.hub_from_doc(rows[k].load()) for k in sorted(rows, key=str)]


class Settings:
    _KEY = "service"

    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def get(self) -> ServiceSettings | None:
        row = self._tx.get("settings", self._KEY)
        return rec.settings_from_doc(row.load()) if row else None

    async def put(self, settings: ServiceSettings) -> ServiceSettings:
        row = self._tx.put("settings", self._KEY, "service settings", rec.settings_to_doc(settings), None)
        return rec.settings_from_doc(row.load())
