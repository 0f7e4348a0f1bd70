"""Hub tables: telemetry, cloud-to-device queue, persistent MQTT sessions.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Types are spelled out here rather than imported from tables.py: a migration is history.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _key(length: int = 128) -> Any:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _doc() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _serial() -> Any:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hub_telemetry",
        sa.Column("seq", _serial(), autoincrement=True, nullable=False),
        sa.Column("hub", _key(255), nullable=False),
        sa.Column("device_id", _key(), nullable=False),
        sa.Column("module_id", sa.String(128), nullable=True),
        sa.Column("enqueued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("properties", _doc(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_hub_telemetry"),
    )
    op.create_index("ix_hub_telemetry_hub_seq", "hub_telemetry", ["hub", "seq"])
    op.create_index("ix_hub_telemetry_hub_device_id_seq", "hub_telemetry", ["hub", "device_id", "seq"])
    op.create_table(
        "hub_c2d",
        sa.Column("seq", _serial(), autoincrement=True, nullable=False),
        sa.Column("hub", _key(255), nullable=False),
        sa.Column("device_id", _key(), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("enqueued", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("properties", _doc(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_hub_c2d"),
    )
    op.create_index("ix_hub_c2d_hub_device_id_seq", "hub_c2d", ["hub", "device_id", "seq"])
    op.create_index("ix_hub_c2d_expires", "hub_c2d", ["expires"])
    op.create_table(
        "hub_sessions",
        sa.Column("hub", _key(255), nullable=False),
        sa.Column("device_id", _key(), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hub", "device_id", name="pk_hub_sessions"),
    )


def downgrade() -> None:
    for table in ("hub_sessions", "hub_c2d", "hub_telemetry"):
        op.drop_table(table)
