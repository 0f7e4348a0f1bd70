"""Registration ids are keyed in lower case (DPS treats them case-insensitively).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

From this revision the store keys individual enrollments and registration records by the lower
case of their registration id (iotdps.ids.registration_key); each document keeps its spelling.
Rows written before are re-keyed here. Two registration records whose ids differ only in case
were one device registering under two spellings: the most recently updated is kept. Two
individual enrollments whose ids differ only in case are two operator decisions this revision
cannot choose between (one may be disabled): the migration stops and names them, so the operator
deletes one with the previous release (or in SQL) and starts again.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from iotdps.errors import StoreError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _table(name: str) -> Any:
    return sa.table(name, sa.column("registration_id", sa.String()), sa.column("updated", sa.DateTime()))


def _rekey(name: str, *, merge: bool) -> None:
    conn = op.get_bind()
    table = _table(name)
    spellings: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for rid, updated in conn.execute(sa.select(table.c.registration_id, table.c.updated)).all():
        spellings[str(rid).lower()].append((updated, str(rid)))
    clashes = [sorted(r for _, r in rows) for rows in spellings.values() if len(rows) > 1]
    if clashes and not merge:
        named = "; ".join(" and ".join(group) for group in sorted(clashes))
        raise StoreError(
            "registration ids are case-insensitive from this release, and individual enrollments "
            f"{named} differ only in case: delete all but one of each (`iotdps enrollment delete ID` "
            "with the previous release, or in SQL) and start again"
        )
    for key, rows in spellings.items():
        rows.sort(reverse=True)  # the most recently updated first
        for _, stale in rows[1:]:
            conn.execute(sa.delete(table).where(table.c.registration_id == stale))
        kept = rows[0][1]
        if kept != key:
            conn.execute(sa.update(table).where(table.c.registration_id == kept).values(registration_id=key))


def upgrade() -> None:
    _rekey("individual_enrollments", merge=False)
    _rekey("registrations", merge=True)


def downgrade() -> None:
    # Lower-case keys are valid keys for the older code too; only the lookups differ.
    pass
