"""The minimal IoT hub's domain: device registry records, twin, telemetry, methods, C2D.

No sockets here: the hub's MQTT endpoint and control socket are transports in `iotdps.server`,
and this package reaches live connections only through `iotdps.ports.LiveDevices`. Import the
module you need (`iotdps.hub.devices`, `iotdps.hub.twin`...): this package re-exports nothing,
so importing a record does not import the runtime.
"""

__all__: list[str] = []
