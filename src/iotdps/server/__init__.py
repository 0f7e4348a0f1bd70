"""Transports, side by side: listeners and the TLS seam (listen, tls, tls_transport), MQTT
connections (mqtt_conn, ws_bridge), the DPS device edges (dps_mqtt, dps_http, dps_replies,
dps_runner), the hub's MQTT endpoint and live connections (hub_mqtt, hub_live) and its control
socket (control), the allocation webhook client (webhook_http).

Never imports api/ or web/: iotdps.wiring wires a node together.
"""

__all__: list[str] = []
