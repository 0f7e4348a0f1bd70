"""The PostgreSQL driver (asyncpg) is optional: `pip install 'iotdps[postgres]'`.

The base install serves SQLite only and stays small; this module is the one place that asks
whether asyncpg is there, so a missing driver is a clear error naming the extra, not an
ImportError from deep inside SQLAlchemy.
"""

from __future__ import annotations

from iotdps.errors import InvalidInput

__all__ = ["MISSING_DRIVER", "pg_driver_errors", "require_pg_driver"]

MISSING_DRIVER = (
    "the PostgreSQL driver is not installed: install iotdps with the postgres extra (pip install 'iotdps[postgres]')"
)


def pg_driver_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """asyncpg's (connection and server errors, integrity errors); empty without asyncpg."""
    try:
        import asyncpg
    except ImportError:
        return (), ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError), (asyncpg.IntegrityConstraintViolationError,)


def require_pg_driver() -> None:
    try:
        import asyncpg  # noqa: F401 - only: is it there?
    except ImportError:
        raise InvalidInput(MISSING_DRIVER) from None
