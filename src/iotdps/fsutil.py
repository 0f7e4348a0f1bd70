"""Atomic file output: a failure never leaves a half-written key or certificate behind.

Every file goes to a temporary name in the destination directory first (same file system, so
the final `os.replace` is atomic), is flushed and fsynced, and only then takes its real name.
Readers therefore see either the old file or the complete new one, never a prefix of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_many", "open_to_others", "private_file", "staged_directory"]

PRIVATE_MODE = 0o600


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is; not every platform can open a dir.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int, *, sync: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp already creates 0600; chmod makes the mode explicit for other modes too, and it
        # happens before any byte of a key is written.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = PRIVATE_MODE, overwrite: bool = True, sync: bool = True
) -> Path:
    """Write `data` to `path` atomically with permissions `mode` (0600 by default)."""
    return atomic_write_many({Path(path): data}, mode=mode, overwrite=overwrite, sync=sync)[0]


def atomic_write_many(
    files: Mapping[Path, bytes], *, mode: int = PRIVATE_MODE, overwrite: bool = True, sync: bool = True
) -> list[Path]:
    """Write several files as one unit: all of them appear, or none of the new ones does.

    Used for a key and its certificate: a key without its certificate (or the reverse) is a
    half-written credential. If `overwrite` is false and any target exists, nothing is written.
    """
    targets = [Path(p) for p in files]
    if not overwrite:
        existing = [t for t in targets if t.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]} already exists")
    temps: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for target, data in zip(targets, files.values(), strict=True):
            temps.append((_write_temp(target, data, mode, sync=sync), target))
        for tmp, target in temps:
            os.replace(tmp, target)
            done.append(target)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        # Roll back the ones already renamed, so the unit stays all-or-nothing.
        for target in done:
            target.unlink(missing_ok=True)
        raise
    if sync:
        for directory in {t.parent for t in targets}:
            _fsync_dir(directory)
    return targets


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final`; rename it to `final` on success.

    A batch of device credentials is written file by file into the staging directory without
    per-file fsync (thousands of fsyncs would dominate the run); the batch becomes visible under
    its real name only when complete. On any error the staging directory is removed. `final`
    must not exist yet (an existing batch is never merged into or replaced).
    """
    target = Path(final)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(staging, 0o700)
        yield staging
        # One global flush instead of one fsync per file (see above).
        if hasattr(os, "sync"):
            os.sync()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def private_file(path: str | os.PathLike[str]) -> None:
    """Make sure `path` exists and only its owner may read or write it (0600), whatever the
    umask and whoever made its directory.

    For files another library creates and fills, SQLite's database first of all: an empty file
    is a valid empty database, and SQLite gives the -wal and -shm it creates beside it the
    database file's own mode. An existing file (one an older release left 0644) is narrowed.
    Raises OSError when the file can neither be created nor narrowed (the caller's open would
    fail next anyway, with the library's own message).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, PRIVATE_MODE)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, PRIVATE_MODE)
        return
    try:
        os.fchmod(fd, PRIVATE_MODE)  # the umask only ever narrows os.open's mode; say it anyway
    finally:
        os.close(fd)


def open_to_others(directory: str | os.PathLike[str]) -> int:
    """The group and other permission bits of `directory` (0 when private or missing)."""
    try:
        return os.stat(directory).st_mode & 0o077
    except OSError:
        return 0
