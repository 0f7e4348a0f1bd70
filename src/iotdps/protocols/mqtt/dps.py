"""Azure DPS over MQTT: CONNECT username, request/response topics, register body
(azure-wire-protocol.md section 1).

Server side: `parse_dps_username`, `parse_dps_request_topic`, `format_dps_response_topic`,
`parse_register_body`. Client side (our device client): `format_register_topic`,
`format_status_topic`, `parse_dps_response_topic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from iotdps.ids import check_registration_id
from iotdps.jsonload import InvalidJson, load_json
from iotdps.protocols.mqtt._query import check_status, encode_component, parse_query, short
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest

__all__ = [
    "DPS_RESPONSE_FILTER",
    "DpsRegisterRequest",
    "DpsResponse",
    "DpsStatusRequest",
    "DpsUsername",
    "RegisterBody",
    "TpmAttestation",
    "format_dps_response_topic",
    "format_register_topic",
    "format_status_topic",
    "parse_dps_request_topic",
    "parse_dps_response_topic",
    "parse_dps_username",
    "parse_register_body",
]

DPS_RESPONSE_FILTER = "$dps/registrations/res/#"
"""What a DPS client subscribes to (at QoS 1) before it registers."""

_REGISTER_PATH = "$dps/registrations/PUT/iotdps-register/"
_STATUS_PATH = "$dps/registrations/GET/iotdps-get-operationstatus/"
_RESPONSE_PREFIX = "$dps/registrations/res/"

# Real scopes look like 0ne00ABCDEF; ours are configured, so allow a little more, but never
# a `/` (it would shift the username segments) or anything needing escaping.
_ID_SCOPE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


# -- CONNECT username --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DpsUsername:
    id_scope: str
    registration_id: str
    api_version: str
    client_version: str | None
    params: tuple[tuple[str, str | None], ...] = ()
    """Every query parameter, decoded, in the order sent (api-version and ClientVersion too)."""


def parse_dps_username(username: str) -> DpsUsername:
    """`{idScope}/registrations/{registrationId}/api-version=...&ClientVersion=...`.

    2.14.0 puts no `?` before `api-version` (the hub username does); the last segment is read as
    a query string, so other SDKs' parameter orders and api-versions are accepted too.
    """
    parts = username.split("/", 3)
    if len(parts) != 4 or parts[1] != "registrations":
        raise InvalidDeviceRequest(
            "DPS username must look like {idScope}/registrations/{registrationId}/api-version=..."
        )
    id_scope, _, registration_id, query = parts
    if not _ID_SCOPE.match(id_scope):
        raise InvalidDeviceRequest(f"DPS username has an invalid id scope {short(id_scope)}")
    check_registration_id(registration_id)
    params = parse_query(query, "DPS username")
    api_version = params.get("api-version")
    if not api_version:
        raise InvalidDeviceRequest("DPS username has no api-version")
    return DpsUsername(
        id_scope,
        registration_id,
        api_version,
        params.get("ClientVersion"),
        tuple(params.items()),
    )


# -- topics ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DpsRegisterRequest:
    rid: str


@dataclass(frozen=True, slots=True)
class DpsStatusRequest:
    rid: str
    operation_id: str


def _split_request(topic: str) -> tuple[str, dict[str, str | None]]:
    path, sep, query = topic.partition("?")
    if not sep:
        raise InvalidDeviceRequest(f"DPS topic {short(topic)} has no query string")
    if not path.endswith("/"):
        path += "/"
    return path, parse_query(query, "DPS topic")


def _required(params: dict[str, str | None], key: str, topic: str) -> str:
    value = params.get(key)
    if not value:
        raise InvalidDeviceRequest(f"DPS topic {short(topic)} has no {key}")
    return value


def parse_dps_request_topic(topic: str) -> DpsRegisterRequest | DpsStatusRequest:
    """Classify a PUBLISH from a DPS client: a register request or an operation-status poll.

    Values are percent-decoded; an unknown topic is `InvalidDeviceRequest`.
    """
    path, params = _split_request(topic)
    if path == _REGISTER_PATH:
        return DpsRegisterRequest(_required(params, "$rid", topic))
    if path == _STATUS_PATH:
        return DpsStatusRequest(_required(params, "$rid", topic), _required(params, "operationId", topic))
    raise InvalidDeviceRequest(f"unknown DPS topic {short(topic)}")


def format_dps_response_topic(status: int, rid: str, retry_after: int | None = None) -> str:
    """`$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]`.

    The SDK splits the topic at the next `$` and parses the rest with `unquote`, so `rid` is
    percent-encoded (a UUID comes out unchanged, and no `$` can follow `?$rid=`) and
    `retry-after` is a plain integer (it is read with `int(x, 10)`).
    """
    topic = f"{_RESPONSE_PREFIX}{check_status(status)}/?$rid={encode_component(rid)}"
    if retry_after is not None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError("retry-after must be a non-negative integer number of seconds")
        topic += f"&retry-after={retry_after}"
    return topic


def format_register_topic(rid: str) -> str:
    return f"{_REGISTER_PATH}?$rid={encode_component(rid)}"


def format_status_topic(rid: str, operation_id: str) -> str:
    return f"{_STATUS_PATH}?$rid={encode_component(rid)}&operationId={encode_component(operation_id)}"


@dataclass(frozen=True, slots=True)
class DpsResponse:
    status: int
    rid: str
    retry_after: int | None


def parse_dps_response_topic(topic: str) -> DpsResponse:
    """Client side: `$dps/registrations/res/{status}/?$rid=...[&retry-after=...]`."""
    if not topic.startswith(_RESPONSE_PREFIX):
        raise InvalidDeviceRequest(f"not a DPS response topic: {short(topic)}")
    status_raw, _, rest = topic[len(_RESPONSE_PREFIX) :].partition("/")
    if not status_raw.isdigit() or not rest.startswith("?"):
        raise InvalidDeviceRequest(f"malformed DPS response topic {short(topic)}")
    params = parse_query(rest[1:], "DPS response topic")
    retry_raw = params.get("retry-after")
    retry_after = None
    if retry_raw is not None:
        if not retry_raw.isdigit():
            raise InvalidDeviceRequest("retry-after is not an integer")
        retry_after = int(retry_raw)
    return DpsResponse(int(status_raw), _required(params, "$rid", topic), retry_after)


# -- register body -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmAttestation:
    endorsement_key: str
    storage_root_key: str | None


@dataclass(frozen=True, slots=True)
class RegisterBody:
    """The register request body. `payload` is any JSON value (None for null or absent)."""

    registration_id: str
    payload: object = None
    tpm: TpmAttestation | None = None
    csr: str | None = None


def parse_register_body(body: bytes, csr_field: str = "csr") -> RegisterBody:
    """`{"payload": ..., "registrationId": "..."}` plus optional `tpm` and the CSR, in `csr_field`
    (`csr`, or `clientCertificateCsr` in api-version 2021-11-01-preview; section 10)."""
    try:
        doc = load_json(body, what="register body")
    except InvalidJson as exc:
        raise InvalidDeviceRequest(exc.message) from None
    if not isinstance(doc, dict):
        raise InvalidDeviceRequest("register body must be a JSON object")
    registration_id = doc.get("registrationId")
    if not isinstance(registration_id, str):
        raise InvalidDeviceRequest("register body needs a string registrationId")
    check_registration_id(registration_id)
    tpm = None
    raw_tpm = doc.get("tpm")
    if raw_tpm is not None:
        if not isinstance(raw_tpm, dict) or not isinstance(raw_tpm.get("endorsementKey"), str):
            raise InvalidDeviceRequest("register body tpm needs a string endorsementKey")
        srk = raw_tpm.get("storageRootKey")
        if srk is not None and not isinstance(srk, str):
            raise InvalidDeviceRequest("register body tpm.storageRootKey must be a string")
        tpm = TpmAttestation(raw_tpm["endorsementKey"], srk)
    csr = doc.get(csr_field)
    if csr is not None and (not isinstance(csr, str) or not csr):
        raise InvalidDeviceRequest(f"register body {csr_field} must be a non-empty base64 string")
    return RegisterBody(registration_id, doc.get("payload"), tpm, csr)
