"""What a registration costs on the wire, counted in TLS records.

A device that pipelines CONNECT, SUBSCRIBE and the register PUBLISH (MQTT 3.1.1 allows it;
our device client does) gets CONNACK, SUBACK, PUBACK and the register reply back in one TLS
record. After the device's MQTT DISCONNECT the server closes the socket without a TLS
close_notify: the device has ended the session and, like paho, already closed its socket.

The client here is stdlib ssl on memory BIOs over a plain socket, so the test sees the raw TLS
records the server sends.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived, PubAckReceived, PublishReceived, SubAckReceived
from iotdps.sas import make_sas_token
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

_APPLICATION_DATA = 23


class _RawTls:
    """A TLS 1.2 client that keeps every byte the server sent, to count records."""

    def __init__(self, server: RunningServer) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cadata=server.server_ca)
        self.sock = socket.create_connection((server.address, 8883), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server.address)
        self.received = bytearray()  # ciphertext from the server since the handshake
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send()
                self._receive(keep=False)
        self._send()

    def _send(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self, *, keep: bool = True) -> bool:
        data = self.sock.recv(65536)
        if keep:
            self.received += data
        self.incoming.write(data)
        return bool(data)

    def write(self, plaintext: bytes) -> None:
        self.tls.write(plaintext)
        self._send()

    def read_until(self, session: ClientSession, done: type) -> list[object]:
        events: list[object] = []
        deadline = time.monotonic() + 10
        while not any(isinstance(e, done) for e in events):
            assert time.monotonic() < deadline, events
            try:
                events += session.receive_data(self.tls.read(65536))
            except ssl.SSLWantReadError:
                assert self._receive(), "the server closed the connection"
        return events

    def records(self) -> list[int]:
        """The content types of the TLS records received so far (whole records only)."""
        types, at = [], 0
        while at + 5 <= len(self.received):
            types.append(self.received[at])
            at += 5 + int.from_bytes(self.received[at + 3 : at + 5], "big")
        return types


def test_pipelined_registration_is_answered_in_one_record_and_closed_without_close_notify(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path)
    try:
        server.cli("enrollment", "create", "flight-1", "--symmetric-key")
        shown = server.cli_json("enrollment", "show", "flight-1", "--show-keys")
        key = shown["attestation"]["symmetricKey"]["primaryKey"]
        token = make_sas_token(server.id_scope, "flight-1", key, int(time.time()) + 600)
        client = _RawTls(server)
        session = ClientSession()
        username = f"{server.id_scope}/registrations/flight-1/api-version=2019-03-31&ClientVersion=test"
        body = json.dumps({"registrationId": "flight-1"}).encode()
        connect = session.connect("flight-1", username, token, keepalive=60, clean_session=False)
        _, subscribe = session.subscribe([("$dps/registrations/res/#", 1)])
        _, register = session.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body, qos=1)
        client.write(connect + subscribe + register)

        events = client.read_until(session, PublishReceived)
        kinds = [type(e) for e in events]
        assert kinds[:3] == [ConnAckReceived, SubAckReceived, PubAckReceived]
        reply = events[-1]
        assert isinstance(reply, PublishReceived) and reply.topic.startswith("$dps/registrations/res/200/")
        assert json.loads(reply.payload)["status"] == "assigned"
        assert client.records() == [_APPLICATION_DATA]  # all four answers in one record

        before = len(client.received)
        client.write(session.disconnect())
        client.sock.settimeout(10)
        while client._receive():  # until the server closes the socket
            pass
        assert client.received[before:] == b""  # no close_notify alert, just the end of the stream
        client.sock.close()
    finally:
        assert server.stop() == 0
