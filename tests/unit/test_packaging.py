"""What an operator installs: the systemd unit, the container files, the extras, the license.

No container engine runs here (the docker client is installed, no daemon, no compose plugin):
the image is NOT built by these tests. What can be checked is: the unit passes
`systemd-analyze verify` and its ExecStart command really starts the service; the Dockerfile's
HEALTHCHECK command passes against a real server and its other instructions say what the README
promises; compose.yaml is valid YAML with the wiring it needs; the base install works without
the PostgreSQL driver and says which extra to install when a DSN needs it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from iotdps_testing.server import SRC, start_server

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "iotdps.service"


def _unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (.ci/run installs it: need systemd-analyze systemd)"
    # verify checks that ExecStart's binary exists: point it at this checkout's iotdps.
    iotdps = Path(sys.executable).parent / "iotdps"
    assert iotdps.exists()
    unit = tmp_path / "iotdps.service"
    unit.write_text(UNIT.read_text().replace("/opt/iotdps/bin/iotdps", str(iotdps)))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_unit_hardening_and_port_443() -> None:
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "iotdps",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "Environment": "IOTDPS_DATA_DIR=%S/iotdps",
    }.items():
        assert _unit_values(key) == [value], key


def test_unit_exec_start_runs_the_service(tmp_path: Path) -> None:
    """ExecStart's command line, as the unit gives it, starts `iotdps up` and stops on SIGTERM."""
    (exec_start,) = _unit_values("ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/iotdps/bin/iotdps" and argv[1] == "up"
    server = start_server(tmp_path, extra_args=argv[2:])
    try:
        lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
        assert lines, "the unit asks for JSON logs"
    finally:
        assert server.stop() == 0  # KillSignal=SIGTERM: a clean exit


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_non_root_with_volume_ports_and_health() -> None:
    steps = _dockerfile()
    bases = [rest for word, rest in steps if word == "FROM"]
    assert bases and all(base.split()[0].endswith("-slim") for base in bases)
    assert [rest for word, rest in steps if word == "USER"] == ["iotdps"]
    assert ("VOLUME", '["/var/lib/iotdps"]') in steps
    assert ("EXPOSE", "8883 443 8443") in steps
    assert any(word == "ENV" and "IOTDPS_DATA_DIR=/var/lib/iotdps" in rest for word, rest in steps)
    assert any(word == "RUN" and "'iotdps[postgres]'" in rest for word, rest in steps)


def test_dockerfile_healthcheck_command_passes_against_a_real_server(tmp_path: Path) -> None:
    (check,) = [rest for word, rest in _dockerfile() if word == "HEALTHCHECK"]
    argv = json.loads(check[check.index("CMD") + 3 :].strip())
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2]
    server = start_server(tmp_path)
    try:
        code = argv[2].replace("/var/lib/iotdps", str(server.data_dir)).replace("127.0.0.1", server.address)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        server.stop()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert done.returncode != 0  # a stopped server fails the check
    finally:
        server.stop()


def test_compose_wires_iotdps_to_postgres() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    iotdps, postgres = doc["services"]["iotdps"], doc["services"]["postgres"]
    assert iotdps["build"] == "."
    assert iotdps["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    dsn = iotdps["environment"]["IOTDPS_DSN"]
    assert dsn.startswith("postgresql+asyncpg://iotdps:${IOTDPS_PG_PASSWORD") and dsn.endswith("@postgres:5432/iotdps")
    assert "iotdps-data:/var/lib/iotdps" in iotdps["volumes"]
    assert set(iotdps["ports"]) == {"8883:8883", "443:443", "8443:8443"}
    assert iotdps["cap_drop"] == ["ALL"] and iotdps["read_only"] is True
    assert set(doc["volumes"]) == {"iotdps-data", "postgres-data"}


def test_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    # Each Python version named is one CI runs on: 3.11 (the suite), 3.13 (.ci/run's newest_python).
    named = [c for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")]
    versions = {c.rsplit(" ", 1)[1] for c in named}
    assert versions == {"3.11", "3.13"}
    assert "newest=$(newest_python 3.13)" in (ROOT / ".ci" / "run").read_text()
    assert not any(d.startswith("asyncpg") for d in project["dependencies"])
    assert project["optional-dependencies"]["postgres"] == ["asyncpg>=0.29"]


_WITHOUT_ASYNCPG = """
import asyncio, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "asyncpg" or name.startswith("asyncpg."):
            raise ModuleNotFoundError("No module named 'asyncpg'")
sys.meta_path.insert(0, Block())
sys.modules.pop("asyncpg", None)
from iotdps.store import open_store
async def main():
    store = await open_store(sys.argv[1])
    async with store.begin() as uow:
        await uow.settings.get()
    await store.close()
    await open_store("postgresql://postgres@127.0.0.1/test")
asyncio.run(main())
"""


def test_base_install_needs_no_postgres_driver(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ASYNCPG, f"sqlite:///{tmp_path / 'iotdps.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC)},
    )
    assert "iotdps[postgres]" in done.stderr and "InvalidInput" in done.stderr, done.stderr
    assert (tmp_path / "iotdps.db").exists()  # SQLite worked without asyncpg


def test_cli_says_which_extra_when_the_driver_is_missing(tmp_path: Path) -> None:
    code = _WITHOUT_ASYNCPG.split("from iotdps.store")[0] + (
        "from iotdps.cli.main import main\nsys.argv = ['iotdps', 'up', '--dsn', 'postgresql://postgres@127.0.0.1/test']\nmain()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    # The last line; log lines of `up` (alembic's, at info level) may come before it.
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the PostgreSQL driver is not installed: install iotdps with the postgres extra "
        "(pip install 'iotdps[postgres]')"
    )


def test_grafana_dashboard_uses_only_metrics_iotdps_exports() -> None:
    """Every series a panel queries is one iotdps.metrics exposes (or the process collector's)."""
    import re

    from iotdps import metrics

    metrics.registration("assigned", "x509", "mqtt", 0.01)  # so every family has samples to name
    exported = {line.split("{")[0].split(" ")[0] for line in metrics.exposition().decode().splitlines() if line}
    exported |= {line.split()[2] for line in metrics.exposition().decode().splitlines() if line.startswith("# TYPE")}
    dashboard = json.loads((ROOT / "packaging" / "grafana" / "iotdps-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(dashboard["panels"]) >= 12
    used = {name for expr in exprs for name in re.findall(r"\b((?:iotdps|process)_[a-z_]+)\b", expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    missing = {f for f in families if f not in exported and f + "_total" not in exported}
    assert not missing, missing
    assert all('job=~"$job"' in expr for expr in exprs)
