"""Graceful shutdown: a registration in flight when SIGTERM arrives finishes, nothing is half-written."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from iotdps.sas import make_sas_token
from iotdps_testing.net import free_loopback_address, free_port
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import start_server

pytestmark = pytest.mark.e2e

HUB = "hub-slow.iotdps.test"
WEBHOOK_DELAY = 2.0


class _SlowWebhook(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        time.sleep(WEBHOOK_DELAY)
        answer = json.dumps({"iotHubHostName": HUB, "payload": {"slow": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[str]:
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _SlowWebhook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/allocate"
    httpd.shutdown()
    httpd.server_close()


def test_sigterm_lets_a_slow_registration_finish(tmp_path: Path, webhook: str) -> None:
    address = free_loopback_address()
    # Plain HTTP on loopback is a webhook destination only when the allowlist names it.
    config = f'[[hubs]]\nhost_name = "{HUB}"\nbind = "{address}"\n[allocation]\nwebhook_allowlist = ["{webhook}"]\n'
    server = start_server(tmp_path, address=address, config=config)
    try:
        server.cli(
            "enrollment", "create", "slow-dev", "--symmetric-key", "--allocation-policy", "custom",
            "--webhook-url", webhook, "--webhook-api-version", "2021-10-01",
        )  # fmt: skip
        key = server.cli_json("enrollment", "show", "slow-dev", "--show-keys")["attestation"]["symmetricKey"]
        token = make_sas_token(server.id_scope, "slow-dev", key["primaryKey"], int(time.time()) + 600)
        tls, session, code = dps_connect(server, "slow-dev", token)
        assert code == 0
        with tls:
            _, sub = session.subscribe([("$dps/registrations/res/#", 1)])
            tls.sendall(sub)
            body = json.dumps({"payload": None, "registrationId": "slow-dev"}).encode()
            _, publish = session.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body, qos=1)
            tls.sendall(publish)
            deadline = time.monotonic() + 10
            while not _SlowWebhook.calls and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _SlowWebhook.calls, "the webhook was never called"
            # The webhook is now busy for WEBHOOK_DELAY seconds: stop the server meanwhile.
            started = time.monotonic()
            assert server.stop() == 0, server.log()
            assert time.monotonic() - started >= WEBHOOK_DELAY * 0.5
        record = server.registration("slow-dev")
        assert record is not None
        assert record.status == "assigned", record
        assert record.assigned_hub == HUB
        assert record.payload == {"slow": True}
    finally:
        server.stop()
