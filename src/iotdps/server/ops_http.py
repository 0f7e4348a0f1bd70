"""Operator probes on the management port: /healthz and /readyz, without credentials.
(/metrics beside them is server/metrics_http.py's, and asks for a token by default.)

Orchestrators (Docker's HEALTHCHECK, Kubernetes probes, systemd watchdogs, load balancers) and
Prometheus call these without a token, so they answer everyone and therefore say nothing that
helps an attacker: no versions, host names, paths, counts or error texts; /readyz names its
checks and whether each passed, nothing more.

- /healthz: the process is alive and its event loop answers (no I/O; always 200).
- /readyz: every listener is bound and serving, the store answers a read, and its schema is at
  the revision this code needs; 200 when all hold, else 503. The reasons go to the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

__all__ = ["HEALTH_PATH", "OPS_PATHS", "READY_PATH", "Readiness", "add_ops_routes"]

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPS_PATHS = (HEALTH_PATH, READY_PATH)

# check name -> passed; the names are fixed words ("listeners", "store", "migrations").
Readiness = Callable[[], Awaitable[Mapping[str, bool]]]

log = logging.getLogger("iotdps.server")

_NO_STORE = {"Cache-Control": "no-store"}


def _json(status: int, body: object) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, separators=(",", ":")), content_type="application/json", headers=_NO_STORE
    )


def add_ops_routes(app: web.Application, readiness: Readiness) -> None:
    """Add the two probes to `app` (before it is started)."""

    async def healthz(request: web.Request) -> web.StreamResponse:
        return _json(200, {"status": "ok"})

    async def readyz(request: web.Request) -> web.StreamResponse:
        checks = {name: bool(ok) for name, ok in (await readiness()).items()}
        ready = bool(checks) and all(checks.values())
        if not ready:
            log.warning("not ready: %s", ", ".join(name for name, ok in checks.items() if not ok))
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": checks})

    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get(READY_PATH, readyz)
