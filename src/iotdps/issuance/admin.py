"""Changes to issuance configuration, shared by the management API and the local CLI: one
transaction each, checked before anything is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from iotdps.issuance.builtin import check_not_builtin
from iotdps.issuance.issuers import issuing_ca_from_request
from iotdps.issuance.models import IssuingCa
from iotdps.issuance.sealing import SealingKey
from iotdps.pki.trust_bundle import TrustBundle, check_bundle_id
from iotdps.ports import Store

__all__ = ["put_issuing_ca", "put_trust_bundle"]


async def put_trust_bundle(
    store: Store, bundle_id: str, certificates: Sequence[x509.Certificate], if_match: str | None = None
) -> TrustBundle:
    """Create the bundle (version 1), or store its next version with these certificates."""
    check_bundle_id(bundle_id)
    check_not_builtin(bundle_id)
    async with store.begin() as uow:
        current = await uow.trust_bundles.get(bundle_id, for_update=True)
        bundle = current.revised(certificates) if current else TrustBundle.new(bundle_id, certificates)
        return await uow.trust_bundles.put(bundle, if_match)


async def put_issuing_ca(
    store: Store, sealing: SealingKey, name: str, doc: Mapping[str, Any], if_match: str | None = None
) -> IssuingCa:
    """Create or replace an issuing CA object from its request document (issuance.issuers)."""
    async with store.read() as uow:
        before = await uow.issuing_cas.get(name)
    ca = issuing_ca_from_request(name, doc, sealing, before)
    async with store.begin() as uow:
        return await uow.issuing_cas.put(ca, if_match)
