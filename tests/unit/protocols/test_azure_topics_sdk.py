"""Our DPS and hub topic helpers against the topic code of the installed azure-iot-device 2.14.0."""

from __future__ import annotations

import uuid

import azure.iot.device.iothub.models.message as sdk_message
import azure.iot.device.iothub.pipeline.mqtt_topic_iothub as sdk_hub
import azure.iot.device.provisioning.pipeline.mqtt_topic_provisioning as sdk_dps
from hypothesis import given
from hypothesis import strategies as st

from iotdps.protocols.mqtt import dps, hub

keys = st.text(min_size=1, max_size=8).filter(lambda k: not k.startswith("$.") and k != "iothub-ack")
# -- against the real 2.14.0 topic code --------------------------------------------------------
# The SDK's own topic functions (sdk_*, imported from the installed azure-iot-device 2.14.0; a
# plain import, so a missing SDK fails instead of skipping) are the strongest check that both
# directions agree with what the device really does.


def test_sdk_dps_topics_parse_and_our_responses_satisfy_the_sdk() -> None:
    rid = str(uuid.uuid4())
    assert dps.parse_dps_request_topic(sdk_dps.get_register_topic_for_publish(rid)) == dps.DpsRegisterRequest(rid)
    opid = "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550"
    assert dps.parse_dps_request_topic(sdk_dps.get_query_topic_for_publish(rid, opid)) == dps.DpsStatusRequest(
        rid, opid
    )
    for status, retry in ((202, 3), (200, None), (429, 10)):
        topic = dps.format_dps_response_topic(status, rid, retry)
        assert sdk_dps.is_dps_response_topic(topic)
        assert sdk_dps.extract_status_code_from_dps_response_topic(topic) == str(status)
        props = sdk_dps.extract_properties_from_dps_response_topic(topic)
        assert props["rid"] == rid
        assert int(props.get("retry-after", "2"), 10) == (retry if retry is not None else 2)


def test_sdk_telemetry_topic_parses() -> None:
    msg = sdk_message.Message(b"x", message_id="mid/1", content_encoding="utf-8", content_type="application/json")
    msg.correlation_id = "c&1"
    msg.custom_properties = {"temp": "21.5", "a=b": "x y", "plus": "1+1"}
    topic = sdk_hub.encode_message_properties_in_topic(msg, sdk_hub.get_telemetry_topic_for_publish("dev-1", None))
    parsed = hub.parse_device_topic(topic)
    assert parsed == hub.Telemetry(
        "dev-1",
        None,
        {
            "message_id": "mid/1",
            "correlation_id": "c&1",
            "content_type": "application/json",
            "content_encoding": "utf-8",
        },
        {"a=b": "x y", "plus": "1+1", "temp": "21.5"},
    )


@given(
    st.dictionaries(st.sampled_from(["message_id", "correlation_id", "user_id", "content_type"]), st.text(max_size=10)),
    st.dictionaries(keys, st.none() | st.text(max_size=10), max_size=4),
)
def test_sdk_reads_our_c2d_topics(system: dict[str, str], app: dict[str, str | None]) -> None:
    topic = hub.format_c2d_topic("dev-1", system, app)
    assert sdk_hub.is_c2d_topic(topic, "dev-1")
    received = sdk_message.Message(b"")
    sdk_hub.extract_message_properties_from_topic(topic, received)
    for name, value in system.items():
        assert getattr(received, name) == value
    assert received.custom_properties == app


def test_sdk_twin_and_method_topics() -> None:
    rid = str(uuid.uuid4())
    get = sdk_hub.get_twin_topic_for_publish("GET", "/", rid)
    assert hub.parse_device_topic(get) == hub.TwinGetRequest(rid)
    patch = sdk_hub.get_twin_topic_for_publish("PATCH", "/properties/reported/", rid)
    assert hub.parse_device_topic(patch) == hub.TwinReportedPatch(rid)
    response = hub.format_twin_response_topic(204, rid, 3)
    assert sdk_hub.is_twin_response_topic(response)
    assert sdk_hub.get_twin_request_id_from_topic(response) == rid
    assert sdk_hub.get_twin_status_code_from_topic(response) == "204"
    assert sdk_hub.is_twin_desired_property_patch_topic(hub.format_desired_patch_topic(4))
    request = hub.format_method_request_topic("do it/now", "42")
    assert sdk_hub.is_method_topic(request)
    assert sdk_hub.get_method_name_from_topic(request) == "do it/now"
    assert sdk_hub.get_method_request_id_from_topic(request) == "42"
    assert hub.parse_device_topic(sdk_hub.get_method_topic_for_publish("42", 200)) == hub.MethodResponse(200, "42")
