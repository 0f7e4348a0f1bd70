"""/metrics for Prometheus: on the management port, and optionally on a port of its own.

Why a token by default: the exposition names every hub and every listener's address and shows
what the service is doing (registrations, refusals by reason, handshake failures), which is
reconnaissance for anyone on the network. The management API's SAS tokens expire and must be
signed per request, which Prometheus cannot do; a bearer token read from a file is what it
supports (`authorization: {credentials_file: ...}`). So by default a scrape must send
`Authorization: Bearer <token>`, compared in constant time, over the same TLS as the
management port. `[metrics] require_auth = false` serves it to anyone, as before.

The token file is made on first start (32 random bytes, base64url, mode 0600) unless the
operator provides one (`[metrics] token_file`, for a secret a container platform mounts).
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import stat
from pathlib import Path

from aiohttp import web

from iotdps import metrics
from iotdps.errors import ConfigError
from iotdps.fsutil import atomic_write
from iotdps.secret import Secret

__all__ = ["METRICS_PATH", "MIN_TOKEN_LENGTH", "add_metrics_route", "build_metrics_app", "ensure_metrics_token"]

METRICS_PATH = "/metrics"
# A token shorter than this is guessable over the network; ours are 43 characters.
MIN_TOKEN_LENGTH = 32

log = logging.getLogger("iotdps.server")

_NO_STORE = {"Cache-Control": "no-store"}
_CHALLENGE = {**_NO_STORE, "WWW-Authenticate": 'Bearer realm="iotdps metrics"'}


def ensure_metrics_token(path: Path) -> Secret[str]:
    """The scrape token in `path`, made there (0600) when the file does not exist yet."""
    if not path.exists():
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, (token + "\n").encode("ascii"), overwrite=False)
        log.info("made the metrics scrape token file %s", path)
        return Secret(token)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"metrics.token_file {path} cannot be read: {exc.__class__.__name__}"]) from None
    if len(text) < MIN_TOKEN_LENGTH or not text.isascii() or not text.isprintable() or " " in text:
        raise ConfigError(
            [f"metrics.token_file {path} must hold one token of at least {MIN_TOKEN_LENGTH} printable ASCII characters"]
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the metrics token file %s is open to other users (mode %03o): chmod 600 it", path, mode & 0o777)
    return Secret(text)


def _authorized(request: web.Request, token: Secret[str]) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Both sides as bytes: compare_digest refuses non-ASCII str, and a header may hold anything.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.reveal().encode("ascii"))


def add_metrics_route(app: web.Application, token: Secret[str] | None) -> None:
    """GET /metrics on `app`; `token` None serves it without credentials."""

    async def metrics_page(request: web.Request) -> web.StreamResponse:
        if token is not None and not _authorized(request, token):
            # No body that says more: what is missing is in the challenge header.
            return web.Response(status=401, text="401: Unauthorized", headers=_CHALLENGE)
        response = web.Response(body=metrics.exposition(), headers=_NO_STORE)
        response.headers["Content-Type"] = metrics.CONTENT_TYPE
        return response

    app.router.add_get(METRICS_PATH, metrics_page)


def build_metrics_app(token: Secret[str] | None) -> web.Application:
    """The metrics port's application: /metrics and nothing else."""
    app = web.Application()
    add_metrics_route(app, token)
    return app
