"""The database schema (SQLAlchemy Core), one for SQLite and PostgreSQL.

Every record is a JSON document (`doc`, built by iotdps.store._records) plus its key, the
stamp columns (etag, created, updated) and a few projections of the document that queries
filter on (attestation type, thumbprint, group id, status). The document is the truth; the
projections are rewritten with it on every put.

Keys use the "C" collation on PostgreSQL so that they sort by code point, like SQLite and
like the in-memory store: continuation tokens are "the last key", so all three must agree on
what comes after it.

Changing anything here needs a new Alembic revision in store/migrations/versions/.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

from iotdps.store._records import to_utc

__all__ = [
    "ID_LENGTH",
    "UtcDateTime",
    "audit_log",
    "ca_certificates",
    "cluster_nodes",
    "config_version",
    "device_presence",
    "devices",
    "doc_type",
    "enrollment_groups",
    "group_ca_references",
    "group_signing_thumbprints",
    "hub_c2d",
    "hub_sessions",
    "hub_telemetry",
    "individual_enrollments",
    "issued_certificates",
    "issuing_cas",
    "key_type",
    "linked_hubs",
    "metadata",
    "refusals",
    "registrations",
    "service_secrets",
    "service_settings",
    "trust_bundles",
]

ID_LENGTH = 128  # registration ids, group ids, device ids: at most 128 characters
HOST_LENGTH = 255

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def key_type(length: int = ID_LENGTH) -> TypeEngine[str]:
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def doc_type() -> TypeEngine[Any]:
    return JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite keeps no zone, so UTC is implied there."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # Fast path for what the code base makes (datetime.now(UTC)): no conversion needed.
        utc = value if value.tzinfo is UTC else to_utc(value)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return to_utc(value) if value is not None else None


def _stamps() -> list[Column[Any]]:
    return [
        Column("etag", String(64), nullable=False),
        Column("created", UtcDateTime(), nullable=False),
        Column("updated", UtcDateTime(), nullable=False),
    ]


service_settings = Table(
    "service_settings",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

linked_hubs = Table(
    "linked_hubs",
    metadata,
    Column("host_name", key_type(HOST_LENGTH), primary_key=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

ca_certificates = Table(
    "ca_certificates",
    metadata,
    Column("name", key_type(), primary_key=True),
    # NULL when the certificate info carries no thumbprint; unique otherwise.
    Column("sha256_thumbprint", String(64), nullable=True),
    Column("is_verified", Boolean, nullable=False, default=False),
    # SHA-256 of the proof-of-possession code (iotdps.pki.verification), never the code.
    Column("verification_code_hash", String(80), nullable=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
    Index(None, "sha256_thumbprint", unique=True),
)

individual_enrollments = Table(
    "individual_enrollments",
    metadata,
    Column("registration_id", key_type(), primary_key=True),
    Column("attestation_type", String(16), nullable=False, index=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

enrollment_groups = Table(
    "enrollment_groups",
    metadata,
    Column("group_id", key_type(), primary_key=True),
    Column("attestation_type", String(16), nullable=False, index=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

# Index tables: rewritten with their group on every put, removed with it (ON DELETE CASCADE).
group_signing_thumbprints = Table(
    "group_signing_thumbprints",
    metadata,
    Column("group_id", key_type(), ForeignKey("enrollment_groups.group_id", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), primary_key=True, index=True),
)

group_ca_references = Table(
    "group_ca_references",
    metadata,
    Column("group_id", key_type(), ForeignKey("enrollment_groups.group_id", ondelete="CASCADE"), primary_key=True),
    Column("ca_name", key_type(), primary_key=True, index=True),
)

registrations = Table(
    "registrations",
    metadata,
    Column("registration_id", key_type(), primary_key=True),
    Column("enrollment_group_id", key_type(), nullable=True, index=True),
    Column("status", String(16), nullable=False),
    Column("operation_id", String(128), nullable=False),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

# Devices hold their SAS keys inside `doc` (the hub authenticates with them).
devices = Table(
    "devices",
    metadata,
    Column("hub", key_type(HOST_LENGTH), primary_key=True),
    Column("device_id", key_type(), primary_key=True),
    Column("registration_id", key_type(), nullable=True, index=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

# One row per (reason, registration id, peer): `attempts` of them, the first at `first_at`, the
# latest at `at` with its message (revision 0004; the retention rules are in store._common).
# `source` is the peer's network (IPv4 address, IPv6 /64), the unit of fair eviction.
refusals = Table(
    "refusals",
    metadata,
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("registration_id", String(ID_LENGTH), nullable=False, index=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("attestation_type", String(16), nullable=True),
    Column("enrollment", String(ID_LENGTH), nullable=True),
    Column("peer", String(64), nullable=False, server_default=""),
    Column("source", String(64), nullable=False, server_default=""),
    Column("attempts", BigInteger(), nullable=False, server_default="1"),
    Column("first_at", UtcDateTime(), nullable=False),
    UniqueConstraint("reason", "registration_id", "peer"),
)


def _serial() -> TypeEngine[int]:
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    return BigInteger().with_variant(Integer(), "sqlite")


# Hub tables (revision 0002). Telemetry is append-only and written in group-committed batches;
# `seq` orders it, so tail readers follow it with "seq > last seen".
hub_telemetry = Table(
    "hub_telemetry",
    metadata,
    Column("seq", _serial(), primary_key=True, autoincrement=True),
    Column("hub", key_type(HOST_LENGTH), nullable=False),
    Column("device_id", key_type(), nullable=False),
    Column("module_id", String(ID_LENGTH), nullable=True),
    Column("enqueued", UtcDateTime(), nullable=False),
    # {"system": {...}, "application": {...}}, percent-decoded.
    Column("properties", doc_type(), nullable=False),
    Column("body", LargeBinary(), nullable=False),
    Index(None, "hub", "seq"),
    Index(None, "hub", "device_id", "seq"),
)

hub_c2d = Table(
    "hub_c2d",
    metadata,
    Column("seq", _serial(), primary_key=True, autoincrement=True),
    Column("hub", key_type(HOST_LENGTH), nullable=False),
    Column("device_id", key_type(), nullable=False),
    Column("message_id", String(ID_LENGTH), nullable=False),
    Column("enqueued", UtcDateTime(), nullable=False),
    Column("expires", UtcDateTime(), nullable=True),
    Column("properties", doc_type(), nullable=False),
    Column("body", LargeBinary(), nullable=False),
    Index(None, "hub", "device_id", "seq"),
    Index(None, "expires"),
)

hub_sessions = Table(
    "hub_sessions",
    metadata,
    Column("hub", key_type(HOST_LENGTH), primary_key=True),
    Column("device_id", key_type(), primary_key=True),
    # {"subscriptions": [[filter, qos], ...], "desiredVersionSent": n}
    Column("doc", doc_type(), nullable=False),
    Column("updated", UtcDateTime(), nullable=False),
)

# Certificate issuance (revision 0008, issue 18). Issuing CA objects keep their secret sealed
# inside `doc` (issuance.sealing); trust bundles are keyed by their id in lower case (Azure
# compares them case-insensitively) and `doc` keeps the spelling; issued certificates are
# append-only, keyed by the leaf's SHA-256 thumbprint, listed by registration id (lower case).
issuing_cas = Table(
    "issuing_cas",
    metadata,
    Column("name", key_type(), primary_key=True),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

trust_bundles = Table(
    "trust_bundles",
    metadata,
    Column("bundle_key", key_type(), primary_key=True),
    Column("version", BigInteger(), nullable=False),
    Column("doc", doc_type(), nullable=False),
    *_stamps(),
)

issued_certificates = Table(
    "issued_certificates",
    metadata,
    Column("sha256_thumbprint", String(64), primary_key=True),
    Column("registration_key", key_type(), nullable=False, index=True),
    Column("serial_number", String(64), nullable=False),
    Column("issuer_name", key_type(), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("doc", doc_type(), nullable=False),
)

# One row (id 1): bumped by every transaction that writes a table the store caches; see
# SqlStore and migration 0003.
config_version = Table(
    "config_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)


# Several nodes, one service (revision 0007, iotdps.store.sql.cluster). `service_secrets` holds
# what every node must present alike (the server CA, the access policies), sealed with a key
# from the environment; `cluster_nodes` is each node's lease, renewed by its heartbeat;
# `device_presence` says which node holds a device's connection. Times there come from the
# database's clock, so nodes with skewed clocks still agree on whose lease ran out.
service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated", UtcDateTime(), nullable=False),
)

cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("started", UtcDateTime(), nullable=False),
    Column("heartbeat", UtcDateTime(), nullable=False),
)

device_presence = Table(
    "device_presence",
    metadata,
    Column("hub", key_type(HOST_LENGTH), primary_key=True),
    Column("device_id", key_type(), primary_key=True),
    Column("node_id", String(64), nullable=False, index=True),
    Column("since", UtcDateTime(), nullable=False),
)

# The audit trail (revision 0009, iotdps.audit): append-only, hash-chained. `seq` is assigned by
# the store (one past the newest, under the chain's lock), not autoincremented, so a gap is a
# deletion. `detail` is the canonical JSON text that was hashed, kept verbatim.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("at", UtcDateTime(), nullable=False, index=True),
    Column("actor", String(220), nullable=False, index=True),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(300), nullable=False, index=True),
    Column("before", String(80), nullable=True),
    Column("after", String(80), nullable=True),
    Column("detail", Text, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
