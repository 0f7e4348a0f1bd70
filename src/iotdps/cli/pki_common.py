"""What the CA toolkit's commands share: the CA directory's location and option, the
passphrase variables, and the edge that turns file-system errors into one `error:` line."""

from __future__ import annotations

import functools
import os
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


def prompt_secret(value: str | None, *, prompt: str, confirm: bool) -> Secret[str]:
    """A passphrase from its option or variable, else a hidden prompt; never empty."""
    if value is None:
        value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise InvalidInput("the passphrase is empty")
    return Secret(value)


PKCS11_HELP = "(RFC 7512 URI, e.g. pkcs11:token=ca;object=NAME; module and PIN from IOTDPS_PKCS11_* only)"


def pkcs11_option(help_text: str) -> Callable[[F], F]:
    """--pkcs11-uri: a CA key in a token. Only the key's name: never the module or the PIN."""
    return click.option("--pkcs11-uri", "pkcs11_uri", default=None, help=f"{help_text} {PKCS11_HELP}")
