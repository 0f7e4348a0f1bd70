"""The metrics scrape token file (server/metrics_http.py): made private, read strictly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from iotdps.errors import ConfigError
from iotdps.server.metrics_http import MIN_TOKEN_LENGTH, ensure_metrics_token


def test_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "metrics-token"
    token = ensure_metrics_token(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token.reveal()) >= 43 and token.reveal() in path.read_text()
    assert token.reveal() not in repr(token)
    assert ensure_metrics_token(path).reveal() == token.reveal()  # the next start reads it back
    assert ensure_metrics_token(tmp_path / "other").reveal() != token.reveal()


def test_an_operators_token_is_read_with_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "mounted"
    path.write_text("k" * MIN_TOKEN_LENGTH + "\n")
    path.chmod(0o600)
    assert ensure_metrics_token(path).reveal() == "k" * MIN_TOKEN_LENGTH


@pytest.mark.parametrize(
    "content",
    [b"", b"short\n", b"has a space in it and is long enough to pass\n", b"\xff" * 40, b"tab\tinside" + b"x" * 40],
)
def test_a_weak_or_odd_token_stops_the_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        ensure_metrics_token(path)
    assert str(path) in info.value.message and "Traceback" not in info.value.message


def test_a_directory_is_not_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read: IsADirectoryError"):
        ensure_metrics_token(tmp_path)


def test_a_token_others_may_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text("s" * 40)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="iotdps.server"):
        token = ensure_metrics_token(path)
    assert "open to other users (mode 644)" in caplog.text
    assert token.reveal() not in caplog.text
