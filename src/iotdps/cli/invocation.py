"""How the user can run `iotdps` again, for hints such as the first-start banner's.

The README installs into a venv without activating it, so `iotdps` is often not on PATH and a
hint that says `iotdps enrollment create ...` fails with "command not found". The hint uses
the command this process was started as: `iotdps` when that is what PATH finds, else the path
to the script (relative to the working directory when under it, e.g. `.venv/bin/iotdps`), or
`<python> -m iotdps` for a process started that way.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["runnable_command"]


def _shown(path: str, cwd: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(cwd)
    except ValueError:
        return shlex.quote(str(absolute))
    text = str(relative)
    return shlex.quote(text if os.sep in text else f".{os.sep}{text}")


def runnable_command(
    argv0: str | None = None, executable: str | None = None, path: str | None = None, cwd: Path | None = None
) -> str:
    """The shell words that run this program's `iotdps` from `cwd` (defaults: this process)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    path = os.environ.get("PATH", "") if path is None else path
    cwd = Path.cwd() if cwd is None else cwd
    if Path(argv0).name in ("__main__.py", "-m", "-c") or not argv0:
        return f"{_shown(executable, cwd)} -m iotdps"
    found = shutil.which("iotdps", path=path)
    if found is not None and os.path.realpath(found) == os.path.realpath(argv0):
        return "iotdps"
    return _shown(argv0, cwd)
