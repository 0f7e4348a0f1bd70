"""Refusals become entries that count attempts: peer, source, attempts, first_at.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

One row per attempt let a flood of refused CONNECTs push every real refusal out of the bounded
history. A row now counts the attempts with the same (reason, registration id, peer) and keeps
the first and latest time; `source` (the peer's IPv4 address or IPv6 /64) is what fair eviction
ranks by (store._common, "refusal retention"). Existing rows, one per attempt and without a
peer, are folded into one entry per (reason, registration id): the newest row stays, with the
count and the earliest time of its group.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refusals") as batch:
        batch.add_column(sa.Column("peer", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("source", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("attempts", sa.BigInteger(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("first_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE refusals SET "
        "attempts = (SELECT COUNT(*) FROM refusals AS r"
        " WHERE r.reason = refusals.reason AND r.registration_id = refusals.registration_id), "
        "first_at = (SELECT MIN(r.at) FROM refusals AS r"
        " WHERE r.reason = refusals.reason AND r.registration_id = refusals.registration_id)"
    )
    op.execute("DELETE FROM refusals WHERE id NOT IN (SELECT MAX(id) FROM refusals GROUP BY reason, registration_id)")
    with op.batch_alter_table("refusals") as batch:
        batch.alter_column("first_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_unique_constraint("uq_refusals_reason_registration_id_peer", ["reason", "registration_id", "peer"])


def downgrade() -> None:
    with op.batch_alter_table("refusals") as batch:
        batch.drop_constraint("uq_refusals_reason_registration_id_peer", type_="unique")
        for column in ("first_at", "attempts", "source", "peer"):
            batch.drop_column(column)
