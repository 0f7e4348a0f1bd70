"""Hub identity and twin changes in the audit trail, on SQLite and PostgreSQL: through the hub
service API (the policy's name), the local CLI (`local:<user>`) and the control socket (the
connecting user, as the kernel says). Each entry's target is `<hub>/<deviceId>`, `audit verify`
stays valid, and no SAS key is in the exported entries. C2D sends and what devices do are the
data plane and leave no entry."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from iotdps.access import AccessPolicies, make_service_sas
from iotdps.api import build_management_app
from iotdps.api.routes.route import HUB_HEADER
from iotdps.audit import AuditEntry, AuditQuery, verify_chain
from iotdps.cli.actor import local_actor
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.ports import Store
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.secret import Secret
from iotdps.server.control import ControlClient, build_control_app
from iotdps.store import open_store
from iotdps.wiring.hub import Hubs
from iotdps_testing.cluster import pg_database
from iotdps_testing.net import free_loopback_address, free_port

HUB = "audit-hub.example"
IOTDPS = str(Path(sys.executable).with_name("iotdps"))  # the console script of this environment


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub-audit.db'}"
        return
    with pg_database() as name:
        yield name


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


async def _entries(dsn: str) -> list[AuditEntry]:
    store = await open_store(dsn)
    try:
        async with store.read() as uow:
            return list(await uow.audit.list(AuditQuery(limit=10_000)))
    finally:
        await store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    return subprocess.run([IOTDPS, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _verified_and_keyless(dsn: str, data_dir: Path, keys: list[str]) -> None:
    verified = _cli("audit", "verify", "--dsn", dsn, "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = _cli("audit", "export", "--dsn", dsn, "--data-dir", str(data_dir))
    assert exported.returncode == 0, exported.stderr
    assert "hub-device." in exported.stdout
    for key in keys:
        assert key not in exported.stdout


class _Api:
    """The management app (hub service API included) over a store, on a loopback port."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.policies = AccessPolicies.generate()
        self.hubs = Hubs(store, [HUB])
        self.address = free_loopback_address(())
        self.port = free_port(self.address)
        self.runner: web.AppRunner | None = None
        self.session = aiohttp.ClientSession()

    async def start(self) -> None:
        await self.hubs.start()
        service = ProvisioningService(self.store, default_settings=ServiceSettings("0ne00000A1B"))
        app = build_management_app(
            self.store, service, self.policies, host_names=(self.address,), hub=self.hubs.cloud, hub_hosts=(HUB,)
        )
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.address, self.port).start()

    async def close(self) -> None:
        await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.hubs.stop()

    async def call(self, method: str, path: str, body: Any = None, etag: str | None = None) -> tuple[int, Any]:
        key = self.policies.get("iothubowner").primary_key.reveal()
        headers = {"Authorization": make_service_sas(HUB, "iothubowner", key), HUB_HEADER: HUB}
        if etag is not None:
            headers["If-Match"] = etag
        url = f"http://{self.address}:{self.port}{path}?api-version=2021-04-12"
        async with self.session.request(method, url, json=body, headers=headers) as answer:
            text = await answer.text()
            return answer.status, (await answer.json()) if text else None


@pytest.fixture
async def api(dsn: str) -> AsyncIterator[_Api]:
    store = await open_store(dsn)
    served = _Api(store)
    try:
        await served.start()
        yield served
    finally:
        await served.close()
        await store.close()


def _sas(primary: str, secondary: str, status: str = "enabled") -> dict[str, Any]:
    return {
        "status": status,
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}},
    }


async def test_the_hub_service_api_logs_identity_and_twin_changes(api: _Api, dsn: str, tmp_path: Path) -> None:
    keys = [_key() for _ in range(4)]
    status, created = await api.call("PUT", "/devices/dev-1", _sas(keys[0], keys[1]))
    assert status == 200, created
    status, disabled = await api.call("PUT", "/devices/dev-1", _sas(keys[0], keys[1], "disabled"), created["etag"])
    assert status == 200, disabled
    status, rekeyed = await api.call("PUT", "/devices/dev-1", _sas(keys[2], keys[3], "disabled"), disabled["etag"])
    assert status == 200, rekeyed
    status, twin = await api.call("PATCH", "/twins/dev-1", {"tags": {"site": "north"}})
    assert status == 200, twin
    status, twin = await api.call("PATCH", "/twins/dev-1", {"properties": {"desired": {"rate": 5}}}, twin["etag"])
    assert status == 200, twin
    # The data plane leaves no entry: a C2D send (and what devices do).
    status, _ = await api.call("POST", "/devices/dev-1/messages/deviceBound", {"body": "hi"})
    assert status in (200, 201, 202, 204)
    assert (await api.call("DELETE", "/devices/dev-1", etag="*"))[0] == 204

    entries = [e for e in await _entries(dsn) if e.action.startswith("hub-")]
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("policy:iothubowner", "hub-device.create", f"{HUB}/dev-1"),
        ("policy:iothubowner", "hub-device.update", f"{HUB}/dev-1"),
        ("policy:iothubowner", "hub-device.update", f"{HUB}/dev-1"),
        ("policy:iothubowner", "hub-twin.update", f"{HUB}/dev-1"),
        ("policy:iothubowner", "hub-twin.update", f"{HUB}/dev-1"),
        ("policy:iothubowner", "hub-device.delete", f"{HUB}/dev-1"),
    ]
    create, disable, rekey, tags, desired, delete = entries
    assert create.before is None and create.after is not None
    assert delete.before is not None and delete.after is None
    # Each change starts from the version the one before it left.
    assert disable.before == create.after and rekey.before == disable.after
    assert (disable.detail_doc()["keysChanged"], disable.detail_doc()["status"]) == (False, "disabled")
    assert rekey.detail_doc()["keysChanged"] is True
    assert (tags.detail_doc()["sections"], desired.detail_doc()["sections"]) == (["tags"], ["desired"])
    assert verify_chain(await _entries(dsn)).problems == ()
    _verified_and_keyless(dsn, tmp_path / "data", keys)


async def _seed(dsn: str, device_id: str, key: str) -> None:
    store = await open_store(dsn)
    try:
        async with store.begin() as uow:
            await uow.devices.put(DeviceIdentity(HUB, device_id, DeviceAuth("sas", Secret(key), Secret(_key()))))
    finally:
        await store.close()


def test_local_cli_hub_commands_are_logged_as_the_local_user(dsn: str, tmp_path: Path) -> None:
    key = _key()
    asyncio.run(_seed(dsn, "dev-cli", key))
    at = ["--hub", HUB, "--device", "dev-cli", "--dsn", dsn, "--data-dir", str(tmp_path / "data")]
    for command in (
        ["device", "disable"],
        ["device", "enable"],
        ["twin", "update-desired", "--patch", '{"mode": "eco"}'],
        ["device", "delete"],
    ):
        done = _cli(*command, *at)
        assert done.returncode == 0, done.stderr
    entries = [e for e in asyncio.run(_entries(dsn)) if e.action.startswith("hub-")]
    who = str(local_actor())
    assert [(e.actor, e.action, e.target) for e in entries] == [
        (who, "hub-device.update", f"{HUB}/dev-cli"),
        (who, "hub-device.update", f"{HUB}/dev-cli"),
        (who, "hub-twin.update", f"{HUB}/dev-cli"),
        (who, "hub-device.delete", f"{HUB}/dev-cli"),
    ]
    assert [e.detail_doc().get("status") for e in entries[:2]] == ["disabled", "enabled"]
    assert entries[2].detail_doc()["sections"] == ["desired"]
    # A command that changes nothing writes nothing.
    gone = _cli("device", "delete", *at)
    assert gone.returncode != 0 and "not found" in gone.stderr
    assert len([e for e in asyncio.run(_entries(dsn)) if e.action.startswith("hub-")]) == 4
    _verified_and_keyless(dsn, tmp_path / "data", [key])


async def test_the_control_socket_names_the_connecting_user(dsn: str, tmp_path: Path) -> None:
    await _seed(dsn, "dev-ctl", _key())
    store = await open_store(dsn)
    hubs = Hubs(store, [HUB])
    await hubs.start()
    runner = web.AppRunner(build_control_app(hubs.cloud))
    await runner.setup()
    path = tmp_path / "control.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        client = ControlClient(path)
        await client.call("PATCH", client.device_path(HUB, "dev-ctl", "twin/desired"), {"patch": {"fan": 2}})
    finally:
        await runner.cleanup()
        await hubs.stop()
        await store.close()
    entries = [e for e in await _entries(dsn) if e.action.startswith("hub-")]
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = f"uid-{os.getuid()}"
    assert [(e.actor, e.action, e.target) for e in entries] == [(f"local:{me}", "hub-twin.update", f"{HUB}/dev-ctl")]
