"""A listener that cannot bind becomes one sentence an operator can act on.

asyncio raises a bare OSError ("[Errno 13] error while attempting to bind on address
('127.0.0.1', 443): permission denied") from deep inside `iotdps up`, which the CLI showed as a
50-line traceback. `ListenError` names the address, the setting that chose the port, and the
ways out; the CLI prints it as one `error:` line (exit 2: the configuration asked for something
this machine will not give).
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from iotdps.errors import IotdpsError

__all__ = ["ListenError", "ListenerSetting", "privileged_port_start"]

_SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def privileged_port_start() -> int:
    """The first port an unprivileged process may bind (Linux's sysctl; 1024 elsewhere)."""
    try:
        return int(_SYSCTL.read_text().strip())
    except (OSError, ValueError):
        return 1024


def _interpreter() -> str:
    # setcap works on the real file: a venv's python is a symlink to the system interpreter.
    return os.path.realpath(sys.executable)


@dataclass(frozen=True, slots=True)
class ListenerSetting:
    """What a listener is, and how an operator moves it (for the error message)."""

    label: str  # "the DPS HTTPS port"
    flag: str  # "--https-port"
    variable: str  # "IOTDPS_HTTPS_PORT"

    @property
    def how(self) -> str:
        return f"{self.flag} or {self.variable}"


class ListenError(IotdpsError):
    """Binding `host:port` failed; `setting` says which listener it was and how to move it."""

    def __init__(self, host: str, port: int, cause: OSError, setting: ListenerSetting | None = None) -> None:
        self.host, self.port, self.errno, self.setting = host, port, cause.errno, setting
        super().__init__(self._explain(cause))

    def for_listener(self, setting: ListenerSetting) -> ListenError:
        """The same failure, now knowing which listener it was."""
        cause = OSError(self.errno, os.strerror(self.errno) if self.errno else "")
        return ListenError(self.host, self.port, cause, setting)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _explain(self, cause: OSError) -> str:
        where = f"cannot listen on {self.address}"
        chosen = f" ({self.setting.label})" if self.setting else ""
        if self.errno == errno.EACCES and self.port < privileged_port_start():
            example = f", e.g. {self.setting.flag} {self.port + 9000}" if self.setting else ""
            return (
                f"{where}{chosen}: ports below {privileged_port_start()} need privilege. "
                f"For local use choose a port >= 1024{self._flag_hint()}{example}; to serve "
                f"port {self.port} as this user, grant the capability "
                f"(setcap cap_net_bind_service=+ep {_interpreter()}), run under systemd with "
                "AmbientCapabilities=CAP_NET_BIND_SERVICE, or lower the sysctl "
                f"net.ipv4.ip_unprivileged_port_start to {self.port}"
            )
        if self.errno == errno.EACCES:
            return f"{where}{chosen}: permission denied (a security policy refuses this address or port)"
        if self.errno == errno.EADDRINUSE:
            return (
                f"{where}{chosen}: the address is already in use (another iotdps or another program "
                f"listens there); stop it, or choose another address (--bind) or port{self._flag_hint()}"
            )
        if self.errno == errno.EADDRNOTAVAIL:
            return f"{where}{chosen}: no network interface of this machine has the address {self.host}"
        reason = cause.strerror or type(cause).__name__
        return f"{where}{chosen}: {reason}"

    def _flag_hint(self) -> str:
        return f" ({self.setting.how})" if self.setting else ""
