"""The console as an aiohttp sub-application of the management API, on the same port and TLS.

    GET    /console/                the page (one HTML shell; the pages are ES modules)
    GET    /console/static/...      the hand-written assets shipped in the package
    POST   /console/session         sign in: connection strings or policy + key -> cookie
    GET    /console/session         who is signed in, with which rights, and the CSRF token
    DELETE /console/session         sign out (needs the CSRF token)

Everything else the page shows comes from the management API's own routes, called with the
session cookie (and the CSRF token on changes): `AccessPolicies.authorize` (iotdps.access)
holds a session to the rights of its policies, exactly as it holds a token. The console and
the API share those rules through iotdps.access and never import each other.

Every answer on the management port carries the security headers below: a Content-Security-
Policy that allows scripts and styles from this origin only (no inline code or styles), no
framing, no sniffing, no referrer, and `Cache-Control: no-store` unless the handler chose
otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from iotdps.access import CSRF_HEADER, SESSION_COOKIE, AccessPolicies, Permission, key_digest
from iotdps.errors import Forbidden, InvalidInput, Unauthorized
from iotdps.web.credentials import parse_credentials, prove
from iotdps.web.sessions import LoginLimiter, Session, SessionTable

__all__ = ["CONSOLE_PATH", "CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "Console"]

log = logging.getLogger("iotdps.console")

CONSOLE_PATH = "/console"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Strict-Transport-Security": "max-age=31536000",
    "Cache-Control": "no-store",
}
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_MAX_LOGIN_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str


def _load_assets() -> dict[str, _Asset]:
    """Every file under web/static, read once (they are small and never change at run time)."""
    found: dict[str, _Asset] = {}
    root = resources.files("iotdps.web").joinpath("static")

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            if suffix in _TYPES:
                found[name] = _Asset(child.read_bytes(), _TYPES[suffix])

    walk(root, "")
    return found


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Console:
    """The console of one server: its sessions and login limiter, and the sub-app serving it.
    `sessions` is what `build_management_app(sessions=...)` needs."""

    def __init__(
        self, policies: AccessPolicies, *, sessions: SessionTable | None = None, limiter: LoginLimiter | None = None
    ) -> None:
        self.policies = policies
        self.sessions = sessions or SessionTable()
        self.limiter = limiter or LoginLimiter()
        self._assets = _load_assets()
        if "index.html" not in self._assets:
            raise RuntimeError("the console's assets are missing from the package (iotdps/web/static)")

    def mount(self, app: web.Application) -> None:
        """Serve the console under /console/ of `app` (the management API, not yet started),
        and give every answer of `app` the security headers."""
        app.on_response_prepare.append(_security_headers)

        async def to_console(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(CONSOLE_PATH + "/")

        app.router.add_get("/", to_console, allow_head=False)
        app.router.add_get(CONSOLE_PATH, to_console, allow_head=False)
        sub = web.Application()
        sub.router.add_get("/", self._page, allow_head=False)
        sub.router.add_get("/static/{path:.+}", self._static, allow_head=False)
        sub.router.add_get("/session", self._who)
        sub.router.add_post("/session", self._sign_in)
        sub.router.add_delete("/session", self._sign_out)
        app.add_subapp(CONSOLE_PATH, sub)

    # ------------------------------------------------------------------ assets

    async def _page(self, request: web.Request) -> web.StreamResponse:
        asset = self._assets["index.html"]
        return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        asset = self._assets.get(request.match_info["path"])
        if asset is None or request.match_info["path"] == "index.html":
            raise web.HTTPNotFound()
        response = web.Response(body=asset.body, content_type=asset.content_type)
        if asset.content_type.startswith("text/"):
            response.charset = "utf-8"
        response.headers["Cache-Control"] = "no-cache"
        return response

    # ------------------------------------------------------------------ sessions

    def _describe(self, session: Session) -> dict[str, Any]:
        """What the page needs: the policies still valid (a rotated key drops one), the union of
        their rights, the CSRF token and when the session ends."""
        names: list[str] = []
        rights: set[Permission] = set()
        for name, digest in sorted(session.policies.items()):
            try:
                policy = self.policies.get(name)
            except InvalidInput:
                continue
            if digest in (key_digest(policy.primary_key.reveal()), key_digest(policy.secondary_key.reveal())):
                names.append(name)
                rights |= policy.rights
        return {
            "policies": names,
            "rights": sorted(p.value for p in rights),
            "csrfToken": session.csrf_token,
            "expiresUtc": _time(session.expires),
            "idleSeconds": int(self.sessions.idle_seconds),
        }

    async def _who(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.find(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise Unauthorized("not signed in to the console")
        return web.json_response(self._describe(session))

    async def _read_body(self, request: web.Request) -> object:
        # A cross-site form cannot send JSON without a CORS preflight, which we never answer:
        # with the Origin check, no other site can sign a browser in (login CSRF).
        if request.content_type != "application/json":
            raise InvalidInput("sign in with a JSON body (Content-Type: application/json)")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            raise Forbidden("sign-in from another origin is refused")
        raw = await request.content.read(_MAX_LOGIN_BODY + 1)
        if len(raw) > _MAX_LOGIN_BODY:
            raise InvalidInput("the sign-in body is too large")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("the sign-in body is not valid JSON") from None

    async def _sign_in(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "unknown"
        self.limiter.check(address)
        doc = await self._read_body(request)
        try:
            proven = prove(self.policies, parse_credentials(doc))
        except (Unauthorized, InvalidInput) as exc:
            self.limiter.failed(address)
            log.info("console sign-in from %s refused: %s", address, exc.message)
            raise
        cookie = request.cookies.get(SESSION_COOKIE)
        previous = self.sessions.find(cookie)
        if previous is not None:
            # Adding a credential to a session: the page proves it is the session's own.
            self.sessions.check_csrf(previous, request.headers.get(CSRF_HEADER))
            proven = {**previous.policies, **proven}
            self.sessions.close(cookie)
        session_id, session = self.sessions.open(proven)
        log.info("console sign-in from %s as %s", address, ", ".join(sorted(proven)))
        response = web.json_response(self._describe(session), status=201)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(self.sessions.absolute_seconds),
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def _sign_out(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.find(cookie)
        if session is not None:
            self.sessions.check_csrf(session, request.headers.get(CSRF_HEADER))
            self.sessions.close(cookie)
        response = web.Response(status=204)
        response.set_cookie(SESSION_COOKIE, "", max_age=0, path="/", secure=True, httponly=True, samesite="Strict")
        return response
