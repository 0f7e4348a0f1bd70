"""Where iotdps keeps its data by default: one directory, private to the user."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

__all__ = ["DATA_DIR_ENV", "DB_FILE_NAME", "default_data_dir", "default_dsn"]

DATA_DIR_ENV = "IOTDPS_DATA_DIR"
DB_FILE_NAME = "iotdps.db"


def default_data_dir() -> Path:
    """$IOTDPS_DATA_DIR, else the platform's per-user data directory for iotdps."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(user_data_dir("iotdps"))


def default_dsn(data_dir: Path) -> str:
    """The SQLite database in `data_dir`, which is created owner-only (0700): it holds keys."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / DB_FILE_NAME).resolve()}"
