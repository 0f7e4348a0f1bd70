"""A raw HTTPS client for the console's routes on a real `iotdps up`: what a browser sends,
spelled out (cookie, X-CSRF-Token, Origin), from a chosen loopback source address so that
the sign-in limiter's per-address counts are under the test's control.

Also: the policies' keys from the data dir, and Chromium launch options for Playwright
(Debian's /usr/bin/chromium; a test tool never downloads a browser of its own).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "MGMT_PORT",
    "SESSION_COOKIE",
    "Answer",
    "ConsoleClient",
    "connection_string",
    "policy_key",
]

MGMT_PORT = 8443
SESSION_COOKIE = "__Host-iotdps-session"
CHROMIUM = "/usr/bin/chromium"
# As the machine notes advise: no sandbox as root, and no background traffic to Google's
# hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def policy_key(server: RunningServer, policy: str, which: str = "primaryKey") -> str:
    doc = json.loads((server.data_dir / "access-policies.json").read_text())
    return str(next(p[which] for p in doc["policies"] if p["keyName"] == policy))


def connection_string(server: RunningServer, policy: str) -> str:
    return (
        f"HostName={server.address}:{MGMT_PORT};SharedAccessKeyName={policy};"
        f"SharedAccessKey={policy_key(server, policy)}"
    )


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class ConsoleClient:
    server: RunningServer
    source: str = field(default_factory=free_loopback_address)
    session: str | None = None
    csrf: str | None = None
    set_cookies: list[str] = field(default_factory=list)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server.server_ca_path))
        return context

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        csrf: bool | str = True,
        raw_body: bytes | None = None,
    ) -> Answer:
        """Send with the session cookie (if any) and, for changes, the CSRF token (`csrf=False`
        leaves it out, a string sends that instead)."""
        conn = http.client.HTTPSConnection(
            self.server.address, MGMT_PORT, context=self._context(), timeout=30, source_address=(self.source, 0)
        )
        sent = {"Accept": "application/json", **(headers or {})}
        if self.session is not None:
            sent["Cookie"] = f"{SESSION_COOKIE}={self.session}"
        if method not in ("GET", "HEAD") and csrf is not False:
            token = csrf if isinstance(csrf, str) else self.csrf
            if token:
                sent["X-CSRF-Token"] = token
        payload = raw_body
        if body is not None:
            payload = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=payload, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            conn.close()
        for value in answer.headers.get_all("Set-Cookie") or []:
            self.set_cookies.append(value)
            cookie = SimpleCookie()
            cookie.load(value)
            if SESSION_COOKIE in cookie:
                self.session = cookie[SESSION_COOKIE].value or None
        return answer

    def sign_in(self, *policies: str, expect: int = 201) -> Answer:
        credentials = [{"connectionString": connection_string(self.server, p)} for p in policies]
        answer = self.request("POST", "/console/session", {"credentials": credentials})
        assert answer.status == expect, answer.body
        if answer.status == 201:
            self.csrf = answer.json()["csrfToken"]
        return answer
