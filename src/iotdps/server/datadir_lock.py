"""One server per data directory: `iotdps up` holds an fcntl lock on `server.lock` while it runs.

Two servers on one data dir used to both start: the second replaced `control.sock`, and the
first, still serving devices, became unreachable by the CLI. The lock is taken before anything
in the directory is touched, and the kernel drops it when the process ends however it ends
(kill -9 included), so a stale file never blocks a start. The file holds the holder's pid, for
the message a second `up` prints and for `iotdps status`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from iotdps.errors import IotdpsError

__all__ = ["LOCK_FILE", "DataDirInUse", "DataDirLock", "lock_holder"]

LOCK_FILE = "server.lock"


class DataDirInUse(IotdpsError):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(
            f"the data directory {data_dir} is in use by another iotdps server ({who}); stop that one, "
            "or give this one its own --data-dir"
        )


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None


class DataDirLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(self.data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Empty the file first: a pid left behind would name a process that no longer serves.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the server running on `data_dir`, or None when none is."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
