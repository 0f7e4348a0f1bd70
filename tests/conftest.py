"""Suite-wide hooks."""

from iotdps_testing.no_skips import pytest_sessionfinish, pytest_terminal_summary

__all__ = ["pytest_sessionfinish", "pytest_terminal_summary"]
