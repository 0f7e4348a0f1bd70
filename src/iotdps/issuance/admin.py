"""Changes to issuance configuration, shared by the management API and the local CLI: one
transaction each, checked before anything is written, with its audit entry (iotdps.audit) in
the same transaction, naming the `actor` the edge passed down."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from iotdps.audit import Actor, record
from iotdps.errors import NotFound
from iotdps.issuance.builtin import check_not_builtin
from iotdps.issuance.issuers import issuing_ca_from_request
from iotdps.issuance.models import IssuingCa
from iotdps.issuance.sealing import SealingKey
from iotdps.pki.trust_bundle import TrustBundle, check_bundle_id
from iotdps.ports import Store

__all__ = ["delete_issuing_ca", "delete_trust_bundle", "put_issuing_ca", "put_trust_bundle"]


async def put_trust_bundle(
    store: Store,
    bundle_id: str,
    certificates: Sequence[x509.Certificate],
    if_match: str | None = None,
    *,
    actor: Actor,
) -> TrustBundle:
    """Create the bundle (version 1), or store its next version with these certificates."""
    check_bundle_id(bundle_id)
    check_not_builtin(bundle_id)
    async with store.begin() as uow:
        current = await uow.trust_bundles.get(bundle_id, for_update=True)
        bundle = current.revised(certificates) if current else TrustBundle.new(bundle_id, certificates)
        saved = await uow.trust_bundles.put(bundle, if_match)
        action = "trust-bundle.update" if current is not None else "trust-bundle.create"
        await record(uow, actor, action, f"trust-bundle/{bundle_id}", before=current, after=saved)
        return saved


async def put_issuing_ca(
    store: Store, sealing: SealingKey, name: str, doc: Mapping[str, Any], if_match: str | None = None, *, actor: Actor
) -> IssuingCa:
    """Create or replace an issuing CA object from its request document (issuance.issuers)."""
    async with store.read() as uow:
        before = await uow.issuing_cas.get(name)
    # Off the event loop: a local key's scrypt, or a login to a PKCS#11 token, blocks.
    ca = await asyncio.to_thread(issuing_ca_from_request, name, doc, sealing, before)
    async with store.begin() as uow:
        current = await uow.issuing_cas.get(name)
        saved = await uow.issuing_cas.put(ca, if_match)
        action = "issuing-ca.update" if current is not None else "issuing-ca.create"
        await record(uow, actor, action, f"issuing-ca/{name}", before=current, after=saved)
        return saved


async def delete_trust_bundle(store: Store, bundle_id: str, if_match: str | None = None, *, actor: Actor) -> None:
    check_not_builtin(bundle_id)
    async with store.begin() as uow:
        current = await uow.trust_bundles.get(bundle_id, for_update=True)
        await uow.trust_bundles.delete(bundle_id, if_match)  # NotFound / PreconditionFailed
        await record(uow, actor, "trust-bundle.delete", f"trust-bundle/{bundle_id}", before=current)


async def delete_issuing_ca(store: Store, name: str, if_match: str | None = None, *, actor: Actor) -> None:
    async with store.begin() as uow:
        current = await uow.issuing_cas.get(name)
        if current is None:
            raise NotFound(f"issuing CA {name} not found")
        await uow.issuing_cas.delete(name, if_match)
        await record(uow, actor, "issuing-ca.delete", f"issuing-ca/{name}", before=current)
