"""The hub CLI as a user runs it (`python -m iotdps ...` in a subprocess) against a live hub.

The hub serves its control app on `<data_dir>/control.sock` as `iotdps up` does, and uses
the data dir's SQLite store, so the CLI reaches both exactly as it would in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from azure.iot.device import IoTHubDeviceClient, MethodResponse

from iotdps.device import save_state
from iotdps.device.agent import DeviceSettings
from iotdps.device.credentials import SymmetricKey
from iotdps.device.provision import Assignment
from iotdps.paths import default_dsn
from iotdps.secret import Secret
from iotdps.server.control import control_socket_path
from iotdps.store import open_store
from iotdps_testing.hubkit import HubServer, put_sas_device, start_hub, wait_for

pytestmark = pytest.mark.e2e
logging.getLogger("azure").setLevel(logging.WARNING)
SRC = Path(__file__).resolve().parents[3] / "src"


@dataclass
class Env:
    hub: HubServer
    data_dir: Path

    async def cli(self, *args: str, expect: int = 0) -> str:
        env = {**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(self.data_dir)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "iotdps",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == expect, f"iotdps {' '.join(args)}: {proc.returncode}\n{out.decode()}\n{err.decode()}"
        return out.decode() + (err.decode() if expect else "")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    data_dir = tmp_path / "data"
    store = await open_store(default_dsn(data_dir))
    hub = await start_hub(store)
    runner = web.AppRunner(hub.hubs.control_app())
    await runner.setup()
    sock = control_socket_path(data_dir)
    site = web.UnixSite(runner, str(sock))
    await site.start()
    os.chmod(sock, 0o600)
    yield Env(hub, data_dir)
    await runner.cleanup()
    await hub.close()
    await store.close()


async def test_registry_telemetry_twin_methods_c2d_through_the_cli(env: Env) -> None:
    hub = env.hub
    key = await put_sas_device(hub.store, hub.host, "cli-dev")
    await put_sas_device(hub.store, hub.host, "cli-other")
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub.host, device_id="cli-dev", server_verification_cert=hub.ca_pem
    )
    messages: queue.Queue[Any] = queue.Queue()
    patches: queue.Queue[Any] = queue.Queue()

    def on_method(request: Any) -> None:
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"got": request.payload}))

    try:
        await asyncio.to_thread(client.connect)

        def set_handlers() -> None:
            client.on_message_received = messages.put
            client.on_method_request_received = on_method
            client.on_twin_desired_properties_patch_received = patches.put

        await asyncio.to_thread(set_handlers)
        await asyncio.to_thread(client.send_message, "one")
        await asyncio.sleep(0.3)

        listing = await env.cli("device", "list", "--hub", hub.host)
        assert [line.split() for line in listing.splitlines()] == [
            ["device", "id", "status", "auth"],
            ["cli-dev", "enabled", "sas"],
            ["cli-other", "enabled", "sas"],
        ]
        shown = json.loads(await env.cli("device", "show", "--hub", hub.host, "--device", "cli-dev"))
        assert shown["status"] == "enabled" and shown["authentication"]["symmetricKey"]["primaryKey"] is True
        assert key not in json.dumps(shown)  # keys never print

        lines = (await env.cli("telemetry", "tail", "--hub", hub.host, "--no-follow")).splitlines()
        assert [json.loads(line)["body"] for line in lines] == ["one"]

        # Follow: a message sent while tailing shows up.
        tail = asyncio.create_task(env.cli("telemetry", "tail", "--hub", hub.host, "--device", "cli-dev", "--for", "4"))
        await asyncio.sleep(2.0)
        await asyncio.to_thread(client.send_message, "two")
        followed = [json.loads(line)["body"] for line in (await tail).splitlines()]
        assert followed == ["one", "two"]

        answer = json.loads(
            await env.cli(
                "method", "invoke", "--hub", hub.host, "--device", "cli-dev", "--name", "go", "--payload", '{"x": 1}'
            )
        )
        assert answer == {"status": 201, "payload": {"got": {"x": 1}}}

        mid = (
            await env.cli("c2d", "send", "--hub", hub.host, "--device", "cli-dev", "--body", "hi", "--property", "a=b")
        ).strip()
        received = await wait_for(messages)
        assert received.data == b"hi" and received.message_id == mid and received.custom_properties == {"a": "b"}

        await env.cli("twin", "update-desired", "--hub", hub.host, "--device", "cli-dev", "--patch", '{"led": "on"}')
        assert (await wait_for(patches))["led"] == "on"
        twin = json.loads(await env.cli("twin", "show", "--hub", hub.host, "--device", "cli-dev"))
        assert twin["properties"]["desired"] == {"led": "on", "$version": 2}

        # Errors: one line on stderr, exit 3 for a device not there (not connected: Azure's 404).
        err = await env.cli(
            "method", "invoke", "--hub", hub.host, "--device", "cli-other", "--name", "x", "--timeout", "1", expect=3
        )
        assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
        err = await env.cli("device", "show", "--hub", hub.host, "--device", "nobody", expect=3)
        assert "not found" in err

        # Disabling drops the live connection and refuses the next CONNECT.
        await env.cli("device", "disable", "--hub", hub.host, "--device", "cli-dev")
        for _ in range(50):
            if not hub.hubs.cloud.is_connected(hub.host, "cli-dev"):
                break
            await asyncio.sleep(0.1)
        assert not hub.hubs.cloud.is_connected(hub.host, "cli-dev")
    finally:
        await asyncio.to_thread(client.shutdown)
    await env.cli("device", "delete", "--hub", hub.host, "--device", "cli-other")
    assert json.loads(await env.cli("device", "list", "--hub", hub.host, "--json")) == [
        {"deviceId": "cli-dev", "status": "disabled", "auth": "sas"}
    ]


async def test_device_run_uses_the_cached_assignment(env: Env, tmp_path: Path) -> None:
    hub = env.hub
    key = await put_sas_device(hub.store, hub.host, "runner")
    ca = tmp_path / "ca.pem"
    ca.write_text(hub.ca_pem)
    state = tmp_path / "runner.json"
    # A cache as a previous run would have written it; the provisioning host does not exist.
    settings = DeviceSettings("dps.invalid", "0ne00000000", "runner", SymmetricKey(Secret(key)), state)
    save_state(settings, Assignment("runner", hub.host, "runner"))
    out = await env.cli(
        "device", "run", "--provisioning-host", "dps.invalid", "--id-scope", "0ne00000000",
        "--registration-id", "runner", "--symmetric-key", key, "--ca", str(ca), "--state", str(state),
        "--count", "2", "--interval", "0",
    )  # fmt: skip
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "connected", "hub": hub.host, "deviceId": "runner", "provisioned": False}
    assert [e["seq"] for e in events[1:]] == [0, 1]
    async with hub.store.begin() as uow:
        rows = await uow.telemetry.list(hub.host, "runner")  # type: ignore[attr-defined]
    assert [dict(r.application_properties) for r in rows] == [{"seq": "0"}, {"seq": "1"}]
