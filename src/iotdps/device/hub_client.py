"""A device's connection to its IoT hub: telemetry, twin, direct methods, cloud-to-device.

The same wire as azure-iot-device 2.14.0 (azure-wire-protocol.md section 8): clean session 0,
one SUBSCRIBE per feature, twin requests correlated by `$rid`, telemetry at QoS 1 (the call
returns once the hub has stored the message and PUBACKed it). `request_certificate` speaks the
hub's certificate-management preview (section 10.1): it subscribes to the credential responses
on first use and waits past the 202 for the final answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from iotdps.device.credentials import Credential, SymmetricKey, TpmCredential, tls_context
from iotdps.device.mqtt import MqttClient, open_mqtt
from iotdps.errors import IotdpsError
from iotdps.protocols.mqtt.events import PublishReceived
from iotdps.protocols.mqtt.hub import (
    C2D_FILTER_TEMPLATE,
    CREDENTIALS_RESPONSE_FILTER,
    METHODS_FILTER,
    TWIN_DESIRED_FILTER,
    TWIN_RESPONSE_FILTER,
    format_certificate_request_topic,
    format_telemetry_topic,
    parse_c2d_topic,
)

__all__ = ["C2DReceived", "CertificateRequestFailed", "HubClient", "IssuedOverHub", "MethodHandler", "TwinError"]

log = logging.getLogger(__name__)

HUB_API_VERSION = "2021-04-12"
CLIENT_TYPE = "iotdps-device/0.1"

MethodHandler = Callable[[str, Any], Awaitable[tuple[int, Any]]]


class TwinError(IotdpsError):
    """The hub answered a twin request with an error status."""


class CertificateRequestFailed(IotdpsError):
    """The hub answered a certificate request with an error: `status`, Azure-style `error_code`."""

    def __init__(self, status: int, error_code: int | None, message: str) -> None:
        super().__init__(f"certificate request failed with status {status} ({error_code}): {message}")
        self.status = status
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class IssuedOverHub:
    """A certificate the hub issued: `issuedCertificateChain` (base64 DER, leaf first) and the
    `trustBundle` sent with it (None when the service sent none)."""

    chain: list[str]
    trust_bundle: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class C2DReceived:
    body: bytes = field(repr=False)
    system_properties: Mapping[str, str | None]
    application_properties: Mapping[str, str | None]


def _query(topic: str) -> dict[str, str]:
    _, _, raw = topic.partition("?")
    out: dict[str, str] = {}
    for part in raw.split("&"):
        key, _, value = part.partition("=")
        if key:
            out[unquote(key)] = unquote(value)
    return out


class HubClient:
    def __init__(
        self,
        hostname: str,
        device_id: str,
        credential: Credential,
        *,
        ca_pem: str | None = None,
        port: int = 8883,
        keepalive: int = 60,
        on_c2d: Callable[[C2DReceived], Any] | None = None,
        on_method: MethodHandler | None = None,
        on_desired: Callable[[dict[str, Any]], Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: one made beforehand with `credentials.tls_context` (the fleet
        simulator); by default each `connect` makes one from `ca_pem` and `credential`."""
        self.hostname = hostname
        self.device_id = device_id
        self._credential = credential
        self._ca_pem = ca_pem
        self._port = port
        self._keepalive = keepalive
        self._ssl_context = ssl_context
        self.on_c2d = on_c2d
        self.on_method = on_method
        self.on_desired = on_desired
        self._mqtt: MqttClient | None = None
        self._twin_waiters: dict[str, asyncio.Future[tuple[int, int | None, bytes]]] = {}
        self._credential_waiters: dict[str, asyncio.Future[tuple[int, bytes]]] = {}
        self._credentials_subscribed = False
        self._rids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._mqtt is not None and self._mqtt.is_open

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and subscribe to what the handlers need. Raises ConnectRefused or OSError."""
        mqtt = await open_mqtt(
            self.hostname,
            self._port,
            self._ssl_context or tls_context(self._ca_pem, self._credential),
            on_publish=self._on_publish,
            timeout=timeout,
        )
        username = f"{self.hostname}/{self.device_id}/?api-version={HUB_API_VERSION}&DeviceClientType=" + quote(
            CLIENT_TYPE, safe=""
        )
        password = (
            self._credential.hub_token(self.hostname, self.device_id)
            if isinstance(self._credential, SymmetricKey | TpmCredential)
            else None
        )
        mqtt.send_connect(self.device_id, username, password, keepalive=self._keepalive)
        await mqtt.connected(timeout)
        self._mqtt = mqtt
        self._credentials_subscribed = False
        filters = [TWIN_RESPONSE_FILTER]
        if self.on_c2d is not None:
            filters.append(C2D_FILTER_TEMPLATE.format(device_id=self.device_id))
        if self.on_method is not None:
            filters.append(METHODS_FILTER)
        if self.on_desired is not None:
            filters.append(TWIN_DESIRED_FILTER)
        for topic_filter in filters:  # one SUBSCRIBE per feature, as the SDK does
            await mqtt.subscribe([topic_filter])

    async def wait_closed(self) -> str:
        if self._mqtt is None:
            return "never connected"
        return await asyncio.shield(self._mqtt.lost)

    async def close(self) -> None:
        if self._mqtt is not None:
            await self._mqtt.disconnect()
        for task in list(self._tasks):
            task.cancel()

    def _client(self) -> MqttClient:
        if self._mqtt is None or not self._mqtt.is_open:
            raise ConnectionError("not connected to the hub")
        return self._mqtt

    async def send_telemetry(
        self,
        body: bytes | str,
        properties: Mapping[str, str] | None = None,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        system = {
            k: v
            for k, v in (
                ("message_id", message_id),
                ("correlation_id", correlation_id),
                ("content_type", content_type),
                ("content_encoding", content_encoding),
            )
            if v is not None
        }
        app = dict(sorted((properties or {}).items()))
        payload = body.encode() if isinstance(body, str) else body
        await self._client().publish(format_telemetry_topic(self.device_id, system, app), payload, timeout=timeout)

    async def send_telemetry_many(self, bodies: Sequence[bytes], *, timeout: float = 30.0) -> None:
        """Send several telemetry messages (no properties) in one write; returns once the hub
        has stored and acknowledged all of them."""
        topic = format_telemetry_topic(self.device_id, {}, {})
        await self._client().publish_many([(topic, body) for body in bodies], timeout=timeout)

    async def _twin_request(self, topic_path: str, body: bytes, timeout: float) -> tuple[int, int | None, bytes]:
        rid = format(next(self._rids), "x")
        future: asyncio.Future[tuple[int, int | None, bytes]] = asyncio.get_running_loop().create_future()
        self._twin_waiters[rid] = future
        try:
            await self._client().publish(f"{topic_path}?$rid={rid}", body)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._twin_waiters.pop(rid, None)

    async def get_twin(self, timeout: float = 30.0) -> dict[str, Any]:
        status, _, body = await self._twin_request("$iothub/twin/GET/", b" ", timeout)
        if status >= 300:
            raise TwinError(f"twin GET failed with status {status}")
        doc: dict[str, Any] = json.loads(body)
        return doc

    async def patch_reported(self, patch: Mapping[str, Any], timeout: float = 30.0) -> int | None:
        """Returns the new reported `$version`."""
        body = json.dumps(dict(patch)).encode()
        status, version, _ = await self._twin_request("$iothub/twin/PATCH/properties/reported/", body, timeout)
        if status >= 300:
            raise TwinError(f"reported-properties patch failed with status {status}")
        return version

    async def request_certificate(self, csr_b64: str, *, replace: bool = False, timeout: float = 60.0) -> IssuedOverHub:
        """Ask the hub for a certificate for `csr_b64` (base64 DER PKCS#10): the issued chain
        and trust bundle. CertificateRequestFailed for an error answer; TimeoutError when
        no final answer comes within `timeout` seconds."""
        client = self._client()
        if not self._credentials_subscribed:
            await client.subscribe([CREDENTIALS_RESPONSE_FILTER])
            self._credentials_subscribed = True
        rid = format(next(self._rids), "x")
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._credential_waiters[rid] = future
        body = json.dumps({"id": self.device_id, "csr": csr_b64, "replace": replace}).encode()
        try:
            await client.publish(format_certificate_request_topic(rid), body)
            status, payload = await asyncio.wait_for(future, timeout)
        finally:
            self._credential_waiters.pop(rid, None)
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if status != 200:
            code = doc.get("errorCode") if isinstance(doc, dict) else None
            message = doc.get("message") if isinstance(doc, dict) else None
            raise CertificateRequestFailed(status, code if isinstance(code, int) else None, str(message or ""))
        chain = doc.get("issuedCertificateChain") if isinstance(doc, dict) else None
        if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
            raise CertificateRequestFailed(status, None, "the answer carries no issuedCertificateChain")
        bundle = doc.get("trustBundle")
        return IssuedOverHub(chain, bundle if isinstance(bundle, dict) else None)

    # -- incoming -------------------------------------------------------------------------------

    def _on_publish(self, event: PublishReceived) -> None:
        topic = event.topic
        try:
            if topic.startswith("$iothub/twin/res/"):
                status = int(topic[len("$iothub/twin/res/") :].split("/", 1)[0])
                params = _query(topic)
                waiter = self._twin_waiters.get(params.get("$rid", ""))
                if waiter is not None and not waiter.done():
                    version = params.get("$version")
                    waiter.set_result((status, int(version) if version else None, event.payload))
            elif topic.startswith("$iothub/credentials/res/"):
                status = int(topic[len("$iothub/credentials/res/") :].split("/", 1)[0])
                credential_waiter = self._credential_waiters.get(_query(topic).get("$rid", ""))
                # 202 only says the request was accepted; the final answer follows.
                if status != 202 and credential_waiter is not None and not credential_waiter.done():
                    credential_waiter.set_result((status, event.payload))
            elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
                if self.on_desired is not None:
                    self._call(self.on_desired, json.loads(event.payload))
            elif topic.startswith("$iothub/methods/POST/"):
                name = unquote(topic[len("$iothub/methods/POST/") :].split("/", 1)[0])
                rid = _query(topic).get("$rid", "")
                payload = json.loads(event.payload) if event.payload.strip() else None
                self._spawn(self._answer_method(name, rid, payload))
            elif topic.startswith(f"devices/{self.device_id}/messages/devicebound"):
                if self.on_c2d is not None:
                    parsed = parse_c2d_topic(topic)
                    message = C2DReceived(event.payload, parsed.system_properties, parsed.application_properties)
                    self._call(self.on_c2d, message)
        except (ValueError, IotdpsError) as exc:
            log.warning("device %s: unreadable message on %s: %s", self.device_id, topic, exc)

    def _call(self, handler: Callable[[Any], Any], value: Any) -> None:
        result = handler(value)
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            await awaitable

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_method(self, name: str, rid: str, payload: Any) -> None:
        if self.on_method is None:
            status, answer = 404, {"error": "no method handler"}
        else:
            try:
                status, answer = await self.on_method(name, payload)
            except Exception as exc:  # the handler's failure is the caller's 500, not ours
                log.warning("device %s: method %s failed: %s", self.device_id, name, type(exc).__name__)
                status, answer = 500, {"error": type(exc).__name__}
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._client().publish(f"$iothub/methods/res/{status}/?$rid={rid}", json.dumps(answer).encode())
