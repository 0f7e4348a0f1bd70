"""How a trust bundle is stored: its document without the stamps, which the row holds (the
store assigns etag and times, as for every record). Shared by the SQL and memory stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from iotdps.pki.trust_bundle import TrustBundle

__all__ = ["bundle_doc", "bundle_from_doc"]

_EPOCH = "1970-01-01T00:00:00Z"


def bundle_doc(bundle: TrustBundle) -> dict[str, Any]:
    doc = bundle.to_json()
    # Placeholders: TrustBundle.from_json wants the fields; the row's stamps replace them on load.
    doc.update({"etag": "-", "createdDateTime": _EPOCH, "lastModifiedDateTime": _EPOCH})
    return doc


def bundle_from_doc(
    doc: Mapping[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> TrustBundle:
    loaded = TrustBundle.from_json(doc)
    if etag is None or created is None or updated is None:
        return loaded
    return replace(loaded, etag=etag, created=created, modified=max(updated, created))
