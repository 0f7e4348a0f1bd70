"""The command line's light start: `iotdps --help` lists every command without importing it,
and a command imports only what it needs (no server, management API or aiohttp for local
administration)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from iotdps.cli.main import COMMANDS, cli, load_command, summary_command

# Modules only a server (or a remote client) needs; prefixes of sys.modules keys.
_SERVER_SIDE = ("aiohttp", "iotdps.server", "iotdps.api", "iotdps.wiring", "iotdps.web")
_STORE = ("sqlalchemy", "alembic", "iotdps.store")

_PROBE = """
import json, sys
from iotdps.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _imported_by(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    """Run `iotdps ARGS` in a fresh interpreter; its exit code and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return int(report["code"] or 0), set(report["modules"])


def _heavy(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_help_imports_no_server_store_or_http(tmp_path: Path) -> None:
    code, modules = _imported_by(["--help"], tmp_path)
    assert code == 0
    assert _heavy(modules, _SERVER_SIDE + _STORE + ("iotdps.hub", "iotdps.provisioning", "rich")) == []
    assert "iotdps.cli.main" in modules and "iotdps.cli.admin_cmds" not in modules


def test_local_admin_command_imports_no_server_side(tmp_path: Path) -> None:
    code, modules = _imported_by(["hub", "list", "--data-dir", str(tmp_path / "data")], tmp_path)
    assert code == 0
    assert "iotdps.store" in modules  # it did open the local store
    # The store persists the hub's records, so their data types load with it; nothing of the
    # hub's running side (cloud operations, device requests, twins) may.
    records = {"iotdps.hub", "iotdps.hub.devices", "iotdps.hub.records"}
    assert [m for m in _heavy(modules, (*_SERVER_SIDE, "iotdps.hub", "iotdps.cli.remote")) if m not in records] == []


def test_help_for_a_command_imports_only_its_family(tmp_path: Path) -> None:
    code, modules = _imported_by(["create-ca-root", "--help"], tmp_path)
    assert code == 0
    assert "iotdps.cli.pki_cmds" in modules
    assert _heavy(modules, _SERVER_SIDE + _STORE + ("iotdps.cli.admin_cmds", "iotdps.cli.hub_cmds")) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_summary_is_the_commands_own_first_line(name: str) -> None:
    # `iotdps --help` shows the summary; the command's own help must say the same thing.
    command = load_command(name)
    for limit in (30, 45, 200):
        assert command.get_short_help_str(limit) == summary_command(name).get_short_help_str(limit)


def test_help_lists_what_a_fully_loaded_group_would() -> None:
    eager = click.Group("iotdps", help=cli.help, params=list(cli.params), context_settings=cli.context_settings)
    for name in COMMANDS:
        eager.add_command(load_command(name), name)
    runner = CliRunner()
    lazy_help = runner.invoke(cli, ["--help"], prog_name="iotdps")
    eager_help = runner.invoke(eager, ["--help"], prog_name="iotdps")
    assert lazy_help.exit_code == 0
    assert lazy_help.output == eager_help.output


def test_every_registered_command_is_named() -> None:
    # A family that registers a command the table does not name would hide it from `iotdps`.
    for module in {m for entry in COMMANDS.values() for m in entry.modules}:
        scratch = click.Group()
        __import__(module, fromlist=["register"]).register(scratch)
        assert set(scratch.commands) <= set(COMMANDS), module


def test_unknown_command_is_one_error_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iotdps", "no-such-command"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "No such command 'no-such-command'" in done.stderr
    assert "Traceback" not in done.stderr
