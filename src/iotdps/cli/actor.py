"""Who the local CLI acts as, for the audit trail: the user on this machine. Against a server
(`--server`), the server names the policy whose credentials the CLI signed with instead."""

from __future__ import annotations

import getpass
import os

from iotdps.audit import Actor

__all__ = ["local_actor"]


def local_actor() -> Actor:
    """`local:<login name>`; the numeric uid when the name cannot be found (a container's
    arbitrary uid has no passwd entry)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return Actor("local", name or f"uid-{os.getuid()}")
