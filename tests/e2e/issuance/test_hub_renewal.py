"""Certificate renewal over the hub (issue 18; wire doc 10.1) end to end against a real
`iotdps up`, with real TLS on loopback and our device client: a symmetric-key group device with
an issuance policy gets its certificate at DPS, connects to the hub with it, renews over the
hub's credentials topic, gets a new serial that `openssl verify` accepts against the trust
bundle, reconnects with the new certificate and sends telemetry; the previous certificate keeps
working until the next renewal, the one before it does not. And `iotdps device run --csr
--stay` renews on its own, within a bounded wait, when its policy's certificate is short-lived
next to `--renew-before`; and a renewal the hub does not issue (throttled) falls back to
registering again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from iotdps.device import DeviceAgent, DeviceSettings, HubClient, SymmetricKey, X509Files
from iotdps.device.issued import IssuedFiles
from iotdps.device.mqtt import ConnectRefused
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps_testing.issuance import openssl_verify
from iotdps_testing.server import SRC, RunningServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("hub-renewal-e2e")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "renewal-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "renewal-root")
        server.cli("issuing-ca", "add-local", "renewal-ca", "--ca", "renewal-root")
        server.cli("trust-bundle", "set", "renewal-roots", "--cert", str(tmp / "ca" / "renewal-root.cert.pem"))
        server.cli(
            "group", "create", "renewing", "--symmetric-key",
            "--issuing-ca", "renewal-ca", "--cert-validity-days", "1", "--trust-bundle", "renewal-roots",
        )  # fmt: skip
        yield server
    finally:
        server.stop()


def _key(dps: RunningServer, rid: str) -> str:
    return derive_device_key(dps.symmetric_keys("group", "renewing")[0], rid)


def _hub_device(dps: RunningServer, hub: str, device_id: str) -> Any:
    from iotdps.store import open_store

    async def read() -> Any:
        store = await open_store(f"sqlite:///{dps.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                return await uow.devices.get(hub, device_id), list(await uow.telemetry.list(hub, device_id))
        finally:
            await store.close()

    return asyncio.run(read())


def test_renewal_over_the_hub_then_telemetry_with_the_new_certificate(dps: RunningServer, tmp_path: Path) -> None:
    rid = "renew-hub-1"
    settings = DeviceSettings(
        dps.address, dps.id_scope, rid, SymmetricKey(Secret(_key(dps, rid))), tmp_path / "state.json",
        ca_pem=dps.server_ca, issue_certificate=True,
    )  # fmt: skip
    files = IssuedFiles(settings.state_file)
    kept = tmp_path / "first"
    kept.mkdir()

    async def connects(cert: Path, key: Path, hub: str) -> bool:
        client = HubClient(hub, rid, X509Files(cert, key), ca_pem=dps.server_ca)
        try:
            await client.connect()
        except ConnectRefused:
            return False
        await client.close()
        return True

    async def run() -> tuple[x509.Certificate, x509.Certificate, str, list[bool]]:
        agent = DeviceAgent(settings)
        renewed: list[str] = []
        agent.on_renewed = lambda leaf, via: renewed.append(via)
        await agent.start()
        first = files.leaf()
        assert first is not None and agent.assignment is not None
        hub = agent.assignment.assigned_hub
        (kept / "chain.pem").write_bytes(files.chain_file.read_bytes())
        (kept / "key.pem").write_bytes(files.key_file.read_bytes())
        client = await agent.renew(via="hub")
        assert renewed == ["hub"] and agent.provisioned == 1  # no second registration at DPS
        assert client.connected and client is agent.client
        await client.send_telemetry('{"after": "renewal"}', {})
        second = files.leaf()
        assert second is not None
        seen = [await connects(kept / "chain.pem", kept / "key.pem", hub)]  # previous: still the secondary
        # One connection per device: that CONNECT took the agent's; it connects again (cache).
        await agent.start()
        assert agent.provisioned == 1
        await agent.renew(via="hub")
        assert agent.client is not None
        await agent.client.send_telemetry('{"after": "second renewal"}', {})
        seen.append(await connects(kept / "chain.pem", kept / "key.pem", hub))  # dropped now
        await agent.stop()
        return first, second, hub, seen

    first, second, hub, seen = asyncio.run(run())
    assert first.serial_number != second.serial_number
    assert seen == [True, False]
    chain = x509.load_pem_x509_certificates(files.chain_file.read_bytes())
    assert chain[0].serial_number not in (first.serial_number, second.serial_number)
    verdict = openssl_verify(tmp_path, chain, files.bundle_file.read_bytes())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert (files.key_file.stat().st_mode & 0o777) == 0o600
    device, telemetry = _hub_device(dps, hub, rid)
    assert device.auth.issued_only  # the group keeps no other credential
    assert device.auth.issued_thumbprints[0] == sha256_thumbprint(chain[0])
    assert device.auth.issued_thumbprints[2] == sha256_thumbprint(second)  # the previous one
    assert len(telemetry) == 2
    record = dps.registration(rid)
    assert record.issued_certificate == sha256_thumbprint(chain[0])
    assert (record.trust_bundle_id, record.trust_bundle_version) == ("renewal-roots", 1)  # sent with the renewal
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert [(int(c["serialNumber"], 16), c["issuedVia"]) for c in listed] == [
        (chain[0].serial_number, "hub"),
        (second.serial_number, "hub"),
        (first.serial_number, "dps"),
    ]


def test_device_run_stay_renews_on_its_own(dps: RunningServer, tmp_path: Path) -> None:
    rid = "renew-run-1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env["PYTHONPATH"] = str(SRC)
    # The policy gives one day; due 86390 s before expiry means 10 s after issuance.
    done = subprocess.run(
        [sys.executable, "-m", "iotdps", "device", "run", "--provisioning-host", dps.address,
         "--id-scope", dps.id_scope, "--registration-id", rid, "--symmetric-key", _key(dps, rid),
         "--ca", str(dps.server_ca_path), "--state", str(tmp_path / "run.json"), "--csr",
         "--renew-before", "86390", "--renew-check", "2", "--stay", "18"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    first = next(e for e in events if e["event"] == "certificate")
    renewed = [e for e in events if e["event"] == "renewed"]
    assert renewed, events
    assert all(e["via"] == "hub" for e in renewed)
    assert renewed[0]["serial"] != first["serial"]
    files = IssuedFiles(tmp_path / "run.json")
    leaf = files.leaf()
    assert leaf is not None and format(leaf.serial_number, "X") == renewed[-1]["serial"]
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert len(listed) == 1 + len(renewed)


def test_renewal_falls_back_to_registering_when_the_hub_does_not_issue(dps: RunningServer, tmp_path: Path) -> None:
    # The hub takes five requests per device at once (then one a minute): the sixth renewal in a
    # row is throttled there (429), and the agent registers again with a new CSR instead.
    rid = "renew-fallback-1"
    settings = DeviceSettings(
        dps.address, dps.id_scope, rid, SymmetricKey(Secret(_key(dps, rid))), tmp_path / "state.json",
        ca_pem=dps.server_ca, issue_certificate=True,
    )  # fmt: skip
    files = IssuedFiles(settings.state_file)

    async def run() -> tuple[list[str], set[int], int]:
        agent = DeviceAgent(settings)
        vias: list[str] = []
        serials: set[int] = set()
        agent.on_renewed = lambda leaf, via: (vias.append(via), serials.add(leaf.serial_number))
        await agent.start()
        for _ in range(6):
            client = await agent.renew()
            await client.send_telemetry('{"renewed": true}', {})
        await agent.stop()
        return vias, serials, agent.provisioned

    vias, serials, provisioned = asyncio.run(run())
    assert vias == ["hub"] * 5 + ["dps"] and provisioned == 2
    assert len(serials) == 6
    leaf = files.leaf()
    assert leaf is not None and leaf.serial_number in serials
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert [c["issuedVia"] for c in listed] == ["dps"] + ["hub"] * 5 + ["dps"]
