"""Certificate issuance: issuing CA objects, trust bundles, issued certificates (issue 18).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Types are spelled out here rather than imported from tables.py: a migration is history. The
registration record's new fields (trustBundleId, trustBundleVersion, issued certificate) live
in its JSON document and need no column.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
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
        "issuing_cas",
        sa.Column("name", _key(), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("name", name="pk_issuing_cas"),
    )
    op.create_table(
        "trust_bundles",
        sa.Column("bundle_key", _key(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("bundle_key", name="pk_trust_bundles"),
    )
    op.create_table(
        "issued_certificates",
        sa.Column("sha256_thumbprint", sa.String(64), nullable=False),
        sa.Column("registration_key", _key(), nullable=False),
        sa.Column("serial_number", sa.String(64), nullable=False),
        sa.Column("issuer_name", _key(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("doc", _doc(), nullable=False),
        sa.PrimaryKeyConstraint("sha256_thumbprint", name="pk_issued_certificates"),
    )
    op.create_index("ix_issued_certificates_registration_key", "issued_certificates", ["registration_key"])


def downgrade() -> None:
    op.drop_index("ix_issued_certificates_registration_key", table_name="issued_certificates")
    for table in ("issued_certificates", "trust_bundles", "issuing_cas"):
        op.drop_table(table)
