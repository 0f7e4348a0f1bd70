"""What a core admin service calls to log its change, inside the change's own transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from iotdps.audit.chain import Actor, AuditDraft, AuditEntry
from iotdps.audit.digest import record_digest

if TYPE_CHECKING:
    from iotdps.ports import AuditLog

__all__ = ["record"]


class _Logged(Protocol):
    """A unit of work with the audit log (the core's and the hub's alike)."""

    @property
    def audit(self) -> AuditLog: ...


async def record(
    uow: _Logged,
    actor: Actor,
    action: str,
    target: str,
    *,
    before: object | None = None,
    after: object | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry | None:
    """Append the entry for a change made in `uow`; call it after the change's writes, so the
    chain's lock (PostgreSQL) is held for as short a time as possible. The stored versions'
    etags go into the detail, so an entry names the record versions it moved between.
    None when the store keeps no log of its own (the CLI's remote store: the server logs)."""
    facts: dict[str, Any] = {}
    for name, found in (("etagBefore", before), ("etagAfter", after)):
        etag = getattr(found, "etag", None)
        if isinstance(etag, str):
            facts[name] = etag
    facts.update(detail or {})
    draft = AuditDraft(actor, action, target, record_digest(before), record_digest(after), facts)
    return await uow.audit.append(draft)
