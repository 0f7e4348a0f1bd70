"""Prometheus metrics: the one place that names them, on the floor so any layer may count.

Adapters and the core call the small functions below; nothing else imports prometheus_client.
The registry is our own (not prometheus_client's global one), so the exposition holds exactly
these families plus the process collector, and tests can read values from it.

Label rules (Prometheus conventions, and what keeps the series count bounded):
- never a registration id, device id, peer address or anything else a device chooses;
- every label value comes from a closed set written in this module or in the code (refusal
  reasons, attestation types, transports, outcomes), or from configuration (hub host names,
  listener addresses), or is folded into a bounded set here (`handshake_failure`'s reasons).

Values that already exist elsewhere (connections open per listener, devices connected per
hub) are read when scraped, through `Sampled`, and cost the hot path nothing.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "Sampled",
    "exposition",
    "handshake_failure",
    "hub_operation",
    "rate_limited",
    "refusal",
    "registration",
    "sample",
    "store_unit",
    "telemetry",
    "track_hubs",
    "track_listener",
    "webhook_call",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

_REGISTRATIONS = Counter(
    "iotdps_registrations",
    "Device registrations answered, by outcome (assigned, failed, disabled, refused), attestation and transport.",
    ("outcome", "attestation", "transport"),
    registry=REGISTRY,
)
# Built-in allocations finish in milliseconds; a custom-allocation webhook may take seconds.
_REGISTRATION_SECONDS = Histogram(
    "iotdps_registration_duration_seconds",
    "Time from a register request to its outcome, inside the service (not the TLS handshake).",
    ("attestation", "transport"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
_REFUSALS = Counter(
    "iotdps_refusals",
    "Refused registrations and CONNECTs, by refusal reason (iotdps.refusals).",
    ("reason",),
    registry=REGISTRY,
)
_HANDSHAKE_FAILURES = Counter(
    "iotdps_tls_handshake_failures",
    "TLS handshakes that did not finish, by reason (timeout, peer_closed, or OpenSSL's reason).",
    ("reason",),
    registry=REGISTRY,
)
_RATE_LIMITED = Counter(
    "iotdps_rate_limited",
    "Requests answered 'retry later' by a rate limit, by limit.",
    ("limit",),
    registry=REGISTRY,
)
_TELEMETRY_MESSAGES = Counter(
    "iotdps_hub_telemetry_messages",
    "Device-to-cloud messages stored, by hub.",
    ("hub",),
    registry=REGISTRY,
)
_TELEMETRY_BYTES = Counter(
    "iotdps_hub_telemetry_bytes",
    "Bytes of device-to-cloud message bodies stored, by hub.",
    ("hub",),
    registry=REGISTRY,
)
_HUB_OPERATIONS = Counter(
    "iotdps_hub_operations",
    "Cloud-to-device messages, direct method calls and certificate requests, by hub, kind (c2d, method,"
    " certificate) and outcome.",
    ("hub", "kind", "outcome"),
    registry=REGISTRY,
)
_STORE_UNITS = Histogram(
    "iotdps_store_unit_duration_seconds",
    "Time a unit of work held the store (its statements and commit), by kind (read, write).",
    ("kind",),
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY,
)
_WEBHOOK_SECONDS = Histogram(
    "iotdps_webhook_duration_seconds",
    "Custom-allocation webhook calls, by outcome (ok, http_error, timeout, refused, failed).",
    ("outcome",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)

# Outcomes a registration can have; anything else is a programming error, counted as "other"
# rather than minting a series.
_OUTCOMES = frozenset({"assigned", "assigning", "failed", "disabled", "refused"})
_ATTESTATIONS = frozenset({"x509", "symmetricKey", "tpm", "none"})
_TRANSPORTS = frozenset({"mqtt", "https"})
_WEBHOOK_OUTCOMES = frozenset({"ok", "http_error", "timeout", "refused", "failed"})


def _closed(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


def registration(outcome: str, attestation: str, transport: str, seconds: float) -> None:
    """One register request answered (or refused) after `seconds` in the service."""
    attestation = _closed(attestation, _ATTESTATIONS)
    transport = _closed(transport, _TRANSPORTS)
    _REGISTRATIONS.labels(_closed(outcome, _OUTCOMES), attestation, transport).inc()
    _REGISTRATION_SECONDS.labels(attestation, transport).observe(seconds)


# Refusal reasons are enum values (iotdps.refusals) and a few edge words (BAD_USERNAME); a
# bounded number of distinct ones is kept in case a caller ever passes something free-form.
_MAX_REASONS = 64
_seen_refusals: set[str] = set()


def refusal(reason: str) -> None:
    if reason not in _seen_refusals:
        if len(_seen_refusals) >= _MAX_REASONS or not _REASON_SHAPE.fullmatch(reason):
            reason = "other"
        _seen_refusals.add(reason)
    _REFUSALS.labels(reason).inc()


_REASON_SHAPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_seen_handshake: dict[str, str] = {}


def handshake_failure(reason: str) -> None:
    """`reason`: what the TLS seam logs. Timeouts and hang-ups get one word each; OpenSSL's
    reason strings (a fixed table in the library, e.g. "sslv3 alert bad certificate") become
    snake_case; past `_MAX_REASONS` distinct ones, "other"."""
    label = _seen_handshake.get(reason)
    if label is None:
        label = _handshake_label(reason)
        if len(_seen_handshake) >= _MAX_REASONS:
            label = "other"
        else:
            _seen_handshake[reason] = label
    _HANDSHAKE_FAILURES.labels(label).inc()


def _handshake_label(reason: str) -> str:
    lowered = reason.lower()
    if lowered.startswith("not finished within"):
        return "timeout"
    if "closed the connection" in lowered or "connection was lost" in lowered:
        return "peer_closed"
    first = lowered.split(";", 1)[0]
    return re.sub(r"[^a-z0-9]+", "_", first).strip("_")[:60] or "other"


def rate_limited(limit: str) -> None:
    """`limit`: which limit answered (registrations, ...); a name written in the code."""
    _RATE_LIMITED.labels(limit).inc()


def telemetry(counts: Mapping[str, tuple[int, int]]) -> None:
    """A stored telemetry batch: hub -> (messages, body bytes)."""
    for hub, (messages, size) in counts.items():
        _TELEMETRY_MESSAGES.labels(hub).inc(messages)
        _TELEMETRY_BYTES.labels(hub).inc(size)


def hub_operation(hub: str, kind: str, outcome: str) -> None:
    """A C2D message, method call or certificate request finished; `outcome` is a word from the
    hub's code."""
    _HUB_OPERATIONS.labels(hub, kind, outcome).inc()


def store_unit(kind: str, seconds: float) -> None:
    _STORE_UNITS.labels(kind).observe(seconds)


def webhook_call(outcome: str, seconds: float) -> None:
    _WEBHOOK_SECONDS.labels(_closed(outcome, _WEBHOOK_OUTCOMES)).observe(seconds)


# --------------------------------------------------------------------------- sampled gauges


class Sampled:
    """A gauge family whose values are read when scraped, from live objects held weakly.

    `add(owner, read)`: `read(owner)` returns {label value: number}; an owner that has been
    garbage-collected (a stopped server in a test process) drops out by itself."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._sources: weakref.WeakKeyDictionary[Any, Callable[[Any], Mapping[str, float]]] = (
            weakref.WeakKeyDictionary()
        )

    def add(self, owner: Any, read: Callable[[Any], Mapping[str, float]]) -> None:
        self._sources[owner] = read

    def discard(self, owner: Any) -> None:
        self._sources.pop(owner, None)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        totals: dict[str, float] = {}
        for owner, read in list(self._sources.items()):
            for value, number in read(owner).items():
                totals[value] = totals.get(value, 0.0) + number
        for value, number in sorted(totals.items()):
            family.add_metric([value], number)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])


_LISTENER_CONNECTIONS = Sampled(
    "iotdps_listener_connections", "TLS connections open, by listener (address:port).", "listener"
)
_HUB_DEVICES = Sampled("iotdps_hub_connected_devices", "Devices connected to the hub, by hub.", "hub")
REGISTRY.register(_LISTENER_CONNECTIONS)
REGISTRY.register(_HUB_DEVICES)


# Telemetry routes (server/telemetry_routes.py): what a route that is down holds and has lost.
_ROUTE_BUFFERED = Sampled(
    "iotdps_telemetry_route_buffered", "Messages a telemetry route holds, not yet sent, by route.", "route"
)
_ROUTE_DROPPED = Sampled(
    "iotdps_telemetry_route_dropped",
    "Messages a telemetry route dropped (its buffer was full) since the node started, by route.",
    "route",
)
_ROUTE_DOWN = Sampled("iotdps_telemetry_route_down", "1 while a telemetry route's last send failed, by route.", "route")
for _family in (_ROUTE_BUFFERED, _ROUTE_DROPPED, _ROUTE_DOWN):
    REGISTRY.register(_family)


def track_routes(owner: Any, read: Callable[[Any], Mapping[str, Mapping[str, Any]]]) -> None:
    """`read(owner)`: {route name: {"buffered", "dropped", "down"}} (TelemetryRoutes.status)."""
    _ROUTE_BUFFERED.add(owner, lambda o: {name: float(st["buffered"]) for name, st in read(o).items()})
    _ROUTE_DROPPED.add(owner, lambda o: {name: float(st["dropped"]) for name, st in read(o).items()})
    _ROUTE_DOWN.add(owner, lambda o: {name: 1.0 if st["down"] else 0.0 for name, st in read(o).items()})


def track_listener(owner: Any, read: Callable[[Any], Mapping[str, float]]) -> None:
    _LISTENER_CONNECTIONS.add(owner, read)


def track_hubs(owner: Any, read: Callable[[Any], Mapping[str, float]]) -> None:
    _HUB_DEVICES.add(owner, read)


def exposition() -> bytes:
    """The text exposition format of every metric above."""
    return generate_latest(REGISTRY)


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """The current value of one sample (0.0 if it does not exist yet); for tests and the CLI."""
    value = REGISTRY.get_sample_value(name, dict(labels or {}))
    return value if value is not None else 0.0
