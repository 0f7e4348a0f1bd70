"""What the CA toolkit's commands share: the CA directory's location and option, the
passphrase variables, and the edge that turns file-system errors into one `error:` line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.pki import CaDirectory
from iotdps.secret import Secret

__all__ = [
    "ENV_CA_DIR",
    "ENV_DEVICE_PASSPHRASE",
    "ENV_PARENT_PASSPHRASE",
    "ENV_PASSPHRASE",
    "IN_FILE",
    "PKCS11_HELP",
    "ca_dir_option",
    "default_ca_dir",
    "edge",
    "open_ca_dir",
    "pkcs11_option",
    "prompt_secret",
]

F = TypeVar("F", bound=Callable[..., Any])

ENV_CA_DIR = "IOTDPS_CA_DIR"
ENV_PASSPHRASE = "IOTDPS_CA_PASSPHRASE"  # noqa: S105 - a variable name
ENV_PARENT_PASSPHRASE = "IOTDPS_CA_PARENT_PASSPHRASE"  # noqa: S105
ENV_DEVICE_PASSPHRASE = "IOTDPS_DEVICE_PASSPHRASE"  # noqa: S105


def default_ca_dir() -> Path:
    """IOTDPS_CA_DIR, else `ca` under the user's data directory (platformdirs)."""
    env = os.environ.get(ENV_CA_DIR)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("iotdps") / "ca"


def edge(fn: F) -> F:
    """File-system errors become one-line IotdpsErrors, which main() prints with exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileExistsError as exc:
            raise AlreadyExists(f"{exc.filename or exc.args[0]} already exists; not overwriting it") from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise InvalidInput(f"{where}{exc.strerror or 'I/O error'}") from None

    return wrapper  # type: ignore[return-value]


def ca_dir_option(fn: F) -> F:
    return click.option(
        "--ca-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"CA directory [env {ENV_CA_DIR}; default: the user data dir]",
    )(fn)


def open_ca_dir(path: Path | None) -> CaDirectory:
    return CaDirectory(path or default_ca_dir())


# An existing input file, as a Path.
IN_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def prompt_secret(
    value: str | None, *, prompt: str, confirm: bool, how: str = f"--passphrase or {ENV_PASSPHRASE}"
) -> Secret[str]:
    """A passphrase from its option or variable, else a hidden prompt; never empty.

    Without a terminal (a script, CI, a pipe that has run dry) the prompt cannot hide what is
    typed and usually gets nothing: say how to pass the passphrase (`how`) instead of Python's
    GetPassWarning and "aborted"."""
    if value is None:
        if sys.stdin is None or not sys.stdin.isatty():
            value = _piped_secret(prompt, confirm, how)
        else:
            value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise InvalidInput("the passphrase is empty")
    return Secret(value)


def _piped_secret(prompt: str, confirm: bool, how: str) -> str:
    """The passphrase from a pipe, one line (twice when confirming); nothing to read is an error
    that says how to pass it. Nothing is echoed: there is no terminal to hide input on."""
    lines = []
    for _ in range(2 if confirm else 1):
        line = sys.stdin.readline() if sys.stdin is not None else ""
        if not line:
            raise InvalidInput(f"{prompt}: no terminal to ask on; pass it with {how}")
        lines.append(line.rstrip("\r\n"))
    if confirm and lines[0] != lines[1]:
        raise InvalidInput(f"{prompt}: the two entries differ")
    return lines[0]


PKCS11_HELP = "(RFC 7512 URI, e.g. pkcs11:token=ca;object=NAME; module and PIN from IOTDPS_PKCS11_* only)"


def pkcs11_option(help_text: str) -> Callable[[F], F]:
    """--pkcs11-uri: a CA key in a token. Only the key's name: never the module or the PIN."""
    return click.option("--pkcs11-uri", "pkcs11_uri", default=None, help=f"{help_text} {PKCS11_HELP}")
