"""Small helpers the administration commands share: reading files, printing JSON and tables.

Kept free of the store and the HTTP client so any command module may use them (cli.main's
light start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotdps.cli.output import echo_json, table
from iotdps.errors import InvalidInput
from iotdps.jsonload import load_json

__all__ = ["echo_json", "json_arg", "read_text", "table"]


def read_text(path: str) -> str:
    """The text of file `path`; an unreadable file is one InvalidInput line."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc


def json_arg(text: str | None, what: str) -> Any:
    """The JSON document an option holds (None when not given)."""
    if text is None:
        return None
    return load_json(text, what=what)  # InvalidJson, an InvalidInput: one `error:` line
