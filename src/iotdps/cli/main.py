"""Entry point of the `iotdps` command.

Each command family lives in its own module with a `register(group: click.Group) -> None`;
this module only names them and maps errors at the edge: any IotdpsError becomes one line on
stderr, never a traceback, with the exit codes of cli.output (2 bad input, 3 not found; 1 is
a command's own "checked, and the answer is no").

Startup is kept light on purpose: a command family's module is imported only when one of its
commands is chosen, so `iotdps --help` or `iotdps hub list` never imports the server, the
management API or aiohttp. `iotdps --help` lists the commands from the summaries below;
tests/unit/cli/test_main.py holds each summary to the first line of its command's own help
and fails if `--help` imports a heavy module.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import click

from iotdps import __version__
from iotdps.cli.output import EXIT_BAD_INPUT, EXIT_NOT_FOUND, OUTPUT_CHOICES, remember_output
from iotdps.errors import ConfigError, IotdpsError, NotFound

__all__ = [
    "COMMANDS",
    "EXIT_BAD_INPUT",
    "EXIT_NOT_FOUND",
    "LazyCommand",
    "cli",
    "load_command",
    "main",
    "summary_command",
]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a top-level command lives and what `iotdps --help` says of it."""

    modules: tuple[str, ...]  # registered in this order (`device run` joins the hub's `device`)
    summary: str


_PKI, _ADMIN, _HUB = "iotdps.cli.pki_cmds", "iotdps.cli.admin_cmds", "iotdps.cli.hub_cmds"
_ENROLLMENT, _CERT = "iotdps.cli.enrollment_cmds", "iotdps.cli.cert_cmds"
_CUSTODY = "iotdps.cli.custody_cmds"
_ISSUANCE = "iotdps.cli.issuance_cmds"
_REVOKE = "iotdps.cli.revoke_cmds"

COMMANDS: dict[str, LazyCommand] = {
    "audit": LazyCommand(("iotdps.cli.audit_cmds",), "The audit trail: who changed what, when (hash-chained)."),
    "c2d": LazyCommand((_HUB,), "Cloud-to-device messages."),
    "ca": LazyCommand((_ADMIN,), "CA certificates: upload, proof of possession, list."),
    "ca-dir": LazyCommand((_CERT, _CUSTODY, _REVOKE), "The local CA directory."),
    "certificate": LazyCommand((_ISSUANCE,), "Certificates issued to devices at registration."),
    "cert": LazyCommand((_CERT,), "Read certificates and explain chains."),
    "crl": LazyCommand((_REVOKE,), "CRLs: sign them where the CA keys are, hand them to the service."),
    "create-ca-intermediate": LazyCommand(
        (_PKI,), "Create an intermediate CA (one per factory or production line) signed by --parent."
    ),
    "create-ca-csr": LazyCommand(
        (_CUSTODY,), "Make a factory CA's key (in a token, or an encrypted file) and the CSR the root signs."
    ),
    "create-ca-root": LazyCommand((_PKI,), "Create a self-signed root CA and keep it in the CA directory."),
    "create-device-cert": LazyCommand(
        (_PKI,), "Create device certificates: key + certificate bundle (leaf + intermediates) per device."
    ),
    "device": LazyCommand(
        (_HUB, "iotdps.cli.device_cmds"), "Devices registered on a hub (and `device run`: our device client)."
    ),
    "enrollment": LazyCommand((_ENROLLMENT,), "Individual enrollments."),
    "explain": LazyCommand(
        (_ADMIN,), "Show the precedence walk and the decision for a device, without registering it."
    ),
    "group": LazyCommand((_ENROLLMENT,), "Enrollment groups."),
    "hub": LazyCommand((_ADMIN,), "Linked IoT hubs."),
    "issuing-ca": LazyCommand(
        (_ISSUANCE,), "Issuing CAs: what signs device certificates at registration (an enrollment names one)."
    ),
    "method": LazyCommand((_HUB,), "Direct methods on connected devices (needs the running server)."),
    "proof-ca-root-possession": LazyCommand((_PKI,), "Prove possession of a CA's key to the provisioning service."),
    "refusals": LazyCommand((_ADMIN,), "Recent refused registrations, latest first, with the reason in words."),
    "registration": LazyCommand((_ADMIN,), "Registration records."),
    "revoke": LazyCommand(
        (_REVOKE,), "Revoke a device certificate or a CA in the CA directory, and sign the issuer's CRL."
    ),
    "sas-token": LazyCommand(
        ("iotdps.cli.token_cmds",),
        "Print a SharedAccessSignature: a policy's (management API), a hub device's or a DPS one.",
    ),
    "settings": LazyCommand((_ADMIN,), "Service settings: ID scope and default allocation policy."),
    "simulate": LazyCommand(
        ("iotdps.cli.simulate_cmds",),
        "Register a fleet of simulated devices (and optionally send telemetry); print the rates.",
    ),
    "status": LazyCommand(
        ("iotdps.cli.status_cmds",),
        "Is a server running on this data dir: its pid, hubs served, connections, recent registrations.",
    ),
    "telemetry": LazyCommand((_HUB,), "Device-to-cloud messages stored by the hub."),
    "tls": LazyCommand(
        ("iotdps.cli.tls_cmds",),
        "The server's TLS identity: rotate its CA, see who still needs the new one, activate it.",
    ),
    "trust-bundle": LazyCommand(
        (_ISSUANCE,), "Trust bundles: named, versioned sets of CA certificates for devices' root stores."
    ),
    "twin": LazyCommand((_HUB,), "Device twins on a hub."),
    "up": LazyCommand(("iotdps.cli.server_cmds",), "Run the provisioning service (and its hubs) until interrupted."),
}


def load_command(name: str) -> click.Command:
    """The real command `name`, importing its module(s) now."""
    scratch = click.Group()
    for module in COMMANDS[name].modules:
        importlib.import_module(module).register(scratch)
    return scratch.commands[name]


def summary_command(name: str) -> click.Command:
    """A stand-in for command `name` that knows only its summary (for the command list)."""
    return click.Command(name, help=COMMANDS[name].summary)


class _LazyGroup(click.Group):
    """A group whose subcommands are imported when chosen, not when the program starts."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # What click.Group does, from the summaries: listing must not import every command.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, summary_command(name).get_short_help_str(limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iotdps")
@click.option(
    "--output",
    type=click.Choice(OUTPUT_CHOICES),
    envvar="IOTDPS_OUTPUT",
    show_envvar=True,
    default=None,
    expose_value=False,
    callback=remember_output,
    help="How lists and reports print: table (default) or json.",
)
def cli() -> None:
    """iotdps: self-hosted Device Provisioning Service, CA toolkit and IoT hub."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="iotdps", standalone_mode=False)
    except ConfigError as exc:
        # Every problem at once, one per line, so a config file is fixed in one pass.
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except IotdpsError as exc:
        click.echo(f"error: {exc.message.splitlines()[0] if exc.message else type(exc).__name__}", err=True)
        sys.exit(EXIT_NOT_FOUND if isinstance(exc, NotFound) else EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
