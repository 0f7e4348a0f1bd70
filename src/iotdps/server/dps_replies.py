"""The DPS device edges' answers (MQTT and HTTPS alike): credentials from the transport, the
Azure error body, and how a register outcome becomes a status code and a JSON body.

Devices get terse answers (iotdps.refusals.DEVICE_ANSWERS); the reason in words goes to the refusal
log and to our log at info level, never to the device (see dps_runner).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from iotdps.evidence import Credential, PeerIdentity, SasCredential, X509Evidence
from iotdps.jsondump import dumps
from iotdps.provisioning.registration import RegistrationOutcome
from iotdps.secret import Secret
from iotdps.timestamps import format_time, utcnow

__all__ = [
    "POLL_RETRY_AFTER",
    "DeviceReply",
    "assigning_reply",
    "credential_from",
    "error_body",
    "outcome_reply",
]

# What we tell devices to wait between polls.
POLL_RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class DeviceReply:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None

    def json_bytes(self) -> bytes:
        return dumps(self.body)


def error_body(error_code: int, message: str) -> dict[str, Any]:
    """The Azure device-facing error object (azure-wire-protocol.md 1.7)."""
    return {
        "errorCode": error_code,
        "trackingId": str(uuid.uuid4()),
        "message": message,
        "timestampUtc": format_time(utcnow()),
    }


def credential_from(peer: PeerIdentity | None, sas_token: str | None) -> Credential | None:
    """A SAS token wins when both are present (a device may present a certificate the
    enrollment does not use); otherwise the TLS client certificate chain, if any."""
    if sas_token:
        return SasCredential(Secret(sas_token))
    if peer is not None and peer.chain:
        return X509Evidence(
            presented=tuple(peer.chain),
            verified=tuple(peer.verified_chain) if peer.verified_chain is not None else None,
            errors=tuple(e.message for e in peer.verify_errors),
        )
    return None


def outcome_reply(outcome: RegistrationOutcome) -> DeviceReply:
    """Status code and body for a register / poll / lookup outcome."""
    if outcome.record is None:
        answer = outcome.answer
        assert answer is not None
        return DeviceReply(answer.http_status, error_body(answer.error_code, answer.message))
    if outcome.record.status == "assigning":
        return DeviceReply(202, outcome.operation_json(), POLL_RETRY_AFTER)
    return DeviceReply(200, outcome.operation_json())


def assigning_reply(operation_id: str) -> DeviceReply:
    return DeviceReply(202, {"operationId": operation_id, "status": "assigning"}, POLL_RETRY_AFTER)
