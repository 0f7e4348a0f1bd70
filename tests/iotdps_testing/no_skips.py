"""A pytest plugin for CI: with IOTDPS_FORBID_SKIPS=1 in the environment, a skipped test fails
the run.

Why: a skip is a test that proved nothing, and pytest still exits 0 and reports it in one summary
line. A missing broker or binary once made a test skip in every CI run without anyone noticing;
.ci/run sets the variable, so whatever the suite needs must be there (or be installed by
.ci/run). Tests loaded through tests/conftest.py.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["pytest_sessionfinish", "pytest_terminal_summary"]

ENV = "IOTDPS_FORBID_SKIPS"


def _forbidden() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _skipped(config: pytest.Config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter is not None else 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _forbidden() and exitstatus == pytest.ExitCode.OK and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if _forbidden() and skipped:
        terminalreporter.write_line(
            f"error: {skipped} test(s) skipped while {ENV} is set: every test must run (see -ra above)",
            red=True,
        )
