"""Errors raised by the MQTT codec and session machines."""

from __future__ import annotations

from iotdps.errors import InvalidInput, IotdpsError

__all__ = ["InvalidDeviceRequest", "MqttProtocolError", "MqttStateError"]


class MqttProtocolError(InvalidInput):
    """The peer sent bytes that are not valid MQTT 3.1.1 (or not what we accept).

    `connack_code` is set when MQTT asks the server to answer with a CONNACK before closing
    (1: unacceptable protocol level); otherwise the connection is simply dropped.
    """

    def __init__(self, message: str, *, connack_code: int | None = None) -> None:
        super().__init__(message)
        self.connack_code = connack_code


class MqttStateError(IotdpsError):
    """The application asked a session for something its state does not allow
    (publishing on a closed session, accepting twice, no free packet id)."""


class InvalidDeviceRequest(InvalidInput):
    """A username, topic or request body from a device that does not have the Azure shape
    (azure-wire-protocol.md sections 1 and 8). The message says what is wrong, never a secret."""
