"""The audit trail: one append-only, hash-chained table (iotdps.audit).

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-10

`seq` is the store's own numbering (one past the newest entry, taken under the chain's lock), so
it has no autoincrement: a gap in it is a deleted entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(220), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("before", sa.String(80), nullable=True),
        sa.Column("after", sa.String(80), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )
    for column in ("at", "actor", "action", "target"):
        op.create_index(f"ix_audit_log_{column}", "audit_log", [column])


def downgrade() -> None:
    op.drop_table("audit_log")
