"""Interop with real MQTT peers over loopback TCP.

* our CLIENT session against a Mosquitto broker the test starts on a loopback address of its own
  (the test fails, never skips, when the `mosquitto` binary is missing: .ci/run installs it);
* our SERVER session driven by a tiny asyncio loop, with paho-mqtt 1.6.1 (the client inside
  azure-iot-device 2.14.0) connecting to it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from iotdps.protocols.mqtt import (
    ClientSession,
    ConnAckReceived,
    Connected,
    Disconnected,
    Event,
    PingRespReceived,
    PubAckReceived,
    PublishReceived,
    ServerSession,
    SubAckReceived,
    Subscribed,
)
from iotdps_testing.net import free_loopback_address

MQTT_PORT = 1883
# Debian installs the broker in sbin, which is not on every user's PATH.
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Mosquitto broker of this test's own, on a free 127.x.y.z:1883; its (host, port)."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path=SBIN)
    if binary is None:
        pytest.fail("the mosquitto broker is not installed (Debian: apt-get install mosquitto; .ci/run installs it)")
    address = free_loopback_address((MQTT_PORT,))
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {MQTT_PORT} {address}\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    log_path = tmp_path / "mosquitto.log"
    with log_path.open("wb") as log:
        broker = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((address, MQTT_PORT), timeout=1).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start on {address}:{MQTT_PORT}: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
        yield address, MQTT_PORT
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(10)


def _exchange(sock: socket.socket, client: ClientSession, data: bytes, want: type, limit: float = 5.0) -> list[Event]:
    """Send `data`, then read until an event of type `want` arrives (bounded by `limit` seconds)."""
    if data:
        sock.sendall(data)
    events: list[Event] = []
    deadline = time.monotonic() + limit
    while not any(isinstance(e, want) for e in events):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {want.__name__} within {limit}s; got {events}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"broker closed the connection; got {events}")
        events.extend(client.receive_data(chunk))
    return events


def test_our_client_against_mosquitto(mosquitto: tuple[str, int]) -> None:
    with socket.create_connection(mosquitto, timeout=5.0) as sock:
        client = ClientSession()
        client_id = f"iotdps-test-{uuid.uuid4().hex[:8]}"
        events = _exchange(sock, client, client.connect(client_id, keepalive=30), ConnAckReceived)
        assert events[0] == ConnAckReceived(0, False)

        topic = f"iotdps/test/{uuid.uuid4().hex}"
        sub_id, data = client.subscribe([(topic + "/#", 1)])
        events = _exchange(sock, client, data, SubAckReceived)
        assert SubAckReceived(sub_id, (1,)) in events

        payload = b"\x00hello from iotdps\xff" * 50
        pub_id, data = client.publish(topic + "/x", payload, qos=1)
        events = _exchange(sock, client, data, PublishReceived)
        if not any(isinstance(e, PubAckReceived) for e in events):
            events += _exchange(sock, client, b"", PubAckReceived)
        assert any(isinstance(e, PubAckReceived) and e.packet_id == pub_id for e in events)
        [echo] = [e for e in events if isinstance(e, PublishReceived)]
        assert (echo.topic, echo.payload, echo.qos) == (topic + "/x", payload, 1)
        assert echo.packet_id is not None
        sock.sendall(client.puback(echo.packet_id))

        _exchange(sock, client, client.ping(), PingRespReceived)
        sock.sendall(client.disconnect())
        assert not client.inflight


# -- paho-mqtt 1.6.1 against our server session --------------------------------------------------


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: list[Event]) -> None:
    """The smallest useful listener: accept, grant QoS <= 1, PUBACK, and publish back on subscribe."""
    loop = asyncio.get_running_loop()
    session = ServerSession(loop.time())
    try:
        while not session.closed:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=10.0)
            except TimeoutError:
                break
            if not data:
                break
            for event in session.receive_data(data, loop.time()):
                log.append(event)
                if isinstance(event, Connected):
                    writer.write(session.accept())
                    for later in session.receive_data(b"", loop.time()):
                        log.append(later)
                elif isinstance(event, Subscribed):
                    writer.write(session.suback(event.packet_id, [min(q, 1) for _, q in event.subscriptions]))
                    for topic_filter, _ in event.subscriptions:
                        writer.write(session.publish(topic_filter.rstrip("#") + "hello", b"from-server", 1))
                elif isinstance(event, PublishReceived) and event.qos == 1:
                    assert event.packet_id is not None
                    writer.write(session.puback(event.packet_id))
            writer.write(session.data_to_send())
            await writer.drain()
    finally:
        writer.close()


async def test_paho_client_against_our_server() -> None:
    log: list[Event] = []
    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, log), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    connected = threading.Event()
    subscribed = threading.Event()
    published = threading.Event()
    received: list[tuple[str, bytes, int]] = []
    got_message = threading.Event()

    client = mqtt.Client(client_id="dev-1", clean_session=False, protocol=mqtt.MQTTv311)
    client.username_pw_set("0ne00ABCDEF/registrations/dev-1/api-version=2019-03-31", "SharedAccessSignature sr=x")
    client.on_connect = lambda c, u, flags, rc: connected.set() if rc == 0 else None
    client.on_subscribe = lambda c, u, mid, granted: subscribed.set()
    client.on_publish = lambda c, u, mid: published.set()

    def on_message(c: object, u: object, msg: object) -> None:
        received.append((msg.topic, msg.payload, msg.qos))  # type: ignore[attr-defined]
        got_message.set()

    client.on_message = on_message

    def run_paho() -> None:
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        try:
            assert connected.wait(5), "no CONNACK"
            client.subscribe("$dps/registrations/res/#", qos=1)
            assert subscribed.wait(5), "no SUBACK"
            info = client.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", b'{"payload": null}', qos=1)
            assert published.wait(5), "no PUBACK"
            assert info.is_published()
            assert got_message.wait(5), "no PUBLISH from the server"
            time.sleep(0.2)  # let paho's loop send its PUBACK
            client.disconnect()
        finally:
            client.loop_stop()

    try:
        await asyncio.wait_for(asyncio.to_thread(run_paho), timeout=20)
        for _ in range(50):  # the DISCONNECT / PUBACK reach the server asynchronously
            if any(isinstance(e, Disconnected) for e in log):
                break
            await asyncio.sleep(0.05)
    finally:
        server.close()
        await server.wait_closed()

    assert received == [("$dps/registrations/res/hello", b"from-server", 1)]
    kinds = [type(e) for e in log]
    assert kinds[:2] == [Connected, Subscribed]
    connect = log[0]
    assert isinstance(connect, Connected)
    assert connect.packet.client_id == "dev-1" and not connect.packet.clean_session
    assert connect.packet.password == b"SharedAccessSignature sr=x"
    assert PublishReceived in kinds
    assert any(isinstance(e, PubAckReceived) and e.message is not None for e in log), "paho never PUBACKed"
    assert kinds[-1] is Disconnected
