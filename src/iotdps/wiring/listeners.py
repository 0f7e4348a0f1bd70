"""Which setting moves each listener of `iotdps up`, so a bind failure can say how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from iotdps.server.bind_errors import ListenError, ListenerSetting

__all__ = ["CRL", "DPS_HTTPS", "DPS_MQTT", "HUB_MQTT", "HUB_WEBSOCKET", "MANAGEMENT", "METRICS", "listening_as"]

DPS_MQTT = ListenerSetting("the DPS MQTT port", "--mqtt-port", "IOTDPS_MQTT_PORT")
DPS_HTTPS = ListenerSetting("the DPS HTTPS and websocket port", "--https-port", "IOTDPS_HTTPS_PORT")
HUB_MQTT = ListenerSetting("a hub's MQTT port", "--hub-mqtt-port", "IOTDPS_HUB_MQTT_PORT")
HUB_WEBSOCKET = ListenerSetting("a hub's websocket port", "--hub-websocket-port", "IOTDPS_HUB_WEBSOCKET_PORT")
MANAGEMENT = ListenerSetting("the management API port", "--management-port", "IOTDPS_MANAGEMENT_PORT")
METRICS = ListenerSetting("the metrics port", "--metrics-port", "IOTDPS_METRICS_PORT")
CRL = ListenerSetting("the CRL distribution point's port", "--crl-port", "IOTDPS_CRL_PORT")


@contextmanager
def listening_as(setting: ListenerSetting, host: str | None = None, port: int | None = None) -> Iterator[None]:
    """Name the listener in a ListenError raised inside. With `host` and `port`, the block only
    binds them (a site that is not on the TLS seam), and its OSError becomes a ListenError too."""
    try:
        yield
    except ListenError as exc:
        if exc.setting is not None:
            raise
        raise exc.for_listener(setting) from None
    except OSError as exc:
        if host is None or port is None:
            raise
        raise ListenError(host, port, exc, setting) from None
