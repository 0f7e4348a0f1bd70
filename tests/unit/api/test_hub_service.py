"""The hub service API's edge over real loopback TLS (in-thread server with the Hubs):
hub selection by Host, policies, IoT Hub's error codes, twin replace, C2D and telemetry."""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from iotdps.access import make_service_sas
from iotdps.api.hub_service import identity_etag, twin_etag
from iotdps.hub.devices import DeviceAuth, DeviceIdentity, Twin
from iotdps.hub.records import TelemetryMessage
from iotdps.ports import HubStore
from iotdps.secret import Secret
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("hubapi")).start()
    try:
        yield srv
    finally:
        srv.stop()


def _call(
    server: ManagementServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    policy: str = "iothubowner",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    token = make_service_sas(server.host_port, policy, server.policies.get(policy).primary_key.reveal())
    return requests.request(
        method,
        server.base_url + path,
        json=body,
        headers={"Authorization": token, **(headers or {})},
        verify=str(server.ca_path),
        timeout=30,
    )


def _error(response: requests.Response, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code and response.headers["x-ms-error-code"]
    return str(body["message"])


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_the_host_selects_the_hub(server: ManagementServer) -> None:
    answer = _call(server, "GET", "/devices", headers={"Host": f"elsewhere.example:{server.port}"})
    assert "HostName" in _error(answer, 404, 404002)
    assert _call(server, "GET", "/devices").status_code == 200


def test_policies_grant_hub_rights_separately(server: ManagementServer) -> None:
    assert "RegistryRead" in _error(_call(server, "GET", "/devices", policy="provisioningserviceowner"), 401, 401002)
    # The service policy reads the registry and talks to devices, but cannot change identities.
    assert _call(server, "GET", "/devices", policy="service").status_code == 200
    refused = _call(server, "PUT", "/devices/no-rights", {"deviceId": "no-rights"}, policy="service")
    assert "RegistryWrite" in _error(refused, 401, 401002)
    # And a hub policy grants nothing on the DPS routes.
    assert _call(server, "GET", "/enrollments/x").status_code == 401


def test_device_create_generates_keys_and_refuses_bad_input(server: ManagementServer) -> None:
    made = _call(server, "PUT", "/devices/unit-gen-1", {"deviceId": "unit-gen-1"})
    assert made.status_code == 200, made.text
    doc = made.json()
    keys = doc["authentication"]["symmetricKey"]
    assert doc["authentication"]["type"] == "sas" and keys["primaryKey"] != keys["secondaryKey"]
    assert made.headers["ETag"] == f'"{doc["etag"]}"'
    assert "exists" in _error(_call(server, "PUT", "/devices/unit-gen-1", {}), 409, 409001)
    bad_key = {"authentication": {"type": "sas", "symmetricKey": {"primaryKey": "not base64!"}}}
    assert "base64" in _error(_call(server, "PUT", "/devices/unit-bad-1", bad_key), 400, 400004)
    no_print = {"authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "12"}}}
    assert "thumbprint" in _error(_call(server, "PUT", "/devices/unit-bad-2", no_print), 400, 400004)
    other_id = _call(server, "PUT", "/devices/unit-bad-3", {"deviceId": "someone-else"})
    assert "differs" in _error(other_id, 400, 400004)
    missing = _call(server, "PUT", "/devices/unit-missing", {}, headers={"If-Match": "*"})
    _error(missing, 404, 404001)
    assert _call(server, "GET", "/devices/unit-bad-1").status_code == 404  # nothing was stored
    stale = _call(server, "DELETE", "/devices/unit-gen-1", headers={"If-Match": '"AAAA"'})
    _error(stale, 412, 412002)
    assert _call(server, "DELETE", "/devices/unit-gen-1", headers={"If-Match": f'"{doc["etag"]}"'}).status_code == 204


def test_issued_certificate_identities_show_it_and_survive_an_update(server: ManagementServer) -> None:
    """Issue 18: a device whose only credential is the certificate DPS issued shows it as its
    thumbprint (and in `issuedThumbprints`); an IoT Hub client's read-modify-write changes
    nothing; an operator's new credential keeps the issued certificate beside it."""
    sha256, sha1 = "AB" * 32, "CD" * 20

    async def seed() -> None:
        assert server.store is not None
        async with server.store.begin() as uow:
            auth = DeviceAuth("selfSigned").with_issued(sha256, sha1)
            await uow.devices.put(DeviceIdentity(server.host, "unit-issued-1", auth))

    server.call(seed())
    got = _call(server, "GET", "/devices/unit-issued-1")
    doc = got.json()
    authentication = doc["authentication"]
    assert authentication["type"] == "selfSigned" and authentication["issuedThumbprints"] == [sha256, sha1]
    assert authentication["x509Thumbprint"] == {"primaryThumbprint": sha256, "secondaryThumbprint": None}
    assert authentication["symmetricKey"] == {"primaryKey": None, "secondaryKey": None}
    same = _call(server, "PUT", "/devices/unit-issued-1", doc, headers={"If-Match": got.headers["ETag"]})
    assert same.status_code == 200, same.text
    assert same.json()["etag"] == doc["etag"] and same.json()["authentication"] == authentication

    async def stored() -> DeviceAuth:
        assert server.store is not None
        async with server.store.read() as uow:
            device = await uow.devices.get(server.host, "unit-issued-1")
        assert device is not None
        return device.auth

    assert server.call(stored()) == DeviceAuth("selfSigned", issued_thumbprints=(sha256, sha1))
    # The operator gives the device keys: they work beside the issued certificate.
    keys = {"authentication": {"type": "sas", "symmetricKey": {"primaryKey": _key(), "secondaryKey": _key()}}}
    rekeyed = _call(server, "PUT", "/devices/unit-issued-1", keys, headers={"If-Match": same.headers["ETag"]})
    assert rekeyed.status_code == 200, rekeyed.text
    assert rekeyed.json()["authentication"]["issuedThumbprints"] == [sha256, sha1]
    assert rekeyed.json()["authentication"]["x509Thumbprint"]["primaryThumbprint"] is None
    assert rekeyed.json()["etag"] != doc["etag"]
    after = server.call(stored())
    assert after.type == "sas" and after.primary_key is not None and after.issued_thumbprints == (sha256, sha1)


def test_twin_replace_removes_what_is_not_given_and_needs_the_hub_rules(server: ManagementServer) -> None:
    assert _call(server, "PUT", "/devices/unit-twin-1", {}).status_code == 200
    first = _call(server, "PATCH", "/twins/unit-twin-1", {"tags": {"a": 1, "b": {"c": 2, "d": 3}}})
    assert first.status_code == 200, first.text
    patched = _call(
        server,
        "PATCH",
        "/twins/unit-twin-1",
        {"properties": {"desired": {"mode": "eco", "limits": {"max": 5}}}},
        headers={"If-Match": first.headers["ETag"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["properties"]["desired"]["$version"] == 2
    replaced = _call(
        server, "PUT", "/twins/unit-twin-1", {"tags": {"b": {"c": 9}}, "properties": {"desired": {"limits": {}}}}
    )
    assert replaced.status_code == 200, replaced.text
    twin = replaced.json()
    assert twin["tags"] == {"b": {"c": 9}}
    assert {k: v for k, v in twin["properties"]["desired"].items() if k != "$version"} == {"limits": {}}
    assert twin["properties"]["reported"] == {"$version": 1}
    dollar = _call(server, "PATCH", "/twins/unit-twin-1", {"tags": {"$bad": 1}})
    assert "$" in _error(dollar, 400, 400004)
    stale = _call(
        server, "PATCH", "/twins/unit-twin-1", {"tags": {"x": 1}}, headers={"If-Match": first.headers["ETag"]}
    )
    _error(stale, 412, 412002)
    _error(_call(server, "GET", "/twins/no-such-device"), 404, 404001)


def test_methods_to_an_offline_device_wait_for_connect_timeout(server: ManagementServer) -> None:
    assert _call(server, "PUT", "/devices/unit-meth-1", {}).status_code == 200
    started = time.monotonic()
    offline = _call(server, "POST", "/twins/unit-meth-1/methods", {"methodName": "go", "connectTimeoutInSeconds": 1})
    assert 1.0 <= time.monotonic() - started < 10
    _error(offline, 404, 404103)
    _error(_call(server, "POST", "/twins/unit-none/methods", {"methodName": "go"}), 404, 404001)
    bad = _call(server, "POST", "/twins/unit-meth-1/methods", {"methodName": "go", "responseTimeoutInSeconds": 301})
    assert "responseTimeoutInSeconds" in _error(bad, 400, 400004)
    _error(_call(server, "POST", "/twins/unit-meth-1/methods", {"payload": 1}), 400, 400004)


def test_c2d_and_telemetry(server: ManagementServer) -> None:
    assert _call(server, "PUT", "/devices/unit-msg-1", {}).status_code == 200
    queued = _call(
        server,
        "POST",
        "/devices/unit-msg-1/messages/deviceBound",
        {"bodyBase64": base64.b64encode(b"\x00\x01").decode(), "contentType": "application/octet-stream"},
    )
    assert queued.status_code == 202 and queued.json()["messageId"]
    both = _call(server, "POST", "/devices/unit-msg-1/messages/deviceBound", {"body": "a", "bodyBase64": "YQ=="})
    assert "not both" in _error(both, 400, 400004)
    sysprop = _call(server, "POST", "/devices/unit-msg-1/messages/deviceBound", {"properties": {"$.to": "x"}})
    _error(sysprop, 400, 400004)
    _error(_call(server, "POST", "/devices/unit-none/messages/deviceBound", {"body": "a"}), 404, 404001)

    now = dt.datetime.now(dt.UTC)

    async def add() -> None:
        assert server.store is not None
        store: HubStore = server.store
        async with store.begin() as uow:
            await uow.telemetry.add_many(
                [
                    TelemetryMessage(server.host, "unit-msg-1", f"m{i}".encode(), now, {"message_id": f"id{i}"}, {})
                    for i in range(5)
                ]
                + [TelemetryMessage(server.host, "unit-msg-1", b"\xff", now)]
            )

    server.call(add())
    events = _call(server, "GET", "/devices/unit-msg-1/messages/events?limit=3").json()
    # The newest three, oldest first; a body that is not UTF-8 is only in bodyBase64.
    assert [e["body"] for e in events] == ["m3", "m4", None]
    assert events[-1]["bodyBase64"] == "/w==" and events[0]["systemProperties"] == {"message_id": "id3"}
    after = _call(server, "GET", f"/devices/unit-msg-1/messages/events?after={events[0]['sequenceNumber']}").json()
    assert [e["body"] for e in after] == ["m4", None]
    _error(_call(server, "GET", "/devices/unit-msg-1/messages/events?limit=0"), 400, 400004)
    _error(_call(server, "GET", "/devices/unit-none/messages/events"), 404, 404001)

    async def add_other() -> None:
        assert server.store is not None
        store: HubStore = server.store
        async with store.begin() as uow:
            await uow.telemetry.add_many([TelemetryMessage(server.host, "unit-msg-2", b"other", now)])

    server.call(add_other())
    # The hub's telemetry, every device: the newest, oldest first, each naming its device.
    hub_events = _call(server, "GET", "/messages/events?limit=2").json()
    assert [(e["deviceId"], e["body"]) for e in hub_events] == [("unit-msg-1", None), ("unit-msg-2", "other")]
    later = _call(server, "GET", f"/messages/events?after={events[-1]['sequenceNumber']}").json()
    assert [e["body"] for e in later] == ["other"]
    _error(_call(server, "GET", "/messages/events?limit=1001"), 400, 400004)
    _error(_call(server, "GET", "/messages/events?after=-1"), 400, 400004)


def test_identity_and_twin_etags_are_independent() -> None:
    device = DeviceIdentity("h", "d", DeviceAuth("sas", Secret(_key()), Secret(_key())))
    moved = DeviceIdentity(device.hub, device.device_id, device.auth, twin=Twin(reported={"t": 1}, version=2))
    assert identity_etag(device) == identity_etag(moved) and twin_etag(device.twin) != twin_etag(moved.twin)
    disabled = DeviceIdentity(device.hub, device.device_id, device.auth, status="disabled")
    assert identity_etag(disabled) != identity_etag(device)
    assert device.auth.primary_key is not None and device.auth.primary_key.reveal() not in identity_etag(device)
