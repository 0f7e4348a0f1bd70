"""TPM individual enrollments get the challenge key their 401 challenges wrap.

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-10

From this revision a TPM enrollment's document carries `tpmChallengeKey` (store._records), the
32-byte key the activation blob of every challenge for it holds (issue 19). TPM enrollments
written before could not register (TPM was refused), so each simply gets a fresh random key.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_FIELD = "tpmChallengeKey"


def _table() -> Any:
    doc = sa.JSON().with_variant(JSONB(), "postgresql")
    return sa.table(
        "individual_enrollments",
        sa.column("registration_id", sa.String()),
        sa.column("attestation_type", sa.String()),
        sa.column("doc", doc),
    )


def upgrade() -> None:
    conn = op.get_bind()
    table = _table()
    rows = conn.execute(sa.select(table.c.registration_id, table.c.doc).where(table.c.attestation_type == "tpm"))
    for rid, doc in rows.all():
        if isinstance(doc, dict) and _FIELD not in doc:
            key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
            conn.execute(sa.update(table).where(table.c.registration_id == rid).values(doc={**doc, _FIELD: key}))


def downgrade() -> None:
    conn = op.get_bind()
    table = _table()
    rows = conn.execute(sa.select(table.c.registration_id, table.c.doc).where(table.c.attestation_type == "tpm"))
    for rid, doc in rows.all():
        if isinstance(doc, dict) and _FIELD in doc:
            rest = {k: v for k, v in doc.items() if k != _FIELD}
            conn.execute(sa.update(table).where(table.c.registration_id == rid).values(doc=rest))
