"""The command hints print is the command that runs (cli/invocation.py)."""

from pathlib import Path

from iotdps.cli.invocation import runnable_command


def _script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_on_path_it_is_iotdps(tmp_path: Path) -> None:
    script = _script(tmp_path / "venv" / "bin" / "iotdps")
    assert runnable_command(str(script), "/x/python", str(script.parent), tmp_path) == "iotdps"


def test_a_venv_not_on_path_is_named_relative_to_where_the_user_is(tmp_path: Path) -> None:
    script = _script(tmp_path / ".venv" / "bin" / "iotdps")
    assert runnable_command(str(script), "/x/python", "/usr/bin:/bin", tmp_path) == ".venv/bin/iotdps"
    # Elsewhere, the absolute path; quoted when the shell would split it.
    spaced = _script(tmp_path / "my tools" / "iotdps")
    assert runnable_command(str(spaced), "/x/python", "", tmp_path / ".venv") == f"'{spaced}'"


def test_another_iotdps_on_path_is_not_this_one(tmp_path: Path) -> None:
    other = _script(tmp_path / "other" / "iotdps")
    mine = _script(tmp_path / ".venv" / "bin" / "iotdps")
    assert runnable_command(str(mine), "/x/python", str(other.parent), tmp_path) == ".venv/bin/iotdps"


def test_started_as_a_module(tmp_path: Path) -> None:
    python = tmp_path / ".venv" / "bin" / "python"
    assert runnable_command("/src/iotdps/__main__.py", str(python), "", tmp_path) == ".venv/bin/python -m iotdps"
