"""The in-memory store's committed state (`Committed`) and one transaction's view of it
(`MemoryTx`): the committed tables plus the ones it has copied and changed."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps.audit.chain import AuditEntry
from iotdps.errors import StoreError
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ids import new_etag
from iotdps.ports import Clock, Refusal
from iotdps.store import _records as rec
from iotdps.store._common import check_delete, check_page_size, check_put, decode_token, dump_doc, encode_token

__all__ = ["Committed", "MemoryTx", "RefusalEntries", "Row", "stamp"]

_TABLES = (
    "enrollments",
    "groups",
    "cas",
    "hubs",
    "settings",
    "registrations",
    "devices",
    # certificate issuance (memory/issuance.py)
    "issuing_cas",
    "trust_bundles",
    "issued_certificates",
)

# (reason, registration id, peer) -> (insertion number, entry); see store._common.
RefusalEntries = dict[tuple[str, str, str], tuple[int, Refusal]]


@dataclass(frozen=True, slots=True)
class Row:
    doc: str
    etag: str | None
    created: datetime | None
    updated: datetime | None
    kind: str | None = None  # attestation type of enrollments and groups

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.doc)
        return loaded


def stamp(row: Row) -> tuple[str | None, datetime | None, datetime | None]:
    return row.etag, row.created, row.updated


class Committed:
    """What every transaction has committed; a commit swaps in what it changed."""

    def __init__(self, clock: Clock, refusal_limit: int) -> None:
        self.clock = clock
        self.refusal_limit = refusal_limit
        self.tables: dict[str, dict[Hashable, Row]] = {name: {} for name in _TABLES}
        self.refusals: RefusalEntries = {}
        self.refusal_serial = 0
        self.telemetry: list[TelemetryMessage] = []  # ascending seq
        self.c2d: dict[int, CloudMessage] = {}
        self.hub_sessions: dict[tuple[str, str], HubSession] = {}
        self.seq = {"telemetry": 0, "c2d": 0}
        self.audit: list[AuditEntry] = []  # ascending seq


class MemoryTx:
    """One transaction's view: committed tables plus the ones it has copied and changed."""

    def __init__(self, state: Committed) -> None:
        self.state = state
        self.clock = state.clock
        self.changed: dict[str, dict[Hashable, Row]] = {}
        self.new_refusals: list[Refusal] = []
        self.new_telemetry: list[TelemetryMessage] = []
        self.c2d: dict[int, CloudMessage] | None = None  # copied on first write
        self.sessions: dict[tuple[str, str], HubSession] | None = None
        self.seq = dict(state.seq)
        self.audit: list[AuditEntry] | None = None  # copied on first append or prune
        self.open = True

    def wrote(self) -> bool:
        return bool(
            self.changed
            or self.new_refusals
            or self.new_telemetry
            or self.c2d is not None
            or self.sessions is not None
            or self.audit is not None
        )

    def read(self, table: str) -> Mapping[Hashable, Row]:
        self.check_open()
        return self.changed.get(table, self.state.tables[table])

    def write(self, table: str) -> dict[Hashable, Row]:
        self.check_open()
        if table not in self.changed:
            self.changed[table] = dict(self.state.tables[table])
        return self.changed[table]

    def check_open(self) -> None:
        if not self.open:
            raise StoreError("the transaction has ended")

    def now(self) -> datetime:
        return rec.to_utc(self.clock.now())

    # Generic operations over one keyed table ---------------------------------------

    def get(self, table: str, key: Hashable) -> Row | None:
        return self.read(table).get(key)

    def put(
        self,
        table: str,
        key: Hashable,
        what: str,
        doc: Mapping[str, Any],
        if_match: str | None,
        kind: str | None = None,
    ) -> Row:
        text = dump_doc(doc, what)
        current = self.read(table).get(key)
        check_put(what, current.etag if current else None, current is not None, if_match)
        now = self.now()
        row = Row(text, new_etag(), current.created if current and current.created else now, now, kind)
        self.write(table)[key] = row
        return row

    def delete(self, table: str, key: Hashable, what: str, if_match: str | None) -> None:
        current = self.read(table).get(key)
        check_delete(what, current.etag if current else None, current is not None, if_match)
        del self.write(table)[key]

    def page(
        self,
        table: str,
        keys: Sequence[str],
        page_size: int,
        continuation: str | None,
        key_of: Callable[[str], Hashable],
    ) -> tuple[list[Row], str | None]:
        """Rows of `keys` (already filtered) after the continuation key, in key order."""
        check_page_size(page_size)
        after = decode_token(continuation)
        ordered = sorted(k for k in keys if after is None or k > after)
        chosen = ordered[:page_size]
        rows = self.read(table)
        token = encode_token(chosen[-1]) if len(ordered) > page_size else None
        return [rows[key_of(k)] for k in chosen], token
