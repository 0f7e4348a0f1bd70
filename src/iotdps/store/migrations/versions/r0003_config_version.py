"""One row counting changes to what registrations read and the store caches (SqlStore).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Every transaction that writes settings, linked hubs, CAs, groups or enrollments increments it;
a node compares it with the number its cache was filled under before trusting the cache, so a
change made on one node reaches every other node's next transaction.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "config_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_config_version"),
    )
    op.bulk_insert(table, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("config_version")
