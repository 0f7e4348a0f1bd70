"""iotdps.access sits under the adapters: the management API, the console, the remote CLI and
the server's wiring all use it, so it must pull in none of them, nor an HTTP framework (the
CLI imports it to sign a request and must stay quick to start)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import iotdps

PACKAGE = Path(iotdps.__file__).resolve().parent
ADAPTERS = ("iotdps.api", "iotdps.web", "iotdps.server", "iotdps.store", "iotdps.device", "iotdps.cli")


def _imported(module_file: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_importing_access_loads_no_adapter_and_no_http_framework() -> None:
    probe = (
        "import sys, iotdps.access\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'iotdps.')))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(done.stdout.split())
    assert "iotdps.access.policies" in loaded  # the probe saw the package itself
    assert not {m for m in loaded if m.startswith("aiohttp")}
    assert not {m for m in loaded if m.startswith(ADAPTERS)}


def test_the_console_uses_access_and_never_the_api() -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in sorted((PACKAGE / "web").rglob("*.py"))
        for name in _imported(path)
        if name == "iotdps.api" or name.startswith("iotdps.api.")
    }
    assert offenders == set()
    assert any("iotdps.access" in _imported(path) for path in (PACKAGE / "web").rglob("*.py"))
