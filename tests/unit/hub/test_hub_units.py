"""Twin patches, hub SAS checks, and group-committed telemetry under concurrent load."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509

from iotdps.device import HubClient, SymmetricKey, make_hub_sas_token
from iotdps.errors import InvalidInput
from iotdps.evidence import PeerIdentity
from iotdps.hub.auth import ConnectProof, check_device, recheck_device
from iotdps.hub.devices import DeviceAuth, DeviceIdentity, Twin
from iotdps.hub.twin import apply_desired_patch, apply_reported_patch, merge_patch, sdk_twin_json
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.ports import HubStore
from iotdps.secret import Secret
from iotdps.store import MemoryStore
from iotdps_testing.devcerts import self_signed_device
from iotdps_testing.hubkit import new_key, put_sas_device, start_hub

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_merge_patch_nulls_delete_and_objects_merge() -> None:
    base = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    assert merge_patch(base, {"a": None, "b": {"c": None, "x": {"y": None, "z": 1}}, "e": [2]}) == {
        "b": {"d": 3, "x": {"z": 1}},
        "e": [2],
    }
    assert base == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}  # untouched


def test_versions_move_with_their_section() -> None:
    twin = apply_reported_patch(Twin(), {"fw": "1"})
    twin = apply_desired_patch(twin, {"rate": 5, "$version": 99})  # a client's $version is ignored
    assert (twin.reported_version, twin.desired_version, twin.version) == (2, 2, 3)
    assert sdk_twin_json(twin) == {"desired": {"rate": 5, "$version": 2}, "reported": {"fw": "1", "$version": 2}}
    for bad in ([1], {"$x": 1}, {"": 1}):
        with pytest.raises(InvalidInput):
            apply_reported_patch(twin, bad)


def _device(status: str = "enabled") -> tuple[DeviceIdentity, str]:
    key = new_key()
    auth = DeviceAuth("sas", Secret(key), Secret(new_key()))
    return DeviceIdentity("hub.test", "dev-1", auth, status=status), key  # type: ignore[arg-type]


def test_hub_sas_checks() -> None:
    device, key = _device()
    future = int(NOW.timestamp()) + 600
    good = make_hub_sas_token("hub.test", "dev-1", key, future).encode()
    assert check_device(device, "hub.test", good, None, NOW) is None
    assert check_device(device, "HUB.test", good, None, NOW) is None  # host names are case-insensitive
    secondary = device.auth.secondary_key
    assert secondary is not None
    by_secondary = make_hub_sas_token("hub.test", "dev-1", secondary.reveal(), future).encode()
    assert check_device(device, "hub.test", by_secondary, None, NOW) is None
    cases = {
        "expired": make_hub_sas_token("hub.test", "dev-1", key, int(NOW.timestamp()) - 1),
        "resource": make_hub_sas_token("hub.test", "dev-2", key, future),
        "signature": make_hub_sas_token("hub.test", "dev-1", new_key(), future),
        "skn": make_hub_sas_token("hub.test", "dev-1", key, future) + "&skn=iothubowner",
        "malformed": "SharedAccessSignature sr=x",
        "year 9999": make_hub_sas_token("hub.test", "dev-1", key, 253402300799),
    }
    for what, token in cases.items():
        reason = check_device(device, "hub.test", token.encode(), None, NOW)
        assert reason is not None, what
        assert key not in reason
    disabled, key2 = _device("disabled")
    token = make_hub_sas_token("hub.test", "dev-1", key2, future).encode()
    assert check_device(disabled, "hub.test", token, None, NOW) == "device dev-1 is disabled"
    assert check_device(None, "hub.test", token, None, NOW) == "no such device on this hub"
    assert "neither" in (check_device(device, "hub.test", None, None, NOW) or "")
    assert quote("hub.test/devices/dev-1", safe="") in token.decode()
    # The maximum lifetime is a setting: 600 s ahead passes the default, not a 300 s cap.
    assert "too far ahead" in (check_device(device, "hub.test", good, None, NOW, max_token_lifetime=300) or "")


def _peer(leaf: x509.Certificate) -> PeerIdentity:
    # A self-signed leaf the TLS layer did not verify (no anchor), as for any selfSigned device.
    return PeerIdentity((leaf,), None, (), "hub.test", "TLSv1.3", "TLS_AES_128_GCM_SHA256")


def test_issued_thumbprints_open_the_hub_beside_the_kept_credential_only(tmp_path: Path) -> None:
    """Issue 18: the issued certificate is accepted whatever the identity's type; the device's
    own SAS key or certificate only when the identity still holds them (the policy kept them)."""
    issued, own, other = (self_signed_device(tmp_path, f"dev-1-{n}").cert for n in ("issued", "own", "other"))
    issued_tps = (sha256_thumbprint(issued), sha1_thumbprint(issued))
    device, key = _device()
    token = make_hub_sas_token("hub.test", "dev-1", key, int(NOW.timestamp()) + 600).encode()
    kept = replace(device, auth=device.auth.with_issued(*issued_tps))
    assert check_device(kept, "hub.test", token, None, NOW) is None
    assert check_device(kept, "hub.test", None, _peer(issued), NOW) is None
    assert "not the one issued" in (check_device(kept, "hub.test", None, _peer(other), NOW) or "")
    # Not kept: the issued certificate alone.
    alone = replace(device, auth=DeviceAuth("selfSigned").with_issued(*issued_tps))
    assert "issued certificate only" in (check_device(alone, "hub.test", token, None, NOW) or "")
    assert check_device(alone, "hub.test", None, _peer(issued), NOW) is None
    assert check_device(alone, "hub.test", None, _peer(own), NOW) is not None
    # An X.509 device that kept its own certificate: both.
    x509_kept = replace(device, auth=DeviceAuth("selfSigned", primary_thumbprints=(sha256_thumbprint(own),)))
    x509_kept = replace(x509_kept, auth=x509_kept.auth.with_issued(*issued_tps))
    assert check_device(x509_kept, "hub.test", None, _peer(own), NOW) is None
    assert check_device(x509_kept, "hub.test", None, _peer(issued), NOW) is None
    assert check_device(x509_kept, "hub.test", None, _peer(other), NOW) is not None
    # Renewal replaces the issued thumbprints and never the kept credential.
    renewed = x509_kept.auth.with_issued(sha256_thumbprint(other))
    assert renewed.primary_thumbprints == (sha256_thumbprint(own),) and renewed.issued_thumbprints[
        0
    ] == sha256_thumbprint(other)


def test_a_live_connection_is_rechecked_by_its_credential_not_the_clock(tmp_path: Path) -> None:
    """Issue 18: what a connection authenticated with is re-checked against the identity as it
    is now; a token that expired since CONNECT is no reason, a key the identity lost is."""
    issued, old = (self_signed_device(tmp_path, f"dev-1-{n}").cert for n in ("issued", "old"))
    device, key = _device()
    expired = make_hub_sas_token("hub.test", "dev-1", key, int(NOW.timestamp()) - 60).encode()
    by_sas = ConnectProof("hub.test", Secret(expired), None)
    assert check_device(device, "hub.test", expired, None, NOW) is not None  # a new CONNECT: refused
    assert recheck_device(device, by_sas) is None  # the live connection made before: kept
    kept = replace(device, auth=device.auth.with_issued(sha256_thumbprint(issued)))
    assert recheck_device(kept, by_sas) is None
    alone = replace(device, auth=DeviceAuth("selfSigned").with_issued(sha256_thumbprint(issued)))
    assert "issued certificate only" in (recheck_device(alone, by_sas) or "")
    assert recheck_device(alone, ConnectProof("hub.test", None, _peer(issued))) is None
    assert "not the one issued" in (recheck_device(alone, ConnectProof("hub.test", None, _peer(old))) or "")
    assert recheck_device(replace(device, status="disabled"), by_sas) == "device dev-1 is disabled"
    assert recheck_device(None, by_sas) == "the device identity was deleted"


async def test_telemetry_is_group_committed_and_every_message_acknowledged() -> None:
    store = MemoryStore()
    hub = await start_hub(store)
    devices = 20
    per_device = 40
    keys = [await put_sas_device(store, hub.host, f"load-{i}") for i in range(devices)]
    clients = [HubClient(hub.host, f"load-{i}", SymmetricKey(Secret(k)), ca_pem=hub.ca_pem) for i, k in enumerate(keys)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        started = time.monotonic()
        # Each device pipelines its messages: every send waits for its own PUBACK.
        await asyncio.gather(*(c.send_telemetry(f"m{n}", {"n": str(n)}) for c in clients for n in range(per_device)))
        elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await hub.close()
    hs: HubStore = store
    async with hs.begin() as uow:
        rows = await uow.telemetry.list(hub.host, limit=1000)
    assert len(rows) == devices * per_device
    # Batches formed by themselves: far fewer transactions than messages.
    assert hub.hubs.writer.batches < len(rows) / 4, (hub.hubs.writer.batches, elapsed)
    for i in range(devices):
        mine = [r.body for r in rows if r.device_id == f"load-{i}"]
        assert mine == [f"m{n}".encode() for n in range(per_device)]  # per-device order kept


async def test_stop_flushes_queued_telemetry() -> None:
    store = MemoryStore()
    hub = await start_hub(store)
    key = await put_sas_device(store, hub.host, "flush")
    client = HubClient(hub.host, "flush", SymmetricKey(Secret(key)), ca_pem=hub.ca_pem)
    await client.connect()
    sends = [asyncio.create_task(client.send_telemetry(f"x{n}", timeout=5)) for n in range(200)]
    await asyncio.sleep(0.02)  # some written, some queued, some still on the wire
    await hub.close()  # stops the hubs while messages are in flight
    await asyncio.gather(*sends, return_exceptions=True)
    acknowledged = {f"x{n}".encode() for n, s in enumerate(sends) if s.exception() is None}
    async with store.begin() as uow:
        stored = {m.body for m in await uow.telemetry.list(hub.host, limit=1000)}
    assert acknowledged and acknowledged <= stored  # nothing acknowledged is lost
