"""The DPS device REST API over HTTPS (azure-wire-protocol.md section 2), plus the MQTT
websocket route: both live on port 443 of the DPS address.

X.509 devices authenticate with their TLS client certificate (the TLS seam hands us the
chain); symmetric-key devices with `Authorization: SharedAccessSignature ...`; TPM devices
send their keys in the body, get a 401 challenge without a SAS, and then answer with a SAS their
TPM signed (`provisioning.tpm_challenge`, azure-wire-protocol.md 3.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from iotdps.errors import InvalidInput, NotFound
from iotdps.evidence import Credential, PeerIdentity, TpmEvidence
from iotdps.ids import is_valid_registration_id
from iotdps.jsonload import InvalidJson, load_json
from iotdps.pki.issuance_wire import csr_field
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE
from iotdps.provisioning.tpm_challenge import TpmChallenge, tpm_challenge
from iotdps.server.dps_replies import DeviceReply, credential_from, error_body, outcome_reply
from iotdps.server.dps_runner import RegistrationRunner
from iotdps.server.dps_tpm import tpm_evidence
from iotdps.server.listen import request_peer
from iotdps.server.mqtt_conn import MqttConnection
from iotdps.server.ws_bridge import WEBSOCKET_PATH, serve_mqtt_websocket

__all__ = ["MAX_DEVICE_BODY", "PeerRefresher", "build_device_app"]

log = logging.getLogger("iotdps.dps")

# A register body is a registration id, a small payload and maybe a CSR or TPM keys.
MAX_DEVICE_BODY = 64 * 1024

# Re-verifies a TLS peer whose chain OpenSSL could not verify against the current trust
# anchors (the server's `refreshed_peer`); see DeviceApi._credential.
PeerRefresher = Callable[[PeerIdentity], Awaitable[PeerIdentity]]


def _respond(reply: DeviceReply, request: web.Request) -> web.Response:
    headers = {"x-ms-request-id": reply.body.get("trackingId", "") or request.headers.get("x-ms-client-request-id", "")}
    if reply.retry_after is not None:
        headers["Retry-After"] = str(reply.retry_after)
    if "errorCode" in reply.body:
        headers["x-ms-error-code"] = str(reply.body["errorCode"])
    if reply.status == 202:
        headers["Location"] = f"https://{request.host}{request.path}"
    headers = {k: v for k, v in headers.items() if v}
    return web.Response(status=reply.status, body=reply.json_bytes(), content_type="application/json", headers=headers)


def _error(status: int, code: int, message: str, request: web.Request, *, close: bool = False) -> web.Response:
    response = _respond(DeviceReply(status, error_body(code, message)), request)
    if close:
        response.force_close()
    return response


async def _json_body(request: web.Request, deadline: float) -> dict[str, Any] | web.Response:
    # The body comes before any credential is checked (the registration id in it is part of
    # the request), so a peer that trickles it in is cut off at `deadline` seconds.
    try:
        async with asyncio.timeout(deadline):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, 413000, "Request body too large", request)
    except TimeoutError:
        return _error(408, 408000, "Request body not received in time", request, close=True)
    if not raw.strip():
        return {}
    try:
        body = load_json(raw, what="Request body")
    except InvalidJson as exc:
        return _error(400, 400001, exc.message, request)
    if not isinstance(body, dict):
        return _error(400, 400001, "Request body must be a JSON object", request)
    return body


def _sas(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    return value.strip() if value else None


class DeviceApi:
    def __init__(
        self, runner: RegistrationRunner, refresh_peer: PeerRefresher | None = None, *, body_timeout: float = 30.0
    ) -> None:
        self.runner = runner
        self.refresh_peer = refresh_peer
        self.body_timeout = body_timeout

    async def _credential(self, request: web.Request) -> Credential | None:
        peer, sas = request_peer(request), _sas(request)
        # The TLS context's anchors trail the store by up to a poll interval, so a chain from a
        # device enrolled (or a CA verified) a moment ago fails OpenSSL's check. As on the MQTT
        # path, such a chain is checked again against the current anchors before it counts as
        # unverified; a chain OpenSSL verified is never re-checked.
        # (A SAS token wins over a certificate, so with one there is nothing to re-check.)
        if (
            not sas
            and self.refresh_peer is not None
            and peer is not None
            and peer.chain
            and peer.verified_chain is None
        ):
            peer = await self.refresh_peer(peer)
        return credential_from(peer, sas)

    def _ids(self, request: web.Request) -> tuple[str, str] | web.Response:
        scope = request.match_info["id_scope"]
        registration_id = request.match_info["registration_id"]
        if not is_valid_registration_id(registration_id):
            return _error(400, 400004, "Invalid registration id", request)
        return scope, registration_id

    async def _ids_and_body(self, request: web.Request) -> tuple[str, str, dict[str, Any]] | web.Response:
        """Path ids, then the JSON body: the first problem answers the request (register and the
        registration lookup take both; the path is checked before the body is read)."""
        ids = self._ids(request)
        if isinstance(ids, web.Response):
            return ids
        body = await _json_body(request, self.body_timeout)
        if isinstance(body, web.Response):
            return body
        return (*ids, body)

    async def register(self, request: web.Request) -> web.Response:
        parts = await self._ids_and_body(request)
        if isinstance(parts, web.Response):
            return parts
        scope, registration_id, body = parts
        if body.get("registrationId", registration_id) != registration_id:
            return _error(400, 400002, "registrationId does not match the request path", request)
        api_version = request.query.get("api-version")
        field = csr_field(api_version) if api_version else None
        csr = body.get(field or "csr")
        if csr is not None and (not isinstance(csr, str) or not csr):
            return _error(400, 400001, f"{field or 'csr'} must be a non-empty base64 string", request)
        credential: Credential | None
        if body.get("tpm") is not None:
            tpm = tpm_evidence(body["tpm"], _sas(request))
            if isinstance(tpm, str):
                return _error(400, 400001, tpm, request)
            if tpm.sas is None:
                return await self._tpm_challenge(request, scope, registration_id, tpm)
            credential = tpm
        else:
            credential = await self._credential(request)
        reply = await self.runner.register(
            scope,
            registration_id,
            credential,
            body.get("payload"),
            # Only the api-versions that define a CSR field issue; the others ignore `csr` as before.
            csr if field is not None else None,
            peer=request.remote,
            transport="https",
            api_version=api_version,
        )
        return _respond(reply, request)

    async def _tpm_challenge(
        self, request: web.Request, scope: str, registration_id: str, evidence: TpmEvidence
    ) -> web.Response:
        # Two RSA encryptions per request: throttled like a registration.
        throttled = self.runner.throttled()
        if throttled is not None:
            return _respond(throttled, request)
        answer = await tpm_challenge(self.runner.service, scope, registration_id, evidence, peer=request.remote)
        if isinstance(answer, TpmChallenge):
            return _respond(DeviceReply(401, answer.to_json()), request)
        return _respond(outcome_reply(answer), request)

    async def operation_status(self, request: web.Request) -> web.Response:
        ids = self._ids(request)
        if isinstance(ids, web.Response):
            return ids
        scope, registration_id = ids
        credential = await self._credential(request)
        if credential is None:
            return _error(401, 401000, "Unauthorized", request)
        try:
            outcome = await self.runner.service.operation_status(
                scope,
                registration_id,
                request.match_info["operation_id"],
                credential,
                peer=request.remote,
                api_version=request.query.get("api-version"),
            )
        except NotFound:
            return _error(404, 404000, "Operation not found", request)
        return _respond(outcome_reply(outcome), request)

    async def registration_status(self, request: web.Request) -> web.Response:
        parts = await self._ids_and_body(request)
        if isinstance(parts, web.Response):
            return parts
        scope, registration_id, body = parts
        if body.get("csr") is not None or body.get("clientCertificateCsr") is not None:
            return _error(400, 400001, "csr is not accepted by the status lookup", request)
        credential = await self._credential(request)
        if credential is None:
            return _error(401, 401000, "Unauthorized", request)
        try:
            outcome = await self.runner.service.registration_status(
                scope, registration_id, credential, peer=request.remote
            )
        except NotFound:
            return _error(404, 404000, "Registration not found", request)
        reply = outcome_reply(outcome)
        # The lookup answers the DeviceRegistrationResult itself, not an operation wrapper.
        if reply.status == 200 and "registrationState" in reply.body:
            reply = DeviceReply(200, reply.body["registrationState"])
        return _respond(reply, request)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.status * 1000, exc.reason, request)
        raise
    except InvalidInput as exc:
        return _error(400, 400000, exc.message, request)


def build_device_app(
    runner: RegistrationRunner,
    mqtt_factory: Callable[[], MqttConnection],
    refresh_peer: PeerRefresher | None = None,
    *,
    max_frame_size: int = DEFAULT_MAX_PACKET_SIZE,
    body_timeout: float = 30.0,
) -> web.Application:
    """The 443 application of the DPS address: REST device API and MQTT over websockets.

    `refresh_peer`, when given, re-verifies a client chain OpenSSL could not verify against the
    current trust anchors (so a device enrolled a moment ago is not refused over HTTPS).
    `max_frame_size`: the largest websocket frame (the MQTT maximum packet size);
    `body_timeout`: seconds a request body may take to arrive."""
    app = web.Application(client_max_size=MAX_DEVICE_BODY, middlewares=[_errors])
    api = DeviceApi(runner, refresh_peer, body_timeout=body_timeout)

    async def websocket(request: web.Request) -> web.StreamResponse:
        return await serve_mqtt_websocket(request, mqtt_factory, max_frame_size=max_frame_size)

    app.router.add_get(WEBSOCKET_PATH, websocket)
    app.router.add_put("/{id_scope}/registrations/{registration_id}/register", api.register)
    app.router.add_get("/{id_scope}/registrations/{registration_id}/operations/{operation_id}", api.operation_status)
    app.router.add_post("/{id_scope}/registrations/{registration_id}", api.registration_status)
    return app
