"""Initial schema: settings, linked hubs, CA certificates, enrollments, groups and their index
tables, registrations, devices, refusals.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Types are spelled out here rather than imported from tables.py: a migration is history and
must not change when the current schema does.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _key(length: int = 128) -> Any:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _doc() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _stamps() -> list[sa.Column[Any]]:
    return [
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "service_settings",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_service_settings"),
    )
    op.create_table(
        "linked_hubs",
        sa.Column("host_name", _key(255), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("host_name", name="pk_linked_hubs"),
    )
    op.create_table(
        "ca_certificates",
        sa.Column("name", _key(), nullable=False),
        sa.Column("sha256_thumbprint", sa.String(64), nullable=True),
        sa.Column("is_verified", sa.Boolean(), nullable=False),
        sa.Column("verification_code_hash", sa.String(80), nullable=True),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("name", name="pk_ca_certificates"),
    )
    op.create_index("ix_ca_certificates_sha256_thumbprint", "ca_certificates", ["sha256_thumbprint"], unique=True)
    for table, key in (("individual_enrollments", "registration_id"), ("enrollment_groups", "group_id")):
        op.create_table(
            table,
            sa.Column(key, _key(), nullable=False),
            sa.Column("attestation_type", sa.String(16), nullable=False),
            sa.Column("doc", _doc(), nullable=False),
            *_stamps(),
            sa.PrimaryKeyConstraint(key, name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_attestation_type", table, ["attestation_type"])
    for table, column in (("group_signing_thumbprints", "sha256"), ("group_ca_references", "ca_name")):
        op.create_table(
            table,
            sa.Column("group_id", _key(), nullable=False),
            sa.Column(column, sa.String(64) if column == "sha256" else _key(), nullable=False),
            sa.ForeignKeyConstraint(
                ["group_id"],
                ["enrollment_groups.group_id"],
                name=f"fk_{table}_group_id_enrollment_groups",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("group_id", column, name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_{column}", table, [column])
    op.create_table(
        "registrations",
        sa.Column("registration_id", _key(), nullable=False),
        sa.Column("enrollment_group_id", _key(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("operation_id", sa.String(128), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("registration_id", name="pk_registrations"),
    )
    op.create_index("ix_registrations_enrollment_group_id", "registrations", ["enrollment_group_id"])
    op.create_table(
        "devices",
        sa.Column("hub", _key(255), nullable=False),
        sa.Column("device_id", _key(), nullable=False),
        sa.Column("registration_id", _key(), nullable=True),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("hub", "device_id", name="pk_devices"),
    )
    op.create_index("ix_devices_registration_id", "devices", ["registration_id"])
    op.create_table(
        "refusals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("registration_id", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attestation_type", sa.String(16), nullable=True),
        sa.Column("enrollment", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_refusals"),
    )
    op.create_index("ix_refusals_registration_id", "refusals", ["registration_id"])


def downgrade() -> None:
    for table in (
        "refusals",
        "devices",
        "registrations",
        "group_ca_references",
        "group_signing_thumbprints",
        "enrollment_groups",
        "individual_enrollments",
        "ca_certificates",
        "linked_hubs",
        "service_settings",
    ):
        op.drop_table(table)
