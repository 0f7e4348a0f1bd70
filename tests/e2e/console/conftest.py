"""A real `iotdps up` and Debian's Chromium driven by Playwright, for the console's tests.

Screenshots go to tests/output/console/ (gitignored; IOTDPS_TEST_OUTPUT overrides the
directory). axe-core is read from tests/e2e/node/node_modules (the README's test command
installs it with the Node SDK's packages); nothing is downloaded at test time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from iotdps_testing.console import CHROMIUM, CHROMIUM_ARGS, MGMT_PORT, connection_string
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server

REPO = Path(__file__).resolve().parents[3]
AXE = REPO / "tests" / "e2e" / "node" / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def shots() -> Path:
    directory = Path(os.environ.get("IOTDPS_TEST_OUTPUT", REPO / "tests" / "output")) / "console"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    address = free_loopback_address((8883, 443, MGMT_PORT))
    srv = start_server(tmp_path_factory.mktemp("console"), address=address)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """One browser context (its own cookies) on the console, with what the page logged."""

    def __init__(self, context: BrowserContext, server: RunningServer, shots: Path) -> None:
        self.context = context
        self.server = server
        self.shots = shots
        self.page: Page = context.new_page()
        self.page.set_default_timeout(20_000)
        self.messages: list[str] = []
        self.page.on("console", lambda m: self.messages.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.messages.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda dialog: dialog.accept())

    @property
    def base(self) -> str:
        return f"https://{self.server.address}:{MGMT_PORT}"

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.base}/console/#/{route}")

    def sign_in(self, *policies: str) -> None:
        self.page.goto(f"{self.base}/")
        strings = "\n".join(connection_string(self.server, p) for p in policies)
        self.page.get_by_label("Connection strings").fill(strings)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.locator("#who .policy").first.wait_for()

    def heading(self, text: str) -> None:
        self.page.get_by_role("heading", level=1, name=text).wait_for()

    def shot(self, name: str) -> None:
        self.page.wait_for_load_state("networkidle")
        # Transient notices from earlier steps would cover the page in the picture.
        self.page.evaluate("document.getElementById('notices').replaceChildren()")
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def csp_violations(self) -> list[str]:
        return [m for m in self.messages if "Content Security Policy" in m or "Refused to" in m]

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's WCAG 2 A and AA rules on the page as it is now."""
        if not AXE.exists():
            pytest.fail(f"{AXE} is missing: run npm ci in tests/e2e/node (the README's test command does)")
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            self.page.evaluate(AXE.read_text())
        result: dict[str, Any] = self.page.evaluate(
            """async () => {
                const tags = ["wcag2a", "wcag2aa", "best-practice"];
                const found = await axe.run(document, {runOnly: {type: "tag", values: tags}});
                return {passes: found.passes.length, violations: found.violations.map((v) => ({id: v.id,
                    impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5)}))};
            }"""
        )
        assert result["passes"] > 10, "axe-core ran no rules"  # it did run, and checked something
        violations: list[dict[str, Any]] = result["violations"]
        return violations


@pytest.fixture
def console(browser: Browser, server: RunningServer, shots: Path) -> Iterator[Console]:
    # The server's certificate comes from its own CA, which this fresh profile does not know.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    try:
        yield Console(context, server, shots)
    finally:
        context.close()
