"""The console's assets ship in the package: every file under web/static is matched by the
package-data patterns of pyproject.toml (a new folder of assets needs a new pattern), and
every page the navigation names exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "src" / "iotdps"
STATIC = PACKAGE / "web" / "static"


def test_every_asset_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["iotdps"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}
    assets = {p for p in STATIC.rglob("*") if p.is_file()}
    assert assets and assets <= shipped, sorted(str(p.relative_to(STATIC)) for p in assets - shipped)


def test_every_page_in_the_navigation_exists() -> None:
    registry = (STATIC / "js" / "pages" / "index.js").read_text()
    modules = re.findall(r'import\("\./([\w-]+\.js)"\)', registry)
    assert len(modules) >= 7
    for module in modules:
        assert (STATIC / "js" / "pages" / module).exists(), module
