"""How a command prints what it found: a table for people, JSON for scripts.

JSON is chosen by the command's `--json` flag or by the global `iotdps --output json` (or
IOTDPS_OUTPUT=json). A table goes to a terminal through rich, sized to it; piped or redirected,
it is plain text in aligned columns that are never cut or wrapped, whatever their width, so
`iotdps registration list | grep` sees every character.

Exit codes, one scheme for every command (cli.main applies it to errors):
    0  done                     1  checked, and the answer is no (`cert verify` invalid,
    2  bad input                   `explain` refuses)
    3  not found
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_NEGATIVE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "OUTPUT_CHOICES",
    "echo_json",
    "json_option",
    "listing",
    "remember_output",
    "table",
    "wants_json",
]

EXIT_OK, EXIT_NEGATIVE, EXIT_BAD_INPUT, EXIT_NOT_FOUND = 0, 1, 2, 3
OUTPUT_CHOICES = ("table", "json")

F = TypeVar("F", bound=Callable[..., Any])


def remember_output(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep the chosen output format on the root context (the global option and `--json`)."""
    root = ctx.find_root()
    root.obj = root.obj or {}
    if value is True:  # the --json flag
        root.obj["output"] = "json"
    elif isinstance(value, str):
        root.obj.setdefault("output", value)
    return value


def json_option(fn: F) -> F:
    """`--json`: print JSON instead of a table or text (the same as `iotdps --output json`)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=False,
        expose_value=False,
        callback=remember_output,
        help="Print JSON (the same as `iotdps --output json ...`).",
    )(fn)


def wants_json() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    return bool((ctx.find_root().obj or {}).get("output") == "json")


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _plain(columns: Sequence[str], cells: list[list[str]]) -> None:
    # Aligned columns, nothing cut: a wide cell widens its column instead.
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def table(title: str, columns: list[str], rows: list[list[Any]], *, whole: tuple[str, ...] = ()) -> None:
    """A table; on a terminal the `whole` columns (codes, times) are never cut or wrapped and
    the others share what width is left; piped, no column is ever cut."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not sys.stdout.isatty():
        _plain(columns, cells)
        return
    # rich is imported here: it is for printing tables only, not for every command's start.
    from rich.console import Console
    from rich.table import Table

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


def listing(
    title: str,
    columns: list[str],
    rows: list[list[Any]],
    docs: list[Any],
    *,
    whole: tuple[str, ...] = (),
) -> None:
    """`docs` as JSON when JSON was asked for, else `rows` as a table."""
    if wants_json():
        echo_json(docs)
    else:
        table(title, columns, rows, whole=whole)
