"""The audit trail: who changed what, when, hash-chained so that a changed, deleted or reordered
entry shows.

- `actions`: the open list of action names (`noun.verb`, dotted), validated, never closed;
- `chain`: actors, entries, their canonical JSON and the hash that links each to the one before;
- `digest`: the before/after digests of the records a change touched;
- `verify`: walks a log and says what is wrong with it, entry by entry;
- `record`: what a core admin service calls, inside the transaction of its change.

The core writes entries through the `AuditLog` port (iotdps.ports) of the unit of work that
holds the change, so a change and its entry commit or roll back together.
"""

from __future__ import annotations

from iotdps.audit.actions import KNOWN_ACTIONS, check_action
from iotdps.audit.chain import GENESIS, Actor, AuditDraft, AuditEntry, AuditQuery, link
from iotdps.audit.digest import record_digest
from iotdps.audit.record import record
from iotdps.audit.verify import Problem, Summary, verify_chain

__all__ = [
    "GENESIS",
    "KNOWN_ACTIONS",
    "Actor",
    "AuditDraft",
    "AuditEntry",
    "AuditQuery",
    "Problem",
    "Summary",
    "check_action",
    "link",
    "record",
    "record_digest",
    "verify_chain",
]
