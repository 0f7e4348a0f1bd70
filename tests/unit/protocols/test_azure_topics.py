"""DPS and IoT Hub username/topic helpers against the strings captured in azure-wire-protocol.md."""

from __future__ import annotations

import json
import urllib.parse
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdps.errors import InvalidInput, InvalidRegistrationId
from iotdps.protocols.mqtt import dps, hub
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest

# Captured from azure-iot-device 2.14.0 (azure-wire-protocol.md 1.2 and 8.1/8.2).
DPS_USERNAME_2_14_0 = (
    "0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31&ClientVersion="
    "azure-iot-device-provisioning-py%2F2.14.0%283.11.7%3BLinux%20%231%20SMP%20PREEMPT_DYNAMIC%20%400%3Bx86_64%29"
)
HUB_USERNAME_2_14_0 = (
    "127.0.0.3/dev-1/?api-version=2019-10-01&DeviceClientType="
    "azure-iot-device-iothub-py%2F2.14.0%283.11.7%3BLinux%20%231%20SMP%20PREEMPT_DYNAMIC%20%400%3Bx86_64%29"
)
TELEMETRY_TOPIC = (
    "devices/dev-1/messages/events/%24.mid=mid-1&%24.cid=cid%201&%24.ct=application%2Fjson&%24.ce=utf-8"
    "&alert=yes%20please"
)


# -- DPS ---------------------------------------------------------------------------------------


def test_parse_the_2_14_0_dps_username() -> None:
    parsed = dps.parse_dps_username(DPS_USERNAME_2_14_0)
    assert parsed.id_scope == "0ne00ABCDEF"
    assert parsed.registration_id == "dev-1"
    assert parsed.api_version == "2019-03-31"
    assert parsed.client_version == (
        "azure-iot-device-provisioning-py/2.14.0(3.11.7;Linux #1 SMP PREEMPT_DYNAMIC @0;x86_64)"
    )


def test_dps_username_other_sdks() -> None:
    # azure-iot-sdk-c: another api-version; parameter order free; no ClientVersion at all.
    parsed = dps.parse_dps_username("0ne0001/registrations/my.dev:1/ClientVersion=c%2B%2B&api-version=2021-06-01")
    assert (parsed.registration_id, parsed.api_version, parsed.client_version) == (
        "my.dev:1",
        "2021-06-01",
        "c++",
    )
    assert dps.parse_dps_username("s/registrations/d/api-version=2025-07-01-preview").client_version is None


@pytest.mark.parametrize(
    ("username", "error"),
    [
        ("0ne/registrations/dev-1", InvalidDeviceRequest),
        ("0ne/devices/dev-1/api-version=1", InvalidDeviceRequest),
        ("0ne/registrations/dev-1/ClientVersion=x", InvalidDeviceRequest),
        ("0ne/registrations/dev-1/api-version=", InvalidDeviceRequest),
        ("0ne/registrations/dev-1/api-version=1&api-version=2", InvalidDeviceRequest),
        ("0ne/registrations/dev 1/api-version=1", InvalidRegistrationId),
        ("/registrations/dev-1/api-version=1", InvalidDeviceRequest),
        ("0n%e/registrations/dev-1/api-version=1", InvalidDeviceRequest),
        ("0ne/registrations/dev-1/api-version=%ff", InvalidDeviceRequest),
    ],
)
def test_bad_dps_usernames(username: str, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        dps.parse_dps_username(username)
    assert isinstance(info.value, InvalidInput) and info.value.message


def test_parse_dps_request_topics_as_2_14_0_formats_them() -> None:
    rid = str(uuid.uuid4())
    # 2.14.0 formats with quote(str(rid), safe="").
    topic = f"$dps/registrations/PUT/iotdps-register/?$rid={urllib.parse.quote(rid, safe='')}"
    assert dps.parse_dps_request_topic(topic) == dps.DpsRegisterRequest(rid)
    opid = "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550"
    topic = (
        f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={urllib.parse.quote(opid, safe='')}"
    )
    assert dps.parse_dps_request_topic(topic) == dps.DpsStatusRequest(rid, opid)
    # Percent-decoding of values (an opaque id with reserved characters).
    assert dps.parse_dps_request_topic(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=a%26b&operationId=x%2Fy%3D"
    ) == dps.DpsStatusRequest("a&b", "x/y=")


@pytest.mark.parametrize(
    "topic",
    [
        "$dps/registrations/PUT/iotdps-register/",
        "$dps/registrations/PUT/iotdps-register/?$rid=",
        "$dps/registrations/PUT/iotdps-register/?rid=1",
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
        "$dps/registrations/DELETE/iotdps-register/?$rid=1",
        "devices/dev-1/messages/events/",
    ],
)
def test_bad_dps_request_topics(topic: str) -> None:
    with pytest.raises(InvalidDeviceRequest):
        dps.parse_dps_request_topic(topic)


def sdk_dps_response_parse(topic: str) -> tuple[str, dict[str, str]]:
    """What 2.14.0's mqtt_topic_provisioning does with a response topic (section 1.5.3)."""
    status = topic.split("/")[3]
    properties = topic.split("$")[2]  # the topic's leading `$`, then the one of `$rid`
    out = {}
    for pair in properties.split("&"):
        key, value = pair.split("=")
        out[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return status, out


def test_dps_response_topics_survive_the_sdk_parser() -> None:
    rid = str(uuid.uuid4())
    topic = dps.format_dps_response_topic(202, rid, retry_after=3)
    assert topic == f"$dps/registrations/res/202/?$rid={rid}&retry-after=3"
    assert sdk_dps_response_parse(topic) == ("202", {"rid": rid, "retry-after": "3"})
    # A rid with awkward characters still never puts a second `$` after `?$rid=`.
    odd = "a$b&c=d/e?f#g"
    topic = dps.format_dps_response_topic(200, odd)
    assert topic.count("$") == 2
    assert sdk_dps_response_parse(topic) == ("200", {"rid": odd})
    assert dps.parse_dps_response_topic(topic) == dps.DpsResponse(200, odd, None)
    assert dps.parse_dps_response_topic(dps.format_dps_response_topic(429, "r", 5)).retry_after == 5
    with pytest.raises(ValueError):
        dps.format_dps_response_topic(202, rid, retry_after=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dps.format_dps_response_topic(1000, rid)


def test_client_side_dps_topics_round_trip() -> None:
    assert dps.parse_dps_request_topic(dps.format_register_topic("r 1")) == dps.DpsRegisterRequest("r 1")
    assert dps.parse_dps_request_topic(dps.format_status_topic("r", "5.a/b")) == dps.DpsStatusRequest("r", "5.a/b")


def test_register_body_exact_2_14_0_bytes() -> None:
    body = json.dumps({"registrationId": "dev-1", "payload": None}, sort_keys=True).encode()
    assert body == b'{"payload": null, "registrationId": "dev-1"}'
    assert dps.parse_register_body(body) == dps.RegisterBody("dev-1", None)
    with_payload = b'{"payload": {"modelId": "dtmi:x;1", "n": [1, 2]}, "registrationId": "dev-1"}'
    assert dps.parse_register_body(with_payload).payload == {"modelId": "dtmi:x;1", "n": [1, 2]}


def test_register_body_tpm_and_csr() -> None:
    body = json.dumps(
        {
            "registrationId": "tpm-1",
            "tpm": {"endorsementKey": "AToAAQAL", "storageRootKey": "ARgAAQAL"},
            "csr": "MIIB",
        }
    ).encode()
    parsed = dps.parse_register_body(body)
    assert parsed.tpm == dps.TpmAttestation("AToAAQAL", "ARgAAQAL")
    assert parsed.csr == "MIIB" and parsed.payload is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xff", "UTF-8"),
        (b"{", "JSON"),
        (b"[]", "object"),
        (b'{"payload": null}', "registrationId"),
        (b'{"registrationId": 5}', "registrationId"),
        (b'{"registrationId": "bad id"}', "only letters"),
        (b'{"registrationId": "d", "tpm": {}}', "endorsementKey"),
        (b'{"registrationId": "d", "tpm": {"endorsementKey": "x", "storageRootKey": 1}}', "storageRootKey"),
        (b'{"registrationId": "d", "csr": 1}', "csr"),
        (b'{"registrationId": "d", "payload": NaN}', "NaN"),
        (b"[" * 100_000, "JSON"),
    ],
)
def test_bad_register_bodies(body: bytes, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        dps.parse_register_body(body)
    assert words in info.value.message


# -- hub usernames -----------------------------------------------------------------------------


def test_parse_the_2_14_0_hub_username() -> None:
    parsed = hub.parse_hub_username(HUB_USERNAME_2_14_0)
    assert (parsed.hostname, parsed.device_id, parsed.module_id) == ("127.0.0.3", "dev-1", None)
    assert parsed.api_version == "2019-10-01"
    assert parsed.device_client_type is not None
    assert parsed.device_client_type.startswith("azure-iot-device-iothub-py/2.14.0(3.11.7;Linux #1")


def test_hub_username_module_and_pnp_forms() -> None:
    parsed = hub.parse_hub_username(
        "hub.local/dev-1/mod-a/?api-version=2020-09-30&DeviceClientType=x&model-id=dtmi%3Acom%3Aex%3B1"
    )
    assert (parsed.device_id, parsed.module_id, parsed.model_id) == ("dev-1", "mod-a", "dtmi:com:ex;1")
    # `%` is a legal device-id character: ids are taken raw.
    assert hub.parse_hub_username("h/dev%41/?api-version=1").device_id == "dev%41"


@pytest.mark.parametrize(
    "username",
    [
        "h/dev/api-version=1",
        "h//?api-version=1",
        "h/dev/?DeviceClientType=x",
        "h/dev/mod/x/?api-version=1",
        "h",
    ],
)
def test_bad_hub_usernames(username: str) -> None:
    with pytest.raises(InvalidDeviceRequest):
        hub.parse_hub_username(username)


@pytest.mark.parametrize(
    ("username", "kind"),
    [
        (DPS_USERNAME_2_14_0, "dps"),
        (HUB_USERNAME_2_14_0, "hub"),
        ("hub/registrations/?api-version=1", "hub"),  # a device named "registrations"
        ("hub/registrations/mod/?api-version=1", "hub"),
        ("hub/dev/mod/?api-version=1", "hub"),
        ("0ne/registrations/dev-1/ClientVersion=x&api-version=2021-06-01", "dps"),
        ("0ne/registrations/dev-1/?api-version=1", "hub"),  # a `?` means the hub form
        ("dev-1", None),
        ("", None),
        ("a/b/c", None),
    ],
)
def test_classify_username(username: str, kind: str | None) -> None:
    assert hub.classify_username(username) == kind


# -- telemetry and property bags ---------------------------------------------------------------


def test_parse_the_captured_telemetry_topic() -> None:
    parsed = hub.parse_device_topic(TELEMETRY_TOPIC)
    assert parsed == hub.Telemetry(
        "dev-1",
        None,
        {
            "message_id": "mid-1",
            "correlation_id": "cid 1",
            "content_type": "application/json",
            "content_encoding": "utf-8",
        },
        {"alert": "yes please"},
    )


def test_telemetry_forms() -> None:
    assert hub.parse_device_topic("devices/d/messages/events/") == hub.Telemetry("d", None, {}, {})
    assert hub.parse_device_topic("devices/d/messages/events") == hub.Telemetry("d", None, {}, {})
    module = hub.parse_device_topic("devices/d/modules/m/messages/events/%24.on=out1&k")
    assert module == hub.Telemetry("d", "m", {"output_name": "out1"}, {"k": None})
    odd = hub.parse_device_topic("devices/d/messages/events/a=&b&c=1%2B1+2&%24.custom=z&iothub-ack=full")
    assert isinstance(odd, hub.Telemetry)
    assert odd.application_properties == {"a": "", "b": None, "c": "1+1+2"}
    assert odd.system_properties == {"$.custom": "z", "ack": "full"}


@pytest.mark.parametrize(
    "topic",
    [
        "devices/d/messages/events/a=1&a=2",
        "devices//messages/events/",
        "devices/d/messages/other/",
        "devices/d/modules//messages/events/",
        "devices/d/messages/events/a=%ff",
        "$iothub/twin/GET/",
        "$iothub/twin/GET/?$rid=",
        "$iothub/methods/res/abc/?$rid=1",
        "$iothub/unknown/?$rid=1",
        "other",
    ],
)
def test_bad_device_topics(topic: str) -> None:
    with pytest.raises(InvalidDeviceRequest):
        hub.parse_device_topic(topic)


values = st.none() | st.text(max_size=12)
keys = st.text(min_size=1, max_size=8).filter(lambda k: not k.startswith("$.") and k != "iothub-ack")


@given(
    st.dictionaries(st.sampled_from(sorted(hub.SYSTEM_PROPERTY_KEYS.values())), values, max_size=4),
    st.dictionaries(keys, values, max_size=4),
)
def test_property_bag_round_trips_and_survives_the_sdk_c2d_parser(
    system: dict[str, str | None], app: dict[str, str | None]
) -> None:
    topic = hub.format_c2d_topic("dev-1", system, app)
    assert "devices/dev-1/messages/devicebound" in topic
    assert len(topic.split("/")) == 5  # the SDK reads the bag as the 5th `/` segment
    assert hub.parse_c2d_topic(topic) == hub.C2DMessage("dev-1", system, app)
    telemetry = hub.format_telemetry_topic("dev-1", system, app)
    assert hub.parse_device_topic(telemetry) == hub.Telemetry("dev-1", None, system, app)


def test_c2d_encoding_matches_the_sdk_reading() -> None:
    topic = hub.format_c2d_topic("d", {"message_id": "m/1", "ack": "full"}, {"a b": "x&y=z", "flag": None, "e": ""})
    assert topic == "devices/d/messages/devicebound/%24.mid=m%2F1&iothub-ack=full&a%20b=x%26y%3Dz&flag&e="
    with pytest.raises(ValueError):
        hub.format_c2d_topic("d", {"nonsense": "x"})


# -- twin and methods --------------------------------------------------------------------------


def sdk_hub_properties(topic: str) -> dict[str, str]:
    """2.14.0's `_extract_properties(topic.split("?")[1])`."""
    out = {}
    for entry in topic.split("?")[1].split("&"):
        pair = entry.split("=")
        out[urllib.parse.unquote(pair[0]).lstrip("$")] = urllib.parse.unquote(pair[1])
    return out


def test_twin_topics() -> None:
    rid = str(uuid.uuid4())
    assert hub.parse_device_topic(f"$iothub/twin/GET/?$rid={rid}") == hub.TwinGetRequest(rid)
    assert hub.parse_device_topic(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}") == hub.TwinReportedPatch(rid)
    topic = hub.format_twin_response_topic(204, rid, version=7)
    assert topic == f"$iothub/twin/res/204/?$rid={rid}&$version=7"
    assert sdk_hub_properties(topic) == {"rid": rid, "version": "7"}
    assert topic.split("/")[3] == "204"
    assert hub.format_twin_response_topic(200, rid) == f"$iothub/twin/res/200/?$rid={rid}"
    assert hub.format_desired_patch_topic(12) == "$iothub/twin/PATCH/properties/desired/?$version=12"
    assert hub.topic_matches(hub.TWIN_DESIRED_FILTER, hub.format_desired_patch_topic(12))


def test_method_topics() -> None:
    topic = hub.format_method_request_topic("reboot now/please", "1")
    assert topic == "$iothub/methods/POST/reboot%20now%2Fplease/?$rid=1"
    assert urllib.parse.unquote(topic.split("/")[3]) == "reboot now/please"
    assert sdk_hub_properties(topic) == {"rid": "1"}
    assert hub.topic_matches(hub.METHODS_FILTER, topic)
    # The captured device response.
    assert hub.parse_device_topic("$iothub/methods/res/200/?$rid=1") == hub.MethodResponse(200, "1")


def test_credentials_topics() -> None:
    # The certificate-management preview (wire doc 10.1): request and responses share the rid.
    request = hub.format_certificate_request_topic("r 1")
    assert request == "$iothub/credentials/POST/issueCertificate/?$rid=r%201"
    assert hub.parse_device_topic(request) == hub.CertificateRequest("r 1")
    for status in (202, 200, 409):
        topic = hub.format_credentials_response_topic(status, "r 1")
        assert topic == f"$iothub/credentials/res/{status}/?$rid=r%201"
        assert hub.topic_matches(hub.CREDENTIALS_RESPONSE_FILTER, topic)
    with pytest.raises(InvalidDeviceRequest):
        hub.parse_device_topic("$iothub/credentials/POST/issueCertificate/")  # no $rid
    with pytest.raises(InvalidDeviceRequest):
        hub.parse_device_topic("$iothub/credentials/POST/renew/?$rid=1")  # not an operation we know


# -- topic filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("devices/dev-1/messages/devicebound/#", "devices/dev-1/messages/devicebound/%24.mid=1", True),
        ("devices/dev-1/messages/devicebound/#", "devices/dev-1/messages/devicebound", True),
        ("devices/dev-1/messages/devicebound/#", "devices/dev-2/messages/devicebound/", False),
        ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", True),
        ("$dps/registrations/res/#", "$dps/registrations/res/202/?$rid=1&retry-after=3", True),
        ("#", "$iothub/twin/res/200/?$rid=1", False),
        ("+/twin/res/#", "$iothub/twin/res/200", False),
        ("#", "devices/d", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a//c", True),
        ("a/+/c", "a/b/c/d", False),
        ("a/+", "a", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/", False),
        ("+", "/", False),
        ("+/+", "/", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert hub.topic_matches(topic_filter, topic) is expected
