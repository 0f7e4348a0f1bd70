"""Entry point of the `iotdps` command.

Each command family lives in its own module and registers itself on `cli`; this module only
assembles them and maps errors at the edge: any IotdpsError becomes one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from iotdps import __version__
from iotdps.errors import ConfigError, IotdpsError

__all__ = ["EXIT_BAD_INPUT", "cli", "main"]

EXIT_BAD_INPUT = 2

# Command modules; each defines `register(group: click.Group) -> None`.
_COMMAND_MODULES: tuple[str, ...] = (
    "iotdps.cli.pki_cmds",
    "iotdps.cli.admin_cmds",
    "iotdps.cli.server_cmds",
    "iotdps.cli.hub_cmds",
    "iotdps.cli.device_cmds",
    "iotdps.cli.simulate_cmds",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iotdps")
def cli() -> None:
    """iotdps: self-hosted Device Provisioning Service, CA toolkit and IoT hub."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="iotdps", standalone_mode=False)
    except ConfigError as exc:
        # Every problem at once, one per line, so a config file is fixed in one pass.
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except IotdpsError as exc:
        click.echo(f"error: {exc.message.splitlines()[0] if exc.message else type(exc).__name__}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
