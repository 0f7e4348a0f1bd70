"""The composition root: builds a running node from its configuration.

`node.Server` is what `iotdps up` runs (store, services, listeners, management API, console,
hubs); `hub.Hubs` assembles the hub's domain pieces with its transports. This is the one
package that imports the adapters (server, api, web, store) together; nothing imports it but
the CLI and tests.
"""

__all__: list[str] = []
