"""The console in a real browser against a real `iotdps up`: an operator's afternoon.

Headless Chromium (Debian's) driven by Playwright; devices are the official azure-iot-device
SDK, provisioned and connected during the test; CA certificates come from our toolkit.
Every page is screenshotted to tests/output/console/. The tests share one server and run in
file order: the accessibility pass at the end sees pages with data on them.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.pki import (
    Issuer,
    Validity,
    create_intermediate_ca,
    create_root_ca,
    generate_private_key,
    issue_device_certificate,
    issue_verification_certificate,
)
from iotdps.pki.revocation import RevokedEntry, build_crl, crl_pem
from iotdps_testing.console import connection_string
from iotdps_testing.devcerts import derived_key
from iotdps_testing.server import RunningServer

from .conftest import Console

T = TypeVar("T")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
logging.getLogger("azure").setLevel(logging.WARNING)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _sdk(server: RunningServer, registration_id: str, key: str) -> ProvisioningDeviceClient:
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
    )


def _off_loop(call: Callable[[], T]) -> T:
    """Run `call` on a thread of its own: Playwright's sync API keeps an event loop running on
    the test's thread, and the server helpers (store reads, the CLI) start their own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(60)


def _until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_an_operators_afternoon(console: Console, server: RunningServer) -> None:
    page = console.page

    # Sign in with the provisioning service's owner and the hub owner together.
    page.goto(f"{console.base}/")
    console.heading("Sign in to iotdps")
    console.shot("01-sign-in")
    console.sign_in("provisioningserviceowner", "iothubowner")
    console.heading("Overview")

    # CAs: upload a root, prove possession with the verification certificate our toolkit
    # signs, then an intermediate that expires soon (the tree and the warning).
    root_key = generate_private_key()
    root = create_root_ca("console-root", root_key, Validity.days(365))
    issuer = Issuer(root, root_key)
    page.get_by_role("link", name="CA certificates").click()
    console.heading("CA certificates")
    page.get_by_label("Name", exact=True).fill("root")
    page.get_by_label("Certificate (PEM)").fill(_pem(root))
    page.get_by_role("button", name="Upload").click()
    console.heading("CA root")
    page.get_by_role("button", name="Generate a verification code").click()
    code = page.locator("#verification-code").inner_text()
    proof = issue_verification_certificate(issuer, code, generate_private_key().public_key(), Validity.days(1))
    page.get_by_label("Verification certificate (PEM)").fill(_pem(proof))
    page.get_by_role("button", name="Verify").click()
    page.locator(".steps li.done", has_text="Verified").wait_for()
    assert page.locator(".steps li.done").count() == 4
    console.shot("03-ca-proof-of-possession")

    factory_key = generate_private_key()
    factory = create_intermediate_ca(issuer, "console-factory", factory_key.public_key(), Validity.days(20))
    console.open("cas")
    console.heading("CA certificates")
    page.get_by_label("Name", exact=True).fill("factory-a")
    page.get_by_label("Certificate (PEM)").fill(_pem(factory))
    page.get_by_role("button", name="Upload").click()
    console.heading("CA factory-a")
    console.open("cas")
    nested = page.locator("ul.tree > li > ul > li", has_text="factory-a")
    nested.wait_for()
    assert "expires in" in nested.inner_text()
    assert "root" in page.locator("ul.tree > li").first.inner_text()
    assert "factory-a" in page.locator(".alert.warn", has_text="expiring within 30 days").inner_text()
    console.shot("02-cas")

    # A symmetric-key group, with an initial twin the editor checks as it is typed.
    console.open("groups/new")
    console.heading("New enrollment group")
    page.get_by_label("Group id").fill("line-1")
    twin = page.get_by_label("Initial twin (JSON)")
    twin.fill('{"tags": {"line": 1')
    page.locator(".field-error", has_text="Not valid JSON").wait_for()
    assert twin.get_attribute("aria-invalid") == "true"
    twin.fill('{"tags": {"line": "1"}, "properties": {"desired": {"interval": 5}}}')
    assert twin.get_attribute("aria-invalid") == "false"
    page.get_by_role("button", name="Create enrollment group").click()
    console.heading("Enrollment group line-1")
    assert page.locator("code.secret").count() == 0  # keys hidden until asked for
    page.get_by_role("button", name="Show keys").click()
    group_key = page.locator("code.secret").first.inner_text()
    console.shot("04-enrollment-group")

    # A device provisioned by the SDK appears in the registrations, with its story.
    device_key = derived_key(group_key, "sensor-1")
    result = _sdk(server, "sensor-1", device_key).register()
    assert result.status == "assigned"
    hub = result.registration_state.assigned_hub
    console.open("registrations")
    console.heading("Registrations")
    row = page.locator("tr", has_text="sensor-1")
    row.wait_for()
    assert "assigned" in row.inner_text() and hub in row.inner_text()
    console.shot("05-registrations")
    page.get_by_role("link", name="sensor-1").click()
    console.heading("Device sensor-1")
    page.get_by_text("key derived from group line-1").wait_for()
    console.shot("06-device-story")

    # The device connects; its telemetry shows up live; a C2D message reaches it.
    device = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=device_key, hostname=hub, device_id="sensor-1", server_verification_cert=server.server_ca
    )
    received: list[bytes] = []
    device.on_message_received = lambda message: received.append(message.data)
    device.connect()
    try:
        console.open(f"devices/{hub}")
        console.heading("Devices")
        assert "connected" in page.locator("tr", has_text="sensor-1").inner_text()
        console.shot("07-devices")
        console.open(f"devices/{hub}/sensor-1")
        console.heading("Device sensor-1")
        page.get_by_text("Live: new messages appear at the top.").wait_for()
        assert '"interval": 5' in page.locator("#twin-title + .split").inner_text()  # the initial twin
        device.send_message("temperature 21.5")
        page.locator(".feed li", has_text="temperature 21.5").wait_for(timeout=15_000)
        device.send_message("temperature 21.7")
        page.locator(".feed li").first.filter(has_text="temperature 21.7").wait_for(timeout=15_000)
        page.get_by_label("Message body").fill("open valve 3")
        page.get_by_role("button", name="Send").click()
        page.get_by_text("Queued as").wait_for()
        _until(lambda: b"open valve 3" in received, 15, "the cloud-to-device message at the device")
        console.shot("08-device-live-telemetry")
    finally:
        device.shutdown()

    # A refusal, with its reason in words; and explain, which says why a device would pass.
    wrong = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(CredentialError):
        _sdk(server, "sensor-x", wrong).register()
    console.open("refusals")
    console.heading("Refusals")
    refused = page.locator("tr", has_text="sensor-x")
    refused.wait_for()
    assert _off_loop(lambda: server.refusals("sensor-x"))[0].message in refused.inner_text()
    page.locator("input[name=explain-id]").fill("sensor-1")
    page.locator("input[name=explain-key]").fill(device_key)
    page.get_by_role("button", name="Explain").click()
    assert "line-1" in page.locator("pre.explanation").inner_text()
    console.shot("09-refusals")

    # Disable the group in the console: the next device of the line is refused, and says why.
    console.open("groups/line-1")
    console.heading("Enrollment group line-1")
    page.get_by_role("button", name="Disable this enrollment group").click()
    page.get_by_role("button", name="Enable this enrollment group").wait_for()
    with pytest.raises(ClientError):
        _sdk(server, "sensor-2", derived_key(group_key, "sensor-2")).register()
    console.open("refusals")
    console.heading("Refusals")
    after = page.locator("tr", has_text="sensor-2")
    after.wait_for()
    refusal = _off_loop(lambda: server.refusals("sensor-2"))[0]
    assert refusal.reason == "GROUP_DISABLED"
    assert refusal.message in after.inner_text() and "GROUP_DISABLED" in after.inner_text()
    console.shot("10-refusal-after-disable")

    # A stale edit says so instead of overwriting someone else's change.
    console.open("groups/line-1")
    console.heading("Enrollment group line-1")
    _off_loop(lambda: server.cli("group", "update", "line-1", "--allocation-policy", "hashed"))
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Someone changed this record after you opened it").wait_for()
    console.shot("11-stale-edit")

    console.open("overview")
    console.heading("Overview")
    page.get_by_text("registrations (1 assigned)").wait_for()
    summary = page.locator("svg.chart title").text_content() or ""
    assert f"1 assignments and {len(_off_loop(server.refusals))} refusals in the last 60 minutes" in summary
    console.shot("00-overview")
    assert console.csp_violations() == []
    assert [m for m in console.messages if m.startswith("pageerror")] == []


def test_a_read_only_session_offers_no_changes(console: Console, server: RunningServer) -> None:
    _off_loop(lambda: server.cli("group", "create", "ro-group", "--symmetric-key"))
    console.sign_in("enrollmentread")
    nav = console.page.locator("#nav").inner_text()
    assert "Enrollment groups" in nav and "CA certificates" not in nav and "Devices" not in nav
    console.open("groups/ro-group")
    console.heading("Enrollment group ro-group")
    page = console.page
    assert page.get_by_role("button", name="Show keys").count() == 0
    assert page.get_by_role("button", name="Disable this enrollment group").count() == 0
    assert page.locator("input[name=enabled]").is_disabled()  # the settings fieldset is disabled
    page.get_by_text("Keys are shown only to a policy with EnrollmentWrite.").wait_for()
    console.open("groups")
    console.heading("Enrollment groups")
    assert page.get_by_role("link", name="New enrollment group").count() == 0
    console.shot("12-read-only-session")


def test_keyboard_navigation(console: Console) -> None:
    console.sign_in("provisioningserviceowner")
    console.heading("Overview")
    page = console.page
    page.reload()  # a fresh load: the keyboard starts at the top
    console.heading("Overview")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.evaluate("document.activeElement.blur()")
    for _ in range(25):  # bounded: the nav link is a few stops from the top
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Registrations":
            break
    else:
        raise AssertionError("the Registrations link is not reachable with Tab")
    page.keyboard.press("Enter")
    console.heading("Registrations")
    # The new page's heading takes the focus, so a screen reader announces where we are.
    _until(lambda: page.evaluate("document.activeElement.tagName") == "H1", 10, "focus on the heading")
    assert page.evaluate("document.activeElement.textContent") == "Registrations"


def test_a_revoked_device_is_marked_in_the_registrations(
    console: Console, server: RunningServer, tmp_path: Path
) -> None:
    """An X.509 device of a line made with our toolkit, provisioned by the SDK; its line CA's CRL
    uploaded (CLI on the data dir): the registrations page marks it revoked at once."""
    root_key, line_key, dev_key = generate_private_key(), generate_private_key(), generate_private_key()
    root = Issuer(create_root_ca("revoke-root", root_key, Validity.days(30)), root_key, name="revoke-root")
    line = Issuer(
        create_intermediate_ca(root, "revoke-line", line_key.public_key(), Validity.days(20)), line_key, root.chain
    )
    cert = issue_device_certificate(line, "meter-1", dev_key.public_key(), Validity.days(5))
    (tmp_path / "root.pem").write_text(_pem(root.certificate))
    (tmp_path / "line.pem").write_text(_pem(line.certificate))
    (tmp_path / "meter-1.pem").write_text(_pem(cert) + _pem(line.certificate))
    key_pem = dev_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "meter-1.key").write_bytes(key_pem)
    # Through the management API: the server trusts the new CA at once (no trust poll to wait).
    remote = ["--connection-string", connection_string(server, "provisioningserviceowner")]
    remote += ["--server-ca", str(server.server_ca_path)]

    def cli(*args: str) -> str:  # off the browser's event loop, as the CLI runs its own
        return _off_loop(lambda: server.cli(*args, *remote))

    cli("ca", "upload", "revoke-root", str(tmp_path / "root.pem"), "--verified")
    cli("ca", "upload", "revoke-line", str(tmp_path / "line.pem"))
    cli("group", "create", "meters", "--ca-ref", "revoke-root")
    result = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id="meter-1",
        id_scope=server.id_scope,
        x509=X509(str(tmp_path / "meter-1.pem"), str(tmp_path / "meter-1.key")),
        server_verification_cert=server.server_ca,
    ).register()
    assert result.status == "assigned"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    entry = RevokedEntry(cert.serial_number, now, "keyCompromise")
    crl = build_crl(line, [entry], number=1, this_update=now, next_update=now + dt.timedelta(days=7))
    (tmp_path / "line.crl.pem").write_text(crl_pem(crl))
    cli("crl", "upload", "revoke-line", str(tmp_path / "line.crl.pem"))

    console.sign_in("provisioningserviceowner")
    console.open("registrations")
    console.heading("Registrations")
    row = console.page.locator("tr", has_text="meter-1")
    row.wait_for()
    assert "revoked" in row.inner_text() and "assigned" in row.inner_text()
    assert "revoked" not in console.page.locator("tr", has_text="sensor-1").inner_text()
    console.open("registrations/meter-1")
    console.heading("Device meter-1")
    console.page.get_by_text("revoked: its certificate (keyCompromise").wait_for()
    console.shot("12-revoked-registration")


PAGES = ["overview", "cas", "cas/root", "enrollments", "groups", "groups/line-1", "registrations",
         "registrations/sensor-1", "registrations/meter-1", "refusals", "devices"]  # fmt: skip


def test_accessibility_checks(console: Console, server: RunningServer) -> None:
    page = console.page
    page.goto(f"{console.base}/")
    console.heading("Sign in to iotdps")
    problems = {"sign-in": console.axe()}
    console.sign_in("provisioningserviceowner", "iothubowner")
    for route in PAGES:
        console.open(route)
        page.locator("main h1").wait_for()
        page.wait_for_load_state("networkidle")
        problems[route] = console.axe()
        # Our own basic checks, beside axe's: landmarks, a name for every control and chart.
        own = page.evaluate(
            """() => {
                const out = [];
                for (const role of ["header[role=banner]", "nav[aria-label]", "main"]) {
                    if (!document.querySelector(role)) out.push(`no ${role}`);
                }
                for (const el of document.querySelectorAll("input, select, textarea")) {
                    const named = (el.labels && el.labels.length) || el.getAttribute("aria-label")
                        || el.getAttribute("aria-labelledby");
                    if (!named) out.push(`unlabelled ${el.tagName} ${el.name}`);
                }
                for (const svg of document.querySelectorAll("svg")) {
                    if (!svg.querySelector("title")) out.push("svg without a title");
                }
                if (document.querySelectorAll("main h1").length !== 1) out.push("not exactly one h1");
                return out;
            }"""
        )
        if own:
            problems[f"{route} (own checks)"] = own
    assert {route: found for route, found in problems.items() if found} == {}
