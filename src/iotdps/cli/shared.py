"""Small helpers the administration commands share: reading files, printing JSON and tables.

Kept free of the store and the HTTP client so any command module may use them (cli.main's
light start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

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


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def table(title: str, columns: list[str], rows: list[list[Any]], *, whole: tuple[str, ...] = ()) -> None:
    """A rich table; the `whole` columns (codes, times) are never cut or wrapped, the others
    share what width is left."""
    # rich is imported here: it is for printing tables only, not for every command's start.
    from rich.console import Console
    from rich.table import Table

    cells = [["" if v is None else str(v) for v in row] for row in rows]
    out = Table(title=title)
    for index, column in enumerate(columns):
        if column in whole:
            width = max([len(column), *(len(row[index]) for row in cells)])
            out.add_column(column, no_wrap=True, min_width=width)
        else:
            out.add_column(column)
    for row in cells:
        out.add_row(*row)
    Console().print(out)
