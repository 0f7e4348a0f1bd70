"""`iotdps up`: the one place where the adapters are wired together (the composition root).

One process, one asyncio loop:
- MQTT over TLS on every configured (address, 8883): DPS and hub CONNECTs share a listener
  and are told apart by their username (azure-wire-protocol.md 9.3 option c);
- HTTPS on the DPS address's 443: the DPS device REST API and MQTT over websockets
  (`/$iothub/websocket`); hub addresses get the websocket route on their own 443;
- the management API and the hub's local control socket, when those packages are present.

Trust: the TLS seam's anchors (verified CAs, individual X.509 enrollments) are reloaded
whenever this process changes them and, for changes made elsewhere (the CLI on the same
data dir, another node on PostgreSQL), by a watcher every few seconds. A device whose chain
OpenSSL could not verify triggers an immediate reload before it is refused, so a newly
verified CA or a new enrollment is accepted on the next handshake, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from cryptography import x509

from iotdps.access import HUB_RIGHTS, AccessPolicies
from iotdps.api import ServiceAbout
from iotdps.api.app import build_management_app
from iotdps.attestation.x509 import evidence_from_chain
from iotdps.audit import Actor, record
from iotdps.audit.retention import prune as prune_audit
from iotdps.config import Config, is_unspecified
from iotdps.evidence import PeerIdentity, X509Evidence
from iotdps.issuance.issuers import IssuerCache
from iotdps.issuance.sealing import SEALING_KEY_FILE, SealingKey
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.ports import Store
from iotdps.protocols.mqtt.hub import classify_username
from iotdps.protocols.mqtt.packets import Connect
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.provisioning.trust import current_revocations, trust_anchors
from iotdps.server.cert_files import CertificateFiles, CertificateReloader, load_pair
from iotdps.server.control import control_socket_path
from iotdps.server.crl_http import build_crl_app
from iotdps.server.datadir_lock import DataDirLock
from iotdps.server.dps_http import build_device_app
from iotdps.server.dps_mqtt import route_dps
from iotdps.server.dps_runner import RegistrationRunner
from iotdps.server.identity import ServerFiles, ensure_server_identity
from iotdps.server.listen import TlsSite, http_runner, start_tls_server
from iotdps.server.metrics_http import add_metrics_route, build_metrics_app, ensure_metrics_token
from iotdps.server.mqtt_conn import CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE, MqttConnection, MqttEndpoint
from iotdps.server.ops_http import add_ops_routes
from iotdps.server.peers import peer_text
from iotdps.server.ratelimit import TokenBucket
from iotdps.server.tls import ServerTls
from iotdps.server.webhook_http import AiohttpWebhookTransport
from iotdps.server.ws_bridge import WEBSOCKET_PATH, serve_mqtt_websocket
from iotdps.store import open_store
from iotdps.store.health import check_store
from iotdps.store.sql.cluster import cluster_db
from iotdps.timestamps import utcnow
from iotdps.web import Console
from iotdps.wiring import listeners, shared_rotation
from iotdps.wiring.cluster import Cluster, node_id_for
from iotdps.wiring.hub import Hubs
from iotdps.wiring.hub_leases import HubLeases
from iotdps.wiring.telemetry import Telemetry

__all__ = ["HubRouter", "Server", "StartupInfo", "new_id_scope"]

# The audit trail's actor for what the server writes from its own configuration at startup.
_STARTUP = Actor("system", "startup-config")
# ... and for what its audit retention removes; how often it looks.
_RETENTION = Actor("system", "audit-retention")
AUDIT_PRUNE_SECONDS = 24 * 3600

log = logging.getLogger("iotdps.server")

TRUST_POLL_SECONDS = 3.0
# How often the server certificate files are looked at (server/cert_files.py).
CERT_POLL_SECONDS = 2.0
# How often a node on a shared store looks for a step of a server CA rotation.
ROTATION_POLL_S = 3.0
# At most one on-demand trust reload per this many seconds, so a flood of untrusted devices
# cannot turn every handshake into a store query.
_TRUST_RELOAD_MIN_INTERVAL = 0.2
SHUTDOWN_GRACE_SECONDS = 10.0


def new_id_scope() -> str:
    """An ID scope shaped like Azure's (`0ne` + 8 upper-case hex digits)."""
    return "0ne" + secrets.token_hex(4).upper()


class HubRouter(Protocol):
    """What the hubs offer the shared listener (see iotdps.wiring.hub.Hubs.route)."""

    async def route(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int: ...


@dataclass
class StartupInfo:
    id_scope: str
    dps_host: str
    endpoints: list[str]
    server_ca: Path | None  # None: the operator's own certificate ([tls] cert_file) is presented
    first_start: bool
    server_files: ServerFiles | None
    notes: list[str] = field(default_factory=list)
    connection_strings: dict[str, str] = field(default_factory=dict)


class Server:
    def __init__(self, config: Config, *, hub: HubRouter | None = None) -> None:
        """`hub`: a router for hub CONNECTs supplied by the caller (tests); by default the
        server runs its own Hubs for the configured hubs."""
        self.config = config
        self.hub = hub
        self.hubs: Hubs | None = None
        self.cluster: Cluster | None = None
        self.telemetry: Telemetry | None = None
        self.store: Store | None = None
        self.service: ProvisioningService | None = None
        self.runner: RegistrationRunner | None = None
        self.tls: ServerTls | None = None
        self._anchor_prints: frozenset[str] = frozenset()
        self._anchors: list[x509.Certificate] = []
        self._last_reload = 0.0
        self._expired_crls: frozenset[str] = frozenset()
        self._reload_lock = asyncio.Lock()
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self._connections: set[MqttConnection] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._webhook: AiohttpWebhookTransport | None = None
        self._stopped = asyncio.Event()
        self._started = False
        self.sealing: SealingKey | None = None  # seals issuing-CA secrets (issue 18)
        self.issuers: IssuerCache | None = None
        self._data_dir_lock = DataDirLock(config.data_dir)
        self._leases: HubLeases | None = None

    # ------------------------------------------------------------------ start

    async def start(self) -> StartupInfo:
        config = self.config
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Before anything in the directory is touched: a second server would take over
        # control.sock and leave the first unreachable (server/datadir_lock.py).
        self._data_dir_lock.acquire()
        first_start = not (config.data_dir / "tls" / "server-ca.pem").exists()
        # Your own certificate (the [tls] files) is checked before anything else starts: a bad
        # pair stops the start, in words. Otherwise the pair is the service's CA's, below.
        own_files: CertificateFiles | None = None
        if config.tls.own_certificate:
            own_files = CertificateFiles.with_env_passphrase(Path(config.tls.cert_file), Path(config.tls.key_file))
            load_pair(own_files)
        metrics_token = ensure_metrics_token(config.metrics_token_file) if config.metrics.require_auth else None
        self.store = await open_store(
            config.database_dsn, background_checkpoints=True, refusal_limit=config.limits.refusal_history
        )
        # On a shared (PostgreSQL) database the identity is the service's, not this node's.
        shared = cluster_db(self.store)
        server_files: ServerFiles | None
        if shared is not None:
            server_files, policies = await shared_rotation.join(
                shared, config.data_dir, config.server_names(), ca_pkcs11_uri=config.tls.ca_pkcs11_uri
            )
        else:
            server_files = (
                None
                if own_files
                else ensure_server_identity(
                    config.data_dir, config.server_names(), ca_pkcs11_uri=config.tls.ca_pkcs11_uri
                )
            )
            policies = AccessPolicies.load_or_create(config.data_dir)
        if own_files is not None:
            server_files = None  # the service's CA is not what this node presents
        cert_files = own_files
        if server_files is not None:
            cert_files = CertificateFiles(server_files.chain_pem, server_files.key_pem)
        assert cert_files is not None
        chain, key = load_pair(cert_files)
        settings = await self._ensure_settings(self.store)
        node_id = node_id_for(config.cluster)
        self._leases = HubLeases(self.store, config.effective_hubs, implicit=not config.hubs, node=node_id, now=utcnow)
        unserved = await self._leases.claim()
        hub_hosts = [h.host_name for h in config.effective_hubs]
        if self.hub is None:
            self.hubs = Hubs(self.store, hub_hosts, token_max_lifetime=config.auth.device_token_max_lifetime)
            await self.hubs.start()
            self.hub = self.hubs
            if shared is not None and config.cluster.nats_url:
                self.cluster = Cluster(config.cluster, shared, node_id)
                await self.cluster.start(self.hubs)
            self.telemetry = Telemetry(
                config, self.store, self.hubs, self.cluster.nats if self.cluster is not None else None
            )
            await self.telemetry.start()
        self._webhook = AiohttpWebhookTransport(destinations=config.allocation.webhook_destinations)
        self.sealing = SealingKey.load_or_create(config.data_dir / SEALING_KEY_FILE)
        self.issuers = IssuerCache(self.sealing)
        if self.hubs is not None:
            self.hubs.use_issuers(  # certificate renewal over the hub (issue 18)
                self.issuers,
                per_minute=config.limits.certificate_requests_per_minute,
                burst=config.limits.certificate_request_burst,
            )
        self.service = ProvisioningService(
            self.store,
            webhook=self._webhook,
            token_max_lifetime=config.auth.device_token_max_lifetime,
            issuers=self.issuers,
            # A live hub connection follows its device's new identity (issue 18).
            identity_changed=self.hubs.cloud.recheck if self.hubs is not None else None,
        )
        self.runner = RegistrationRunner(
            self.service,
            TokenBucket(config.limits.registrations_per_second, config.limits.registration_burst, time.monotonic()),
            time.monotonic,
            retry_after=config.limits.retry_after_seconds,
        )
        anchors = await trust_anchors(self.store)
        self.tls = ServerTls(chain, key, anchors=anchors)
        # New handshakes follow the files: a renewed own certificate, or `iotdps tls activate`.
        reloader = CertificateReloader(self.tls, lambda: cert_files)
        self._anchor_prints = frozenset(sha256_thumbprint(c) for c in anchors)
        self._anchors = anchors
        await self._reload_revocations()
        endpoints = await self._listen()
        endpoints.append(f"https://{config.management.bind}:{config.management.port} (management API)")
        endpoints.append(f"https://{config.management.bind}:{config.management.port}/console/ (console)")
        console = Console(policies)
        management = build_management_app(
            self.store,
            self.service,
            policies,
            host_names=config.server_names(),
            on_trust_changed=self._trust_changed,
            hub=self.hubs.cloud if self.hubs is not None else None,
            hub_hosts=hub_hosts if self.hubs is not None else (),
            webhook_destinations=config.allocation.webhook_destinations,
            about=ServiceAbout(config.dps.host_name, tuple(endpoints)),
            sessions=console.sessions,
            sealing=self.sealing,
        )
        console.mount(management)
        add_ops_routes(management, self.readiness)
        add_metrics_route(management, metrics_token)
        # The hub service API is reached at each hub's host name: serve the management port on
        # every hub address too (unless the management API already listens on all addresses).
        extra = [] if is_unspecified(config.management.bind) else [h.bind for h in config.effective_hubs]
        extra = [address for address in extra if not is_unspecified(address)]
        with listeners.listening_as(listeners.MANAGEMENT):
            await self._serve_app(management, config.management.bind, config.management.port, extra_hosts=extra)
        if config.metrics.port:
            with listeners.listening_as(listeners.METRICS):
                await self._serve_app(build_metrics_app(metrics_token), config.metrics_bind, config.metrics.port)
            endpoints.append(f"https://{config.metrics_bind}:{config.metrics.port}/metrics (Prometheus)")
        if self.hubs is not None:
            await self._serve_control(self.hubs, endpoints)
        if config.crl.port:
            crl_runner = http_runner(
                build_crl_app(self.store), request_timeout=config.limits.connect_timeout, shutdown_timeout=2.0
            )
            await crl_runner.setup()
            self._runners.append(crl_runner)
            # Plain HTTP (aiohttp's own site, not the TLS seam): its bind error is named here.
            with listeners.listening_as(listeners.CRL, config.crl.bind, config.crl.port):
                await web.TCPSite(crl_runner, config.crl.bind, config.crl.port).start()
            endpoints.append(f"http://{config.crl.bind}:{config.crl.port}/crl/<CA name>.crl (CRL distribution point)")
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_trust()))
        self._tasks.append(asyncio.get_running_loop().create_task(reloader.run(self._stopped, CERT_POLL_SECONDS)))
        if shared is not None:
            follower = shared_rotation.RotationFollower(shared, config.data_dir)
            self._tasks.append(asyncio.get_running_loop().create_task(follower.run(self._stopped, ROTATION_POLL_S)))
        self._leases.start_renewing()
        for hub in unserved:
            log.warning("%s", hub.warning(), extra={"event": "hub_unserved", "hub": hub.host_name})
        if self.config.audit.retention_days:
            self._tasks.append(asyncio.get_running_loop().create_task(self._keep_audit_retention()))
        notes = []
        if metrics_token is not None:
            notes.append(f"/metrics asks for the bearer token in {config.metrics_token_file}")
        else:
            log.warning("/metrics answers without credentials (metrics.require_auth = false)")
        if config.tls.own_certificate:
            notes.append(
                f"The server presents {config.tls.cert_file} ([tls] cert_file); devices need the CA that issued it."
            )
        if server_files is not None and server_files.passphrase_file is not None:
            notes.append(
                f"The server CA key's passphrase was generated into {server_files.passphrase_file}; move it to a "
                "secret store and pass it as IOTDPS_SERVER_CA_PASSPHRASE."
            )
        self._started = True
        info = StartupInfo(
            settings.id_scope,
            config.dps.host_name,
            endpoints,
            server_files.ca_pem if server_files is not None else None,
            first_start,
            server_files,
            notes,
        )
        # Shown once: the keys stay in access-policies.json (0600) and are never printed again.
        # Hub policies are shown with each hub's host name (what the hub SDK must address).
        for name in policies.fresh_names:
            if policies.get(name).rights & HUB_RIGHTS:
                for hub_host in hub_hosts:
                    label = name if len(hub_hosts) == 1 else f"{name} ({hub_host})"
                    info.connection_strings[label] = policies.connection_string(
                        name, f"{hub_host}:{config.management.port}"
                    )
            else:
                info.connection_strings[name] = policies.connection_string(
                    name, f"{config.management_host}:{config.management.port}"
                )
        return info

    async def _ensure_settings(self, store: Store) -> ServiceSettings:
        async with store.begin() as uow:
            settings = await uow.settings.get()
            if settings is None:
                settings = await uow.settings.put(ServiceSettings(new_id_scope()))
                await record(uow, _STARTUP, "settings.update", "settings", after=settings)
        return settings

    async def _listen(self) -> list[str]:
        config = self.config
        assert self.tls is not None and self.runner is not None
        endpoints: list[str] = []
        handshake = config.tls.handshake_timeout

        mqtt_addrs = {(config.dps.bind, config.dps.mqtt_port)}
        mqtt_addrs |= {(h.bind, h.mqtt_port) for h in config.effective_hubs}
        for host, port in sorted(mqtt_addrs):
            dps = (host, port) == (config.dps.bind, config.dps.mqtt_port)
            with listeners.listening_as(listeners.DPS_MQTT if dps else listeners.HUB_MQTT):
                self._servers.append(
                    await start_tls_server(host, port, self.tls, self._new_connection, handshake_timeout=handshake)
                )
            endpoints.append(f"mqtts://{host}:{port}")

        limits = config.limits
        device_app = build_device_app(
            self.runner,
            self._new_connection,
            self.refreshed_peer,
            max_frame_size=limits.max_packet_size,
            body_timeout=limits.connect_timeout,
        )
        with listeners.listening_as(listeners.DPS_HTTPS):
            await self._serve_app(device_app, config.dps.bind, config.dps.https_port)
        endpoints.append(f"https://{config.dps.bind}:{config.dps.https_port} (DPS REST, MQTT over websockets)")
        ws_addrs = {(h.bind, h.websocket_port) for h in config.effective_hubs} - {
            (config.dps.bind, config.dps.https_port)
        }
        for host, port in sorted(ws_addrs):
            with listeners.listening_as(listeners.HUB_WEBSOCKET):
                await self._serve_app(self._websocket_app(), host, port)
            endpoints.append(f"wss://{host}:{port}{WEBSOCKET_PATH}")
        return endpoints

    def _websocket_app(self) -> web.Application:
        app = web.Application()

        async def websocket(request: web.Request) -> web.StreamResponse:
            return await serve_mqtt_websocket(
                request, self._new_connection, max_frame_size=self.config.limits.max_packet_size
            )

        app.router.add_get(WEBSOCKET_PATH, websocket)
        return app

    async def _serve_app(self, app: web.Application, host: str, port: int, *, extra_hosts: Sequence[str] = ()) -> None:
        assert self.tls is not None
        runner = http_runner(app, request_timeout=self.config.limits.connect_timeout, shutdown_timeout=2.0)
        await runner.setup()
        self._runners.append(runner)  # before binding: a site that cannot bind still leaves it to clean up
        for address in dict.fromkeys([host, *extra_hosts]):
            site = TlsSite(runner, address, port, self.tls, handshake_timeout=self.config.tls.handshake_timeout)
            await site.start()

    async def _serve_control(self, hubs: Hubs, endpoints: Sequence[str]) -> None:
        """The CLI's way into this process (method invoke, C2D, desired patches): HTTP on a
        unix socket in the data dir, 0600, so only the owner of the data dir can use it."""
        path = control_socket_path(self.config.data_dir)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a crash; a live server would still hold its listener
        runner = http_runner(
            hubs.control_app(endpoints), request_timeout=self.config.limits.connect_timeout, shutdown_timeout=2.0
        )
        await runner.setup()
        old_umask = os.umask(0o177)
        try:
            site = web.UnixSite(runner, str(path))
            await site.start()
        finally:
            os.umask(old_umask)
        path.chmod(0o600)
        self._runners.append(runner)

    async def readiness(self) -> dict[str, bool]:
        """For /readyz (server/ops_http.py): listeners bound and serving, the store answering,
        its schema at this code's revision."""
        listening = self._started and not self._stopped.is_set() and all(s.is_serving() for s in self._servers)
        health = await check_store(self.store) if self.store is not None else None
        return {
            "listeners": listening,
            "store": health is not None and health.reachable,
            "migrations": health is not None and health.schema_current,
        }

    # ------------------------------------------------------------------ connections

    def _new_connection(self) -> MqttConnection:
        limits = self.config.limits
        conn = MqttConnection(
            self._route,
            max_packet_size=limits.max_packet_size,
            connect_timeout=limits.connect_timeout,
            on_closed=self._connections.discard,
        )
        self._connections.add(conn)
        return conn

    async def _route(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        if len(self._connections) > self.config.limits.max_connections:
            # CONNACK 3 "server unavailable": the SDKs treat it as transient and retry.
            log.warning(
                "connection limit %d reached; refusing %s", self.config.limits.max_connections, peer_text(conn.peername)
            )
            return CONNACK_SERVER_UNAVAILABLE
        kind = classify_username(connect.username or "")
        if kind == "dps":
            assert self.runner is not None
            await self._refresh_peer(conn)
            return await route_dps(self.runner, conn, connect)
        if kind == "hub" and self.hub is not None:
            return await self.hub.route(conn, connect)
        assert self.runner is not None
        self.runner.refused_log(
            "BAD_USERNAME",
            "CONNECT from %s refused: username is neither a DPS nor a hub username",
            peer_text(conn.peername),
        )
        return CONNACK_NOT_AUTHORIZED

    async def _refresh_peer(self, conn: MqttConnection) -> None:
        if conn.peer is not None:
            conn.peer = await self.refreshed_peer(conn.peer)

    async def refreshed_peer(self, peer: PeerIdentity) -> PeerIdentity:
        """If the TLS layer did not verify the chain, our anchors may be older than the store
        (a CA verified or a device enrolled a moment ago, maybe by another process): reload
        them and verify the presented chain against the current set, under the same chain
        policy (iotdps.pki.chain_policy), so this path can never admit what the handshake's
        policy refuses. Only this failure path verifies in Python; a chain OpenSSL verified is
        never re-verified. Used by the MQTT route and the HTTPS device API alike."""
        if not peer.chain or peer.verified_chain is not None:
            return peer
        anchors = await self.reload_trust(on_demand=True, since=peer.handshake_at)
        assert self.tls is not None
        evidence: X509Evidence = evidence_from_chain(list(peer.chain), anchors, utcnow(), self.tls.revocations)
        if evidence.verified is not None:
            return replace(peer, verified_chain=evidence.verified, verify_errors=())
        return peer

    # ------------------------------------------------------------------ trust

    async def reload_trust(self, *, on_demand: bool = False, since: float | None = None) -> list[x509.Certificate]:
        """Reload the TLS anchors from the store (swapping the TLS context when they changed)
        and return them. On-demand reloads are spaced at least _TRUST_RELOAD_MIN_INTERVAL apart:
        a caller waits for its turn rather than being skipped, so an untrusted flood costs at
        most a few store reads a second while a just-enrolled device is still let in.

        `since` (time.monotonic()): the caller needs anchors read from the store after then,
        e.g. after its device's handshake failed against the old ones; a reload that started
        since answers it without another. Ten devices of a CA verified a moment ago that
        arrive together share one reload instead of waiting 0.2 s each in turn."""
        assert self.store is not None and self.tls is not None
        asked = since if since is not None else time.monotonic()
        async with self._reload_lock:
            if on_demand and self._last_reload >= asked:
                return self._anchors
            wait = self._last_reload + _TRUST_RELOAD_MIN_INTERVAL - time.monotonic()
            if on_demand and wait > 0:
                await asyncio.sleep(wait)
            self._last_reload = time.monotonic()
            anchors = await trust_anchors(self.store)
            self._anchors = anchors
            prints = frozenset(sha256_thumbprint(c) for c in anchors)
            if prints != self._anchor_prints:
                self.tls.update_anchors(anchors)
                self._anchor_prints = prints
                log.info("TLS trust anchors reloaded: %d certificates", len(anchors))
            if not on_demand:
                await self._reload_revocations()
            return anchors

    async def _reload_revocations(self) -> None:
        """The CRLs the store holds, enforced from the next handshake on, and on the hub's live
        connections now (a revoked device is dropped here, within the trust poll at worst)."""
        assert self.store is not None and self.tls is not None
        revoked, expired = await current_revocations(self.store, utcnow())
        for name in expired:
            if name not in self._expired_crls:
                log.warning("the CRL of CA %s is past its nextUpdate; its entries are still enforced", name)
        self._expired_crls = frozenset(expired)
        if revoked.fingerprint == self.tls.revocations.fingerprint:
            return
        self.tls.update_revocations(revoked)
        log.info("revocations reloaded: %d certificates", len(revoked))
        if self.hubs is not None:
            dropped = self.hubs.connections.enforce_revocations(revoked)
            if dropped:
                log.warning("dropped %d hub connections of revoked devices", dropped)

    async def _trust_changed(self) -> None:
        await self.reload_trust()

    async def _watch_trust(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), TRUST_POLL_SECONDS)
            if self._stopped.is_set():
                break
            try:
                await self.reload_trust()
            except Exception:  # the store may be briefly unavailable; try again next round
                log.warning("reloading TLS trust anchors failed", exc_info=True)

    async def _keep_audit_retention(self) -> None:
        """Prune the audit trail to `[audit] retention_days` now and once a day; each prune
        leaves its `audit.pruned` entry (iotdps.audit.retention)."""
        assert self.store is not None
        while not self._stopped.is_set():
            try:
                await prune_audit(
                    self.store, older_than_days=self.config.audit.retention_days, now=utcnow(), actor=_RETENTION
                )
            except Exception:  # the store may be briefly unavailable; try again next round
                log.warning("pruning the audit trail failed", exc_info=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), AUDIT_PRUNE_SECONDS)

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Graceful: stop accepting, let registrations in flight finish (bounded), close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for server in self._servers:
            server.close()
        if self.runner is not None:
            await self.runner.drain(SHUTDOWN_GRACE_SECONDS)
        if self.cluster is not None:
            await self.cluster.leave()
        if self.hubs is not None:
            # Flushes acknowledged telemetry and closes device connections; before the
            # listeners' wait_closed, which on 3.11 waits for every open connection.
            await self.hubs.stop()
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        for conn in list(self._connections):
            conn.close("server shutting down")
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        for runner in self._runners:
            await runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._webhook is not None:
            await self._webhook.close()
        if self.issuers is not None:
            await self.issuers.close()  # CFSSL sessions
        if self._leases is not None:
            await self._leases.stop()
        if self.store is not None:
            await self.store.close()
        self._data_dir_lock.release()


def device_snippet(info: StartupInfo, registration_id: str = "my-device") -> str:
    """A ready-to-run provisioning example with the official SDK, for the first-start banner."""
    return f'''\
from azure.iot.device import ProvisioningDeviceClient

client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host="{info.dps_host}",
    registration_id="{registration_id}",
    id_scope="{info.id_scope}",
    symmetric_key=open("device.key").read().strip(),
    server_verification_cert=open("{info.server_ca or "server-ca.pem"}").read(),
)
result = client.register()
print(result.status, result.registration_state.assigned_hub, result.registration_state.device_id)
'''
