"""Azure IoT Hub device topics over MQTT (azure-wire-protocol.md section 8).

Server side: `parse_hub_username`, `classify_username`, `parse_device_topic` (telemetry, twin
GET, reported PATCH, method response, certificate request), and formatters for what the hub
sends: C2D, twin responses, desired patches, method requests, credential responses. Client
side: `format_telemetry_topic`, `parse_c2d_topic`, `format_certificate_request_topic`.
`topic_matches` decides which subscriptions a publish goes to.

Device and module ids are taken raw, never percent-decoded: `%` is a legal id character.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from iotdps.protocols.mqtt._query import check_status, encode_component, parse_query, short
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest
from iotdps.protocols.mqtt.topics import topic_matches

__all__ = [
    "C2D_FILTER_TEMPLATE",
    "CREDENTIALS_RESPONSE_FILTER",
    "METHODS_FILTER",
    "SYSTEM_PROPERTY_KEYS",
    "TWIN_DESIRED_FILTER",
    "TWIN_RESPONSE_FILTER",
    "C2DMessage",
    "CertificateRequest",
    "HubUsername",
    "MethodResponse",
    "Telemetry",
    "TwinGetRequest",
    "TwinReportedPatch",
    "classify_username",
    "format_c2d_topic",
    "format_certificate_request_topic",
    "format_credentials_response_topic",
    "format_desired_patch_topic",
    "format_method_request_topic",
    "format_property_bag",
    "format_telemetry_topic",
    "format_twin_response_topic",
    "parse_c2d_topic",
    "parse_device_topic",
    "parse_hub_username",
    "parse_property_bag",
    "topic_matches",
]

C2D_FILTER_TEMPLATE = "devices/{device_id}/messages/devicebound/#"
METHODS_FILTER = "$iothub/methods/POST/#"
TWIN_RESPONSE_FILTER = "$iothub/twin/res/#"
TWIN_DESIRED_FILTER = "$iothub/twin/PATCH/properties/desired/#"
# The IoT Hub certificate-management preview (azure-wire-protocol.md 10.1): a connected device
# asks for a certificate on `$iothub/credentials/POST/issueCertificate/?$rid=` and hears the 202
# and the final answer on `$iothub/credentials/res/{status}/?$rid=`.
CREDENTIALS_RESPONSE_FILTER = "$iothub/credentials/res/#"

SYSTEM_PROPERTY_KEYS: Mapping[str, str] = {
    "$.mid": "message_id",
    "$.cid": "correlation_id",
    "$.uid": "user_id",
    "$.ct": "content_type",
    "$.ce": "content_encoding",
    "$.ifid": "interface_id",
    "$.exp": "expiry_time_utc",
    "$.on": "output_name",
    "$.to": "to",
    "iothub-ack": "ack",
    # Set by the hub on the messages it stores or routes; a device's values are replaced
    # (hub.stamps).
    "$.cdid": "connection_device_id",
    "$.cmid": "connection_module_id",
}
"""Wire key -> our name for the system properties of a property bag (section 8.2/8.3)."""

_NAME_TO_WIRE = {name: wire for wire, name in SYSTEM_PROPERTY_KEYS.items()}

_TWIN_GET = "$iothub/twin/GET/"
_TWIN_REPORTED = "$iothub/twin/PATCH/properties/reported/"
_METHOD_RES = "$iothub/methods/res/"
_ISSUE_CERTIFICATE = "$iothub/credentials/POST/issueCertificate/"


# -- usernames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubUsername:
    hostname: str
    device_id: str
    module_id: str | None
    api_version: str
    device_client_type: str | None
    model_id: str | None
    params: tuple[tuple[str, str | None], ...] = ()


def _split_hub(username: str) -> tuple[str, str, str | None, str] | None:
    """(hostname, device id, module id, query) when the shape is a hub username, else None.

    Host names and ids never contain `/`, so the query is whatever follows `/?` after the
    second (or third) segment, even if a lax client left a `/` unencoded inside it.
    """
    parts = username.split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    hostname, device_id, rest = parts
    if rest.startswith("?"):
        return hostname, device_id, None, rest[1:]
    module_id, sep, rest = rest.partition("/")
    if not sep or not module_id or not rest.startswith("?"):
        return None
    return hostname, device_id, module_id, rest[1:]


def parse_hub_username(username: str) -> HubUsername:
    """`{hostname}/{deviceId}/?api-version=...&DeviceClientType=...` (or `.../{moduleId}/?...`)."""
    split = _split_hub(username)
    if split is None:
        raise InvalidDeviceRequest("hub username must look like {hostname}/{deviceId}/?api-version=...")
    hostname, device_id, module_id, query = split
    params = parse_query(query, "hub username")
    api_version = params.get("api-version")
    if not api_version:
        raise InvalidDeviceRequest("hub username has no api-version")
    return HubUsername(
        hostname,
        device_id,
        module_id,
        api_version,
        params.get("DeviceClientType"),
        params.get("model-id"),
        tuple(params.items()),
    )


def classify_username(username: str) -> Literal["dps", "hub"] | None:
    """Tell a DPS CONNECT from a hub CONNECT by the username's shape alone (section 9.3 c).

    DPS: `{scope}/registrations/{id}/api-version=...` (no `?`). Hub: a `/?` query after the
    device (and module) segment. Shape only: the matching parser gives the precise error.
    """
    parts = username.split("/", 3)
    if len(parts) == 4 and parts[1] == "registrations" and not parts[3].startswith("?"):
        if "api-version=" in parts[3]:
            return "dps"
    if _split_hub(username) is not None:
        return "hub"
    return None


# -- property bags -----------------------------------------------------------------------------


def parse_property_bag(bag: str) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(system properties by our name, application properties) from a percent-encoded bag.

    Keys and values are percent-decoded (2.14.0 sends `%24.mid`). A key without `=` maps to
    None, `key=` to "". Known system keys get their names from `SYSTEM_PROPERTY_KEYS`; any other
    `$.`-key is kept as a system property under its wire key.
    """
    system: dict[str, str | None] = {}
    app: dict[str, str | None] = {}
    for key, value in parse_query(bag, "property bag").items():
        name = SYSTEM_PROPERTY_KEYS.get(key)
        if name is not None:
            system[name] = value
        elif key.startswith("$."):
            system[key] = value
        else:
            app[key] = value
    return system, app


def format_property_bag(
    system_properties: Mapping[str, str | None] | None = None,
    application_properties: Mapping[str, str | None] | None = None,
) -> str:
    """The inverse of `parse_property_bag`: system properties first, then application ones.

    Everything is percent-encoded, including `/` and `$`: the SDK finds the bag as the 5th
    `/` segment of a C2D topic. System properties may be named by our name or by wire key.
    """
    pairs: list[str] = []
    for group, is_system in ((system_properties or {}, True), (application_properties or {}, False)):
        for key, value in group.items():
            wire = key
            if is_system:
                wire = _NAME_TO_WIRE.get(key, key)
                if wire not in SYSTEM_PROPERTY_KEYS and not wire.startswith("$."):
                    raise ValueError(f"unknown system property {key!r}")
            encoded = encode_component(wire)
            pairs.append(encoded if value is None else f"{encoded}={encode_component(value)}")
    return "&".join(pairs)


# -- device-to-hub topics ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Telemetry:
    device_id: str
    module_id: str | None
    system_properties: dict[str, str | None] = field(default_factory=dict, hash=False)
    application_properties: dict[str, str | None] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class TwinGetRequest:
    rid: str


@dataclass(frozen=True, slots=True)
class TwinReportedPatch:
    rid: str


@dataclass(frozen=True, slots=True)
class MethodResponse:
    status: int
    rid: str


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """`$iothub/credentials/POST/issueCertificate/?$rid={rid}`: the body is the request."""

    rid: str


def _rid(query: str, topic: str) -> str:
    rid = parse_query(query, "hub topic").get("$rid")
    if not rid:
        raise InvalidDeviceRequest(f"hub topic {short(topic)} has no $rid")
    return rid


def _telemetry(topic: str) -> Telemetry | None:
    # devices/{d}/messages/events/{bag}   or   devices/{d}/modules/{m}/messages/events/{bag}
    parts = topic.split("/", 6)
    if len(parts) >= 4 and parts[2] == "messages" and parts[3] == "events":
        device_id, module_id, bag_index = parts[1], None, 4
    elif len(parts) >= 6 and parts[2] == "modules" and parts[4] == "messages" and parts[5] == "events":
        device_id, module_id, bag_index = parts[1], parts[3], 6
    else:
        return None
    if not device_id or module_id == "":
        raise InvalidDeviceRequest(f"telemetry topic {short(topic)} has an empty id")
    # The trailing `/` before the bag is always sent by 2.14.0; tolerate its absence.
    bag = "/".join(topic.split("/")[bag_index:])
    system, app = parse_property_bag(bag)
    return Telemetry(device_id, module_id, system, app)


def parse_device_topic(
    topic: str,
) -> Telemetry | TwinGetRequest | TwinReportedPatch | MethodResponse | CertificateRequest:
    """Classify a PUBLISH a device sent to the hub; an unknown topic is `InvalidDeviceRequest`."""
    if topic.startswith("devices/"):
        telemetry = _telemetry(topic)
        if telemetry is not None:
            return telemetry
    elif topic.startswith("$iothub/"):
        path, sep, query = topic.partition("?")
        if sep and path == _TWIN_GET:
            return TwinGetRequest(_rid(query, topic))
        if sep and path == _TWIN_REPORTED:
            return TwinReportedPatch(_rid(query, topic))
        if sep and path.startswith(_METHOD_RES):
            status = path[len(_METHOD_RES) :].rstrip("/")
            if not (status.isdigit() and len(status) <= 3):
                raise InvalidDeviceRequest(f"method response topic {short(topic)} has a bad status")
            return MethodResponse(int(status), _rid(query, topic))
        if sep and path == _ISSUE_CERTIFICATE:
            return CertificateRequest(_rid(query, topic))
    raise InvalidDeviceRequest(f"unknown hub topic {short(topic)}")


def format_telemetry_topic(
    device_id: str,
    system_properties: Mapping[str, str | None] | None = None,
    application_properties: Mapping[str, str | None] | None = None,
    module_id: str | None = None,
) -> str:
    base = f"devices/{device_id}/" + (f"modules/{module_id}/" if module_id else "")
    return base + "messages/events/" + format_property_bag(system_properties, application_properties)


# -- hub-to-device topics ----------------------------------------------------------------------


def format_c2d_topic(
    device_id: str,
    system_properties: Mapping[str, str | None] | None = None,
    application_properties: Mapping[str, str | None] | None = None,
) -> str:
    """`devices/{id}/messages/devicebound/{bag}` with the whole bag percent-encoded."""
    return f"devices/{device_id}/messages/devicebound/" + format_property_bag(system_properties, application_properties)


@dataclass(frozen=True, slots=True)
class C2DMessage:
    device_id: str
    system_properties: dict[str, str | None] = field(default_factory=dict, hash=False)
    application_properties: dict[str, str | None] = field(default_factory=dict, hash=False)


def parse_c2d_topic(topic: str) -> C2DMessage:
    """Client side: the inverse of `format_c2d_topic`."""
    parts = topic.split("/", 4)
    if len(parts) < 4 or parts[0] != "devices" or parts[2:4] != ["messages", "devicebound"]:
        raise InvalidDeviceRequest(f"not a cloud-to-device topic: {short(topic)}")
    system, app = parse_property_bag(parts[4] if len(parts) == 5 else "")
    return C2DMessage(parts[1], system, app)


def format_twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    """`$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` (204 + version for a reported PATCH)."""
    topic = f"$iothub/twin/res/{check_status(status)}/?$rid={encode_component(rid)}"
    if version is not None:
        topic += f"&$version={int(version)}"
    return topic


def format_desired_patch_topic(version: int) -> str:
    """The patch body must carry the same `"$version"` (the SDK reads it from the body)."""
    return f"$iothub/twin/PATCH/properties/desired/?$version={int(version)}"


def format_method_request_topic(method_name: str, rid: str) -> str:
    """`$iothub/methods/POST/{name}/?$rid={rid}`; the SDK URL-decodes the name."""
    if not method_name:
        raise ValueError("method name is empty")
    return f"$iothub/methods/POST/{encode_component(method_name)}/?$rid={encode_component(rid)}"


def format_certificate_request_topic(rid: str) -> str:
    """Client side: `$iothub/credentials/POST/issueCertificate/?$rid={rid}`."""
    return f"{_ISSUE_CERTIFICATE}?$rid={encode_component(rid)}"


def format_credentials_response_topic(status: int, rid: str) -> str:
    """`$iothub/credentials/res/{status}/?$rid={rid}`: 202 accepted, 200 issued, or an error."""
    return f"$iothub/credentials/res/{check_status(status)}/?$rid={encode_component(rid)}"
