"""DPS over MQTT (azure-wire-protocol.md section 1): the endpoint behind a DPS CONNECT.

Credentials are checked at CONNECT, as the wire notes recommend: a bad SAS or an untrusted
certificate gets CONNACK 5 (the SDK raises CredentialError) and the reason goes to the
refusal log. A device whose enrollment matched but is disabled is let in, so that its
register call ends in status `disabled`, as on Azure.

Topics: responses go to `$dps/registrations/res/{status}/?$rid={rid}[&retry-after=N]`,
always with a JSON body. The register reply is a direct 200 when the pipeline finishes within
the budget, else 202 + polling (see dps_runner).
"""

from __future__ import annotations

import logging

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.errors import InvalidInput, NotFound
from iotdps.evidence import Credential
from iotdps.pki.issuance_wire import csr_field
from iotdps.protocols.mqtt.dps import (
    DpsRegisterRequest,
    DpsStatusRequest,
    format_dps_response_topic,
    parse_dps_request_topic,
    parse_dps_username,
    parse_register_body,
)
from iotdps.protocols.mqtt.events import PubAckReceived, PublishReceived, Subscribed, Unsubscribed
from iotdps.protocols.mqtt.packets import SUBACK_FAILURE, Connect
from iotdps.protocols.mqtt.topics import topic_matches
from iotdps.refusals import RefusalReason
from iotdps.server.dps_replies import DeviceReply, credential_from, error_body, outcome_reply
from iotdps.server.dps_runner import RegistrationRunner
from iotdps.server.mqtt_conn import CONNACK_NOT_AUTHORIZED, MqttConnection, MqttEndpoint
from iotdps.server.peers import peer_address

__all__ = ["DPS_RESPONSE_FILTER", "DpsMqttEndpoint", "route_dps"]

log = logging.getLogger("iotdps.dps")

DPS_RESPONSE_FILTER = "$dps/registrations/res/#"

# Refusals after which the connection is still accepted: the device authenticated, and its
# register call reports the enrollment's state.
_LET_IN = frozenset({RefusalReason.ENROLLMENT_DISABLED, RefusalReason.GROUP_DISABLED})


class DpsMqttEndpoint:
    # CONNACK, SUBACK, the register's PUBACK and its reply leave together (MqttConnection._run).
    holds_replies = True

    def __init__(
        self,
        runner: RegistrationRunner,
        id_scope: str,
        registration_id: str,
        credential: Credential | None,
        authentication: Authentication,
        peer: str | None = None,
        api_version: str | None = None,
    ):
        self._runner = runner
        # Attestation and precedence ran at CONNECT; the first register reuses the result
        # (the SDK connects once per register call). Later registers on the same
        # connection authenticate afresh, so a long-lived connection sees enrollment changes.
        self._authentication: Authentication | None = authentication
        self._id_scope = id_scope
        self._registration_id = registration_id
        self._credential = credential
        self._peer = peer
        # From the CONNECT username; decides whether a CSR is read and how issuance answers.
        self._api_version = api_version
        self._csr_field = csr_field(api_version) if api_version else None

    def _reply(self, conn: MqttConnection, rid: str, reply: DeviceReply) -> None:
        # QoS 0 like real DPS: the SDK does not acknowledge or need acknowledging of replies.
        conn.publish(format_dps_response_topic(reply.status, rid, reply.retry_after), reply.json_bytes(), 0)

    async def on_publish(self, conn: MqttConnection, event: PublishReceived) -> None:
        if event.qos == 1 and event.packet_id is not None:
            conn.write(conn.session.puback(event.packet_id))
        try:
            request = parse_dps_request_topic(event.topic)
        except InvalidInput as exc:
            log.info("DPS %s: ignoring publish to %r: %s", self._registration_id, event.topic[:100], exc.message)
            return
        if isinstance(request, DpsRegisterRequest):
            self._reply(conn, request.rid, await self._register(event.payload))
        elif isinstance(request, DpsStatusRequest):
            self._reply(conn, request.rid, await self._status(request.operation_id))

    async def _register(self, body: bytes) -> DeviceReply:
        try:
            parsed = parse_register_body(body, self._csr_field or "csr")
        except InvalidInput as exc:
            return DeviceReply(400, error_body(400001, f"Bad register request: {exc.message}"))
        if parsed.registration_id != self._registration_id:
            return DeviceReply(400, error_body(400002, "registrationId does not match the connection's"))
        if parsed.tpm is not None:
            # As Azure: TPM is HTTPS (and AMQP) only; the operator sees why in `iotdps refusals`.
            why = "TPM attestation is not supported over MQTT (Azure DPS does TPM over HTTPS and AMQP only)"
            self._authentication = None
            return await self._runner.register(
                self._id_scope,
                self._registration_id,
                self._credential,
                parsed.payload,
                parsed.csr,
                refuse("tpm", RefusalReason.TPM_OVER_MQTT, why),
                peer=self._peer,
            )
        authentication, self._authentication = self._authentication, None
        return await self._runner.register(
            self._id_scope,
            self._registration_id,
            self._credential,
            parsed.payload,
            # Only the api-versions that define a CSR field issue; the others ignore `csr` as before.
            parsed.csr if self._csr_field is not None else None,
            authentication,
            peer=self._peer,
            api_version=self._api_version,
        )

    async def _status(self, operation_id: str) -> DeviceReply:
        try:
            # None: this connection authenticated as the registration id at CONNECT.
            outcome = await self._runner.service.operation_status(
                self._id_scope, self._registration_id, operation_id, api_version=self._api_version
            )
        except NotFound:
            return DeviceReply(404, error_body(404000, "Operation not found"))
        return outcome_reply(outcome)

    async def on_subscribe(self, conn: MqttConnection, event: Subscribed) -> list[int]:
        # DPS answers only on its response topics and grants at most QoS 1.
        return [
            min(qos, 1) if topic_matches(topic, "$dps/registrations/res/200/?$rid=x") else SUBACK_FAILURE
            for topic, qos in event.subscriptions
        ]

    async def on_unsubscribe(self, conn: MqttConnection, event: Unsubscribed) -> None:
        return None

    async def on_puback(self, conn: MqttConnection, event: PubAckReceived) -> None:
        return None

    async def on_close(self, conn: MqttConnection, reason: str) -> None:
        return None


async def route_dps(runner: RegistrationRunner, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
    """Authenticate a DPS CONNECT: an endpoint, or CONNACK 5 with the reason logged (at a
    bounded rate: runner.refused_log) and counted in the refusal history."""
    peer = peer_address(conn.peername)
    try:
        username = parse_dps_username(connect.username or "")
    except InvalidInput as exc:
        runner.refused_log("BAD_USERNAME", "DPS CONNECT from %s refused: %s", peer, exc.message)
        return CONNACK_NOT_AUTHORIZED
    registration_id = username.registration_id
    conn.identity = registration_id
    if connect.client_id != registration_id:
        runner.refused_log(
            "CLIENT_ID_MISMATCH",
            "DPS CONNECT from %s refused: client id %r is not registration id %r",
            peer,
            connect.client_id[:200],
            registration_id[:200],
        )
        return CONNACK_NOT_AUTHORIZED
    password = connect.password.decode("utf-8", "replace") if connect.password else None
    credential = credential_from(conn.peer, password)
    service = runner.service
    auth = await service.authenticate(username.id_scope, registration_id, credential)
    decision = auth.decision
    if decision.admitted or (decision.matched and decision.reason in _LET_IN):
        return DpsMqttEndpoint(runner, username.id_scope, registration_id, credential, auth, peer, username.api_version)
    assert decision.reason is not None
    await service.record_refusal(registration_id, auth, peer)
    runner.refused_log(
        decision.reason.value,
        "DPS CONNECT %s from %s refused: %s (%s)",
        registration_id[:200],
        peer,
        decision.reason.value,
        decision.message,
    )
    return CONNACK_NOT_AUTHORIZED
