"""The console's way in: sessions, CSRF, rights, cookie flags, headers, sign-in guessing.

Against a real `iotdps up` over real TLS, with a raw HTTPS client that sends exactly what a
browser (or an attacker's page, or a script) would: tests/iotdps_testing/console.py.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from iotdps_testing.console import SESSION_COOKIE, ConsoleClient, policy_key
from iotdps_testing.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

STATIC = Path(__file__).resolve().parents[2] / "src" / "iotdps" / "web" / "static"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("console-attack"))
    try:
        yield srv
    finally:
        srv.stop()


def _enrollment(rid: str) -> dict[str, object]:
    return {"registrationId": rid, "attestation": {"type": "symmetricKey", "symmetricKey": {}}}


def test_without_a_session_every_route_is_401(server: RunningServer) -> None:
    anonymous = ConsoleClient(server)
    assert anonymous.request("GET", "/console/session").status == 401
    assert anonymous.request("POST", "/enrollments/query", {}).status == 401
    assert anonymous.request("GET", "/status").status == 401
    forged = ConsoleClient(server, session=base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    assert forged.request("GET", "/console/session").status == 401
    assert forged.request("GET", "/status").status == 401
    assert forged.request("PUT", "/enrollments/forged-1", _enrollment("forged-1"), csrf="x").status == 401
    # The page and its assets are public (they hold nothing); the data is not.
    assert anonymous.request("GET", "/console/").status == 200


def test_a_change_without_the_sessions_csrf_token_is_403(server: RunningServer) -> None:
    owner = ConsoleClient(server)
    owner.sign_in("provisioningserviceowner")
    other = ConsoleClient(server)
    other.sign_in("provisioningserviceowner")
    assert other.csrf != owner.csrf
    for csrf in (False, "", "not-the-token", str(other.csrf)):
        answer = owner.request("PUT", "/enrollments/csrf-1", _enrollment("csrf-1"), csrf=csrf)
        assert answer.status == 403, (csrf, answer.body)
        assert "X-CSRF-Token" in answer.json()["message"]
    assert owner.request("GET", "/enrollments/csrf-1").status == 404  # nothing was written
    assert owner.request("DELETE", "/console/session", csrf=False).status == 403
    assert owner.request("GET", "/console/session").status == 200  # still signed in
    assert owner.request("PUT", "/enrollments/csrf-1", _enrollment("csrf-1")).status == 200
    assert owner.request("DELETE", "/enrollments/csrf-1", csrf=False).status == 403
    assert owner.request("DELETE", "/enrollments/csrf-1").status == 204


def test_a_read_only_session_cannot_change_or_read_keys(server: RunningServer) -> None:
    owner = ConsoleClient(server)
    owner.sign_in("provisioningserviceowner")
    assert owner.request("PUT", "/enrollments/ro-1", _enrollment("ro-1")).status == 200
    group = {"enrollmentGroupId": "ro-g", "attestation": {"type": "symmetricKey", "symmetricKey": {}}}
    assert owner.request("PUT", "/enrollmentGroups/ro-g", group).status == 200
    owner_keys = owner.request("POST", "/enrollmentGroups/ro-g/attestationmechanism").json()["symmetricKey"]

    reader = ConsoleClient(server)
    signed = reader.sign_in("enrollmentread").json()
    assert signed["policies"] == ["enrollmentread"]
    assert "EnrollmentWrite" not in signed["rights"]
    shown = reader.request("GET", "/enrollments/ro-1")
    assert shown.status == 200 and b"primaryKey" not in shown.body
    for method, path, body in (
        ("POST", "/enrollments/ro-1/attestationmechanism", None),
        ("POST", "/enrollmentGroups/ro-g/attestationmechanism", None),
        ("PUT", "/enrollments/ro-1", {**_enrollment("ro-1"), "provisioningStatus": "disabled"}),
        ("DELETE", "/enrollments/ro-1", None),
        ("PUT", "/certificates/ro-ca", {"certificate": "x"}),
        ("DELETE", "/registrations/ro-1", None),
        ("GET", "/devices", None),  # a hub route: DPS policies grant nothing on a hub
    ):
        answer = reader.request(method, path, body, headers={"x-iotdps-hub": server.address})
        assert answer.status == 401, (method, path, answer.status)
        assert owner_keys["primaryKey"].encode() not in answer.body
    assert owner.request("GET", "/enrollments/ro-1").json()["provisioningStatus"] == "enabled"


def test_the_session_cookie_flags(server: RunningServer) -> None:
    client = ConsoleClient(server)
    client.sign_in("provisioningserviceowner")
    (cookie,) = client.set_cookies
    name, _, rest = cookie.partition("=")
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in rest.split(";")[1:]}
    assert name == SESSION_COOKIE  # __Host-: Secure, Path=/ and no Domain, enforced by browsers
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes.keys()
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/"
    assert "domain" not in attributes
    assert 0 < int(attributes["max-age"].split("=")[1]) <= 8 * 3600
    assert client.request("DELETE", "/console/session").status == 204
    cleared = client.set_cookies[-1]
    assert "Max-Age=0" in cleared and "Secure" in cleared
    assert client.request("GET", "/status").status == 401


class _Inline(HTMLParser):
    """Finds what a strict CSP would block: inline scripts, style elements and attributes,
    event handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        self.problems += [f"{name} attribute on <{tag}>" for name in names if name == "style" or name.startswith("on")]


def test_security_headers_and_a_csp_without_inline_code(server: RunningServer) -> None:
    client = ConsoleClient(server)
    page = client.request("GET", "/console/")
    answers = [page, client.request("GET", "/console/static/js/main.js"), client.request("GET", "/status")]
    for answer in answers:
        csp = answer.header("Content-Security-Policy") or ""
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in csp
        assert answer.header("X-Content-Type-Options") == "nosniff"
        assert answer.header("X-Frame-Options") == "DENY"
        assert answer.header("Referrer-Policy") == "no-referrer"
    assert page.header("Cache-Control") == "no-store"
    parser = _Inline()
    parser.feed(page.body.decode())
    assert parser.problems == []
    # Every asset builds the page from text nodes: no HTML from strings, no eval.
    for path in STATIC.rglob("*.js"):
        code = path.read_text()
        found = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", code)
        assert found == [], f"{path.name}: {found}"


def test_sign_in_guessing_is_limited(server: RunningServer) -> None:
    guesser = ConsoleClient(server)
    wrong = base64.b64encode(os.urandom(32)).decode()
    for _ in range(5):
        answer = guesser.request("POST", "/console/session", {"policyName": "provisioningserviceowner", "key": wrong})
        assert answer.status == 401
    limited = guesser.request("POST", "/console/session", {"policyName": "provisioningserviceowner", "key": wrong})
    assert limited.status == 429 and int(limited.header("Retry-After") or 0) > 0
    # While limited, not even the right key is checked: guessing cannot continue.
    right = policy_key(server, "provisioningserviceowner")
    still = guesser.request("POST", "/console/session", {"policyName": "provisioningserviceowner", "key": right})
    assert still.status == 429 and guesser.session is None
    # Another address is not affected.
    ConsoleClient(server).sign_in("provisioningserviceowner")


def test_a_cross_site_sign_in_is_refused(server: RunningServer) -> None:
    client = ConsoleClient(server)
    cs = f"HostName=x;SharedAccessKeyName=enrollmentread;SharedAccessKey={policy_key(server, 'enrollmentread')}"
    evil = client.request(
        "POST", "/console/session", {"connectionString": cs}, headers={"Origin": "https://attacker.example"}
    )
    assert evil.status == 403 and client.session is None
    form = client.request(
        "POST",
        "/console/session",
        raw_body=b"connectionString=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status == 400 and client.session is None
    same = client.request(
        "POST", "/console/session", {"connectionString": cs}, headers={"Origin": f"https://{server.address}:8443"}
    )
    assert same.status == 201


def test_no_key_session_id_or_csrf_token_reaches_the_log(server: RunningServer) -> None:
    # Only what the console made the server write (the first-start banner is issue 15's).
    before = len(server.log())
    client = ConsoleClient(server)
    client.sign_in("provisioningserviceowner", "iothubowner")
    assert client.request("GET", "/status").status == 200
    client.request("POST", "/console/session", {"policyName": "iothubowner", "key": "d3Jvbmc="}, csrf=True)
    log = server.log()[before:]
    assert "console sign-in" in log
    secrets_ = [
        policy_key(server, "provisioningserviceowner"),
        policy_key(server, "iothubowner"),
        str(client.session),
        str(client.csrf),
    ]
    for secret in secrets_:
        assert secret not in log
