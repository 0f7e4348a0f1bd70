"""The fleet simulator's network side: register many devices, then optionally send telemetry.

Registration: `concurrency` workers take devices in turn; each registration is a fresh TCP
connection and a full TLS handshake to the DPS endpoint, then CONNECT, SUBSCRIBE, the register
PUBLISH and the answer, exactly as `provision()` does for one real device. The latency of one
registration runs from the TCP connect to the answer.

Telemetry: every registered device connects to its assigned hub (again `concurrency` at a
time), then sends QoS 1 telemetry until `duration` has passed: `rate` messages per second per
device, or with rate 0 as fast as the hub acknowledges, `window` messages in flight per device.
A message counts once the hub has PUBACKed it, i.e. stored it.

Every loop is bounded by a count and a deadline; nothing here retries forever.
`handshake_only` drives the same TLS client through bare handshakes, for a benchmark that
compares against another TLS server (bench/registrations.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotdps.device.credentials import TpmCredential
from iotdps.device.fleet import SimDevice
from iotdps.device.hub_client import HubClient
from iotdps.device.mqtt import ConnectRefused
from iotdps.device.provision import Assignment, ProvisioningFailed, provision
from iotdps.device.provision_https import provision_tpm
from iotdps.errors import IotdpsError, Unauthorized

__all__ = [
    "PhaseStats",
    "SimulationReport",
    "TelemetryStats",
    "error_kind",
    "handshake_only",
    "register_fleet",
    "run_telemetry",
]

Progress = Callable[[int], None]


def error_kind(exc: BaseException) -> str:
    """A short, stable name for what went wrong, for the errors-by-kind table."""
    if isinstance(exc, Unauthorized | ConnectRefused):
        return "refused"
    if isinstance(exc, ProvisioningFailed):
        return "provisioning failed"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError | OSError):
        return "connection"
    if isinstance(exc, IotdpsError):
        return type(exc).__name__
    return f"unexpected {type(exc).__name__}"


def _percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(p / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class PhaseStats:
    """Registrations (or bare handshakes): counts, latencies in seconds, errors by kind."""

    attempted: int = 0
    succeeded: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        return _percentile(sorted(self.latencies), p)

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.attempted - self.succeeded,
            "seconds": round(self.elapsed, 4),
            "per_second": round(self.rate, 2),
            "p50_ms": round(_percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(_percentile(ordered, 99) * 1000, 2),
            "errors": dict(sorted(self.errors.items())),
        }


@dataclass
class TelemetryStats:
    devices: int = 0
    connected: int = 0
    connect_seconds: float = 0.0
    connect_errors: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "connected": self.connected,
            "connect_seconds": round(self.connect_seconds, 4),
            "connect_errors": dict(sorted(self.connect_errors.items())),
            "acknowledged": self.acknowledged,
            "seconds": round(self.elapsed, 4),
            "per_second": round(self.rate, 2),
            "errors": dict(sorted(self.errors.items())),
        }


@dataclass
class SimulationReport:
    registration: PhaseStats
    assignments: dict[str, Assignment]
    telemetry: TelemetryStats | None = None

    def to_json(self) -> dict[str, Any]:
        hubs = Counter(a.assigned_hub for a in self.assignments.values())
        return {
            "registration": self.registration.to_json(),
            "hubs": dict(sorted(hubs.items())),
            "telemetry": self.telemetry.to_json() if self.telemetry is not None else None,
        }


async def _pool(count: int, concurrency: int, job: Callable[[int], Any]) -> None:
    """Run job(0..count-1) with at most `concurrency` at a time."""
    indices: Iterator[int] = iter(range(count))

    async def worker() -> None:
        for i in indices:  # shared iterator: each index is taken once
            await job(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))


async def register_fleet(
    host: str,
    port: int,
    id_scope: str,
    devices: Sequence[SimDevice],
    *,
    concurrency: int = 10,
    timeout: float = 30.0,
    on_progress: Progress | None = None,
    https_port: int = 443,
    csrs: Sequence[str] | None = None,
) -> tuple[PhaseStats, dict[str, Assignment]]:
    """Register every device once; returns the stats and the assignments of those that made it.
    TPM devices register over HTTPS on `https_port` (TPM is not offered over MQTT). `csrs`: one
    CSR (base64 DER) per device, sent for certificate issuance (bench --csr)."""
    stats = PhaseStats()
    assignments: dict[str, Assignment] = {}

    async def one(i: int) -> None:
        device = devices[i]
        stats.attempted += 1
        start = time.perf_counter()
        try:
            if isinstance(device.credential, TpmCredential):
                assignment = await provision_tpm(
                    host,
                    id_scope,
                    device.registration_id,
                    device.credential,
                    port=https_port,
                    timeout=timeout,
                    ssl_context=device.context,
                )
            else:
                assignment = await provision(
                    host,
                    id_scope,
                    device.registration_id,
                    device.credential,
                    port=port,
                    timeout=timeout,
                    ssl_context=device.context,
                    csr=csrs[i] if csrs is not None else None,
                )
        except Exception as exc:  # counted by kind; one device's failure is not the run's
            stats.errors[error_kind(exc)] += 1
        else:
            stats.latencies.append(time.perf_counter() - start)
            stats.succeeded += 1
            assignments[device.registration_id] = assignment
        if on_progress is not None:
            on_progress(1)

    begin = time.perf_counter()
    await _pool(len(devices), concurrency, one)
    stats.elapsed = time.perf_counter() - begin
    return stats, assignments


async def handshake_only(
    host: str,
    port: int,
    contexts: Sequence[ssl.SSLContext],
    count: int,
    *,
    concurrency: int = 10,
    server_hostname: str | None = None,
    timeout: float = 30.0,
    on_progress: Progress | None = None,
) -> PhaseStats:
    """`count` bare TLS handshakes (connect, handshake, close), cycling through `contexts`."""
    stats = PhaseStats()
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        stats.attempted += 1
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    asyncio.Protocol,
                    host,
                    port,
                    ssl=contexts[i % len(contexts)],
                    server_hostname=server_hostname or host,
                )
            transport.abort()  # no close_notify exchange: the handshake is what we measure
        except Exception as exc:
            stats.errors[error_kind(exc)] += 1
        else:
            stats.latencies.append(time.perf_counter() - start)
            stats.succeeded += 1
        if on_progress is not None:
            on_progress(1)

    begin = time.perf_counter()
    await _pool(count, concurrency, one)
    stats.elapsed = time.perf_counter() - begin
    return stats


async def connect_fleet(
    devices: Sequence[SimDevice],
    assignments: dict[str, Assignment],
    *,
    port: int,
    concurrency: int,
    stats: TelemetryStats,
    timeout: float = 30.0,
    keepalive: int = 120,
    on_progress: Progress | None = None,
) -> list[HubClient]:
    """Connect every assigned device to its hub; the clients that made it."""
    ready = [d for d in devices if d.registration_id in assignments]
    clients: list[HubClient] = []
    stats.devices = len(ready)

    async def one(i: int) -> None:
        device = ready[i]
        assignment = assignments[device.registration_id]
        client = HubClient(
            assignment.assigned_hub,
            assignment.device_id,
            device.credential,
            port=port,
            keepalive=keepalive,
            ssl_context=device.context,
        )
        try:
            await client.connect(timeout=timeout)
        except Exception as exc:
            stats.connect_errors[error_kind(exc)] += 1
            await client.close()
        else:
            clients.append(client)
        if on_progress is not None:
            on_progress(1)

    begin = time.perf_counter()
    await _pool(len(ready), concurrency, one)
    stats.connect_seconds = time.perf_counter() - begin
    stats.connected = len(clients)
    return clients


async def send_telemetry(
    clients: Sequence[HubClient],
    stats: TelemetryStats,
    *,
    rate: float,
    duration: float,
    window: int = 16,
    body_size: int = 64,
    max_messages: int = 10_000_000,
    timeout: float = 30.0,
    on_progress: Progress | None = None,
) -> None:
    """Every client sends until `duration` has passed (or `max_messages` in all were sent)."""
    body = (b'{"t":21.5,"pad":"' + b"x" * max(0, body_size - 20) + b'"}')[: max(body_size, 2)]
    budget = [max_messages]
    begin = time.perf_counter()
    deadline = begin + duration

    async def device(client: HubClient) -> None:
        interval = 1.0 / rate if rate > 0 else 0.0
        next_at = time.perf_counter()
        while time.perf_counter() < deadline and budget[0] > 0:
            batch = 1 if rate > 0 else min(window, budget[0])
            budget[0] -= batch
            try:
                await client.send_telemetry_many([body] * batch, timeout=timeout)
            except Exception as exc:
                stats.errors[error_kind(exc)] += 1
                return  # a connection that failed once is done for this run
            stats.acknowledged += batch
            if on_progress is not None:
                on_progress(batch)
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))

    await asyncio.gather(*(device(c) for c in clients))
    stats.elapsed = time.perf_counter() - begin


async def run_telemetry(
    devices: Sequence[SimDevice],
    assignments: dict[str, Assignment],
    *,
    port: int,
    concurrency: int,
    rate: float,
    duration: float,
    window: int = 16,
    on_connect_progress: Progress | None = None,
    on_progress: Progress | None = None,
) -> TelemetryStats:
    """Connect the registered devices to their hubs, send telemetry for `duration`, disconnect."""
    stats = TelemetryStats()
    clients = await connect_fleet(
        devices, assignments, port=port, concurrency=concurrency, stats=stats, on_progress=on_connect_progress
    )
    try:
        await send_telemetry(clients, stats, rate=rate, duration=duration, window=window, on_progress=on_progress)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return stats
