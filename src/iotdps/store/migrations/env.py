"""Alembic environment of the iotdps store.

Migrations run only through iotdps.store.migrate, which hands over an open connection (inside
its transaction) in `config.attributes["connection"]`; there is no alembic.ini or DSN here.
"""

from __future__ import annotations

from alembic import context

from iotdps.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run iotdps migrations through iotdps.store.migrate, not the alembic command")

# render_as_batch: SQLite alters tables by copying them; later revisions need it.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
