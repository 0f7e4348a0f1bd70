"""Several nodes, one service: sealed shared secrets, node leases, device presence.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20

Types are spelled out here rather than imported from tables.py: a migration is history.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _key(length: int = 128) -> Any:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_service_secrets"),
    )
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_cluster_nodes"),
    )
    op.create_table(
        "device_presence",
        sa.Column("hub", _key(255), nullable=False),
        sa.Column("device_id", _key(), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hub", "device_id", name="pk_device_presence"),
    )
    op.create_index("ix_device_presence_node_id", "device_presence", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_device_presence_node_id", table_name="device_presence")
    op.drop_table("device_presence")
    op.drop_table("cluster_nodes")
    op.drop_table("service_secrets")
