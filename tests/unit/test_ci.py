""".ci/run, the CI entry point: it runs the README's test command verbatim, and every step that
fails fails CI (bash's `set -e` does not stop at a failure inside an && chain unless it is the
last command, which once let CI pass without running pytest).

The script runs for real, under bash, in a scratch copy of the checkout whose PATH holds only
stand-ins that log their arguments: installing the package and running the whole suite (from
inside the suite) is not what is tested here, the script's control flow is. Then the plugin
that fails a CI run with skipped tests, on a scratch test file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"
BASH = shutil.which("bash") or "/bin/bash"

# What the README's test command and the lint steps run, in order, as the stand-ins log them.
STEPS = [
    "python3 -m venv .venv",
    ".venv/bin/pip install -e .[test,tpm]",
    "npm ci --no-audit --no-fund --ignore-scripts --loglevel=error",
    ".venv/bin/python -m pytest",
    ".venv/bin/ruff check src tests bench",
    ".venv/bin/ruff format --check src tests bench",
    ".venv/bin/mypy",
    ".venv/bin/lint-imports",
    "python3 -m venv .venv-oldest",
    ".venv-oldest/bin/pip install -c .ci/oldest.txt -e .[test]",
    ".venv-oldest/bin/python -m pytest tests/unit/server tests/unit/pki tests/e2e/dps tests/unit/test_packaging.py",
    "python3.13 -m venv .venv-newest",
    ".venv-newest/bin/pip install -e .[test]",
    ".venv-newest/bin/python -m pytest tests/unit/server tests/unit/pki tests/e2e/dps tests/unit/test_packaging.py"
    " tests/unit/test_jsondump.py",
]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("Install and run the tests:", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 1, f"the README's test command is one line: {lines}"
    return lines[0]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = readme_test_command()
    assert ".venv/bin/python -m pytest" in command
    code = [line for line in CI_RUN.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert any(command in line for line in code), "the README's test command is not in .ci/run as it stands there"


def _stub(path: Path, name: str, check: str = "") -> None:
    """A stand-in that logs `name args` and fails (exit 3) when its name is in $CI_FAILING;
    `check`: more shell to run after that."""
    path.write_text(
        f'#!/bin/sh\necho "{name} $*" >> "$CI_LOG"\ncase " $CI_FAILING " in *" {name} "*) exit 3 ;; esac\n{check}\n'
    )
    path.chmod(0o755)


# pytest runs with skips forbidden (tests/iotdps_testing/no_skips.py), or its stand-in fails.
SKIPS_FORBIDDEN = '[ "$IOTDPS_FORBID_SKIPS" = 1 ] || exit 4'


def run_ci(
    tmp_path: Path, *, failing: tuple[str, ...] = (), missing: tuple[str, ...] = (), inject: str = ""
) -> tuple[int, list[str], str]:
    """.ci/run in a scratch checkout: (exit status, the logged steps, stderr). `missing`
    commands are not on PATH; `inject` is a line added after the script's `need` lines."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    (repo / "tests" / "e2e" / "node").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv-oldest" / "bin").mkdir(parents=True)
    (repo / ".venv-newest" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    lines = CI_RUN.read_text().splitlines()
    needed = [line.split()[1] for line in lines if line.startswith("need ")]  # present, unless `missing`
    if inject:
        last_need = max(i for i, line in enumerate(lines) if line.startswith("need "))
        lines.insert(last_need + 1, inject)
    (repo / ".ci" / "run").write_text("\n".join(lines) + "\n")
    for name in ("pip", "python", "ruff", "mypy", "lint-imports"):
        _stub(repo / ".venv" / "bin" / name, f".venv/bin/{name}", SKIPS_FORBIDDEN if name == "python" else "")
    for venv in (".venv-oldest", ".venv-newest"):  # the oldest pinned releases; the newest Python
        for name in ("pip", "python"):
            check = SKIPS_FORBIDDEN if name == "python" else ""
            _stub(repo / venv / "bin" / name, f"{venv}/bin/{name}", check)
    # No pyenv on this PATH: the script takes python3.13 from PATH.
    for name in ("python3", "python3.13", "npm", "pg_isready", "apt-get", *needed):
        if name not in missing:
            _stub(bin_dir / name, name)
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    for tool in ("dirname", "id"):  # the real ones: the script's own plumbing
        real = shutil.which(tool)
        assert real is not None
        (bin_dir / tool).symlink_to(real)
    log = tmp_path / "log"
    log.touch()
    env = {
        "PATH": str(bin_dir),
        "CI_LOG": str(log),
        "CI_FAILING": " ".join(failing),
    }
    done = subprocess.run(
        [BASH, str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done.returncode, log.read_text().splitlines(), done.stderr


def _logged(steps: list[str]) -> list[str]:
    """The logged steps without the machine checks before them."""
    return [s.strip() for s in steps if not s.startswith(("pg_isready", "apt-get", "pkg-config"))]


def test_every_step_passing_runs_them_all_in_order(tmp_path: Path) -> None:
    status, steps, stderr = run_ci(tmp_path)
    assert status == 0, stderr
    assert _logged(steps) == STEPS


@pytest.mark.parametrize(
    ("failing", "missing", "ran", "status_word"),
    [
        ((), ("npm",), 2, "exit status 127"),  # node/npm not installed
        (("npm",), (), 3, "exit status 3"),  # npm ci failed
        ((".venv/bin/pip",), (), 2, "exit status 3"),  # the package did not install
        (("python3",), (), 1, "exit status 3"),  # no venv
        ((".venv/bin/python",), (), 4, "exit status 3"),  # the tests failed
        ((".venv/bin/ruff",), (), 5, None),
        ((".venv/bin/lint-imports",), (), 8, None),  # the import contract is broken
        ((".venv-oldest/bin/python",), (), 11, None),  # the oldest releases failed
        (("python3.13",), (), 12, None),  # no venv on the newest Python
        ((".venv-newest/bin/pip",), (), 13, None),  # a dependency does not install on it
        ((".venv-newest/bin/python",), (), 14, None),  # the tests failed on it
        ((), ("python3.13",), 11, None),  # no Python 3.13 at all: a failure, not a skip
    ],
)
def test_a_failing_step_fails_ci_and_stops_it(
    tmp_path: Path, failing: tuple[str, ...], missing: tuple[str, ...], ran: int, status_word: str | None
) -> None:
    status, steps, stderr = run_ci(tmp_path, failing=failing, missing=missing)
    assert status != 0, f"CI passed with {failing or missing} failing: {steps}"
    assert _logged(steps) == STEPS[:ran]  # nothing after the failed step ran
    if status_word is not None:
        assert f"error: the README's test command failed ({status_word})" in stderr


def test_a_missing_command_is_installed_and_a_failed_install_fails_ci(tmp_path: Path) -> None:
    status, steps, stderr = run_ci(tmp_path / "ok", inject="need iotdps-ci-missing iotdps-ci-package")
    assert status == 0, stderr
    installs = [s for s in steps if s.startswith("apt-get")]
    assert installs[0] == "apt-get update -q"  # the package lists first, on a fresh machine
    assert installs[1].startswith("apt-get install") and installs[1].endswith(" iotdps-ci-package")

    status, steps, stderr = run_ci(
        tmp_path / "failed", inject="need iotdps-ci-missing iotdps-ci-package", failing=("apt-get",)
    )
    assert status != 0
    assert _logged(steps) == []  # stopped before the tests
    assert "error: apt-get update failed (needed to install iotdps-ci-package)" in stderr


def test_a_missing_library_is_installed(tmp_path: Path) -> None:
    # pkg-config finds no library (its stand-in fails): each library's package is installed.
    status, steps, stderr = run_ci(tmp_path, failing=("pkg-config",))
    assert status == 0, stderr
    installs = [s for s in steps if s.startswith("apt-get install")]
    assert [s.split()[-1] for s in installs] == ["libtss2-dev"]
    assert _logged(steps) == STEPS


# -- the skip guard ---------------------------------------------------------------------------

SCRATCH_TESTS = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("no broker here")
"""


def run_scratch_suite(tmp_path: Path, *, forbid: bool, body: str = SCRATCH_TESTS) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_scratch.py").write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "IOTDPS_"))}
    env["PYTHONPATH"] = str(ROOT / "tests")
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if forbid:
        env["IOTDPS_FORBID_SKIPS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "iotdps_testing.no_skips", "-p", "no:cacheprovider", "-rs", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_skipped_test_fails_the_run_only_where_skips_are_forbidden(tmp_path: Path) -> None:
    forbidden = run_scratch_suite(tmp_path, forbid=True)
    assert forbidden.returncode == pytest.ExitCode.TESTS_FAILED, forbidden.stdout
    assert "1 test(s) skipped while IOTDPS_FORBID_SKIPS is set" in forbidden.stdout
    allowed = run_scratch_suite(tmp_path, forbid=False)
    assert allowed.returncode == pytest.ExitCode.OK, allowed.stdout
    assert "1 skipped" in allowed.stdout
    clean = run_scratch_suite(tmp_path, forbid=True, body="def test_runs():\n    assert True\n")
    assert clean.returncode == pytest.ExitCode.OK, clean.stdout
