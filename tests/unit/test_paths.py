import stat
from pathlib import Path

import pytest

from iotdps.paths import default_data_dir, default_dsn


def test_env_overrides_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IOTDPS_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"


def test_platform_dir_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTDPS_DATA_DIR", raising=False)
    assert default_data_dir().name == "iotdps"


def test_default_dsn_creates_private_dir(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    dsn = default_dsn(target)
    assert dsn == f"sqlite:///{target.resolve() / 'iotdps.db'}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
