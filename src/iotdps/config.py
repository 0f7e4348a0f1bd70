"""Settings of `iotdps up`: frozen dataclasses, read from a TOML file and `IOTDPS_*` variables.

Precedence: built-in defaults < TOML file < environment < `iotdps up` flags. Every bind
address, host name and port is a setting, so several instances run side by side on different
loopback addresses (the Azure SDK's ports are fixed at 8883 and 443, so instances that serve
the SDK differ by address, not port). The management API listens on the DPS address unless
`[management] bind` says otherwise, so a second instance on another address does not collide
with the first on 127.0.0.1:8443.

`load_config` validates everything and raises one ConfigError listing every problem found,
so an operator fixes a file in one pass instead of one error per restart.

Example file:

    data_dir = "/var/lib/iotdps"
    dsn = "postgresql+asyncpg://iotdps@db/iotdps"   # default: SQLite in data_dir

    [dps]
    host_name = "dps.example.local"    # what devices pass as provisioning_host
    bind = "127.0.0.1"
    mqtt_port = 8883
    https_port = 443                    # MQTT over websockets and the DPS HTTPS API

    [management]
    bind = "127.0.0.1"                  # default: the DPS bind address
    port = 8443

    [metrics]
    port = 9464                         # /metrics on a port of its own too (default 0: only on 8443)
    bind = "127.0.0.1"                  # default: the management address
    require_auth = true                 # a bearer token from token_file (default data_dir/metrics-token)

    [hub_ports]                         # default ports of every hub's listeners; 0: the DPS's
    mqtt = 0
    websocket = 0

    [tls]
    extra_names = ["iotdps.example.local", "10.0.0.5"]
    # cert_file = "/etc/iotdps/server.pem"   # your own chain (leaf first) and key instead of
    # key_file = "/etc/iotdps/server.key"    # the built-in server CA's; reloaded when they change
    # ca_pkcs11_uri = "pkcs11:token=iotdps;object=server-ca"   # the built-in CA's key in a token

    [limits]
    registrations_per_second = 0        # 0 = unlimited; beyond it devices get 429

    [auth]
    device_token_max_lifetime = 86400   # seconds ahead a device SAS token (DPS, hub) may expire

    [allocation]
    webhook_allowlist = ["http://alloc.internal:8080/api", "10.0.0.0/8"]   # besides public HTTPS

    [[hubs]]
    host_name = "hub1.example.local"
    bind = "127.0.0.1"
    weight = 1
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from iotdps.allocation.destinations import WebhookDestinations
from iotdps.errors import ConfigError, InvalidInput
from iotdps.pki.custody import token_key_uri
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME

__all__ = [
    "MAX_DEVICE_TOKEN_LIFETIME",
    "MIN_DEVICE_TOKEN_LIFETIME",
    "AllocationConfig",
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "CrlConfig",
    "DpsConfig",
    "HubConfig",
    "HubPortsConfig",
    "LimitsConfig",
    "ManagementConfig",
    "MetricsConfig",
    "TelemetryConfig",
    "TlsConfig",
    "default_data_dir",
    "is_ip_address",
    "is_unspecified",
    "listener_clashes",
    "load_config",
]


def is_unspecified(address: str) -> bool:
    """True for the all-interfaces addresses, which no client can dial."""
    return address in ("0.0.0.0", "::")  # noqa: S104 (compared, not bound)


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class DpsConfig:
    host_name: str = "localhost"
    bind: str = "127.0.0.1"
    mqtt_port: int = 8883
    https_port: int = 443


@dataclass(frozen=True, slots=True)
class ManagementConfig:
    bind: str = "127.0.0.1"
    port: int = 8443


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where /metrics is served besides the management port, and who may read it.

    The exposition names the hubs and the listeners' addresses, so by default a scraper must
    send `Authorization: Bearer <token>`, the token being the contents of `token_file` (made,
    0600, on first start: Prometheus reads it with `credentials_file`). `require_auth = false`
    serves it to anyone who can reach the port, as before this setting existed."""

    bind: str = ""  # "" = the management address
    port: int = 0  # 0 = no port of its own: /metrics only on the management port
    require_auth: bool = True
    token_file: str = ""  # "" = metrics-token in the data directory


@dataclass(frozen=True, slots=True)
class CrlConfig:
    """The CRL distribution point: plain HTTP (RFC 5280 4.2.1.13; a CDP over HTTPS would need a
    CRL to check its own server certificate), serving GET /crl/<CA name>.crl. Port 0: off."""

    bind: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class HubPortsConfig:
    # The ports a hub listens on when its [[hubs]] entry does not say, and the implicit hub's
    # (the one made when no hub is configured). 0 means "the DPS's port": the hub then shares
    # the DPS listener on the DPS address, and on its own address uses the same number, so a
    # user who moves the DPS off 443 (no privilege to bind it) moves the hubs with it.
    mqtt: int = 0
    websocket: int = 0


@dataclass(frozen=True, slots=True)
class TlsConfig:
    # Names besides the DPS and hub host names (which are always included) to put in the
    # server certificate's SANs; IP literals become IP SANs.
    extra_names: tuple[str, ...] = ()
    handshake_timeout: float = 10.0
    # Bring your own server certificate (a corporate or public CA's): the PEM chain, leaf
    # first, and its PEM key (encrypted: passphrase in IOTDPS_TLS_KEY_PASSPHRASE). Both or
    # neither; when set, the built-in server CA signs nothing the server presents. The files
    # are watched and a new pair is presented without a restart (server/cert_files.py).
    cert_file: str = ""
    key_file: str = ""
    # The built-in server CA's key in a PKCS#11 token (RFC 7512 URI, e.g.
    # "pkcs11:token=iotdps;object=server-ca"): the first start makes the key there, never
    # extractable. Module and PIN: IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN(_FILE), nowhere else.
    # Later the data dir's tls/server-ca.pkcs11 names the key (server/ca_key.py says why).
    ca_pkcs11_uri: str = ""

    @property
    def own_certificate(self) -> bool:
        return bool(self.cert_file or self.key_file)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    registrations_per_second: float = 0.0
    registration_burst: int = 50
    retry_after_seconds: int = 3
    max_packet_size: int = 512 * 1024
    max_connections: int = 50_000
    # Seconds a client has, once its TLS handshake is done, to send its MQTT CONNECT or a whole
    # HTTP request head (and, on the DPS REST API, its body); also how long an idle HTTP
    # keep-alive connection stays open. Nothing about the peer is known until then.
    connect_timeout: float = 30.0
    # Entries kept in the refusal history (`iotdps refusals`); see store._common for the rules.
    refusal_history: int = 10_000
    # Certificate requests one device may make on the hub's credentials topic (renewal, issue
    # 18): a bucket of this many, refilled at this rate (server.hub_credentials).
    certificate_requests_per_minute: float = 1.0
    certificate_request_burst: int = 5


# Bounds of auth.device_token_max_lifetime: below a minute no clock is good enough; above
# 366 days (the management API's own cap) the setting no longer bounds anything.
MIN_DEVICE_TOKEN_LIFETIME = 60
MAX_DEVICE_TOKEN_LIFETIME = 366 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Seconds ahead of now a device SAS token (DPS and hub) may expire; see
    # attestation.symmetric_key for why one day. Below 3600 the SDK's default tokens fail.
    device_token_max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME


@dataclass(frozen=True, slots=True)
class AllocationConfig:
    # Custom-allocation webhook destinations besides HTTPS to public addresses: URL prefixes,
    # host names (*.domain) and addresses or networks (allocation.destinations).
    webhook_allowlist: tuple[str, ...] = ()

    @property
    def webhook_destinations(self) -> WebhookDestinations:
        return WebhookDestinations.parse(self.webhook_allowlist)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    # Several nodes on one PostgreSQL database: NATS carries hub operations to the node that
    # holds a device's connection (server/cluster_live.py). Empty: this node works alone.
    nats_url: str = ""
    # This node's name in the cluster; empty: a random one per start (a restarted node is a new
    # node, and the lease of the old one runs out).
    node_id: str = ""
    subject_prefix: str = "iotdps"
    heartbeat_seconds: float = 2.0
    # A node whose heartbeat is older than this is dead: its devices read as disconnected.
    lease_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    # Where device-to-cloud messages go (server/telemetry_routes.py): any of "sql", "nats", "webhook".
    routes: tuple[str, ...] = ("sql",)
    # The NATS route publishes to <subject_prefix>.telemetry.<hub>.<device> (tokens escaped);
    # with a stream name, a JetStream stream on those subjects holds them for replay, and each
    # publish waits for the stream's acknowledgement.
    nats_stream: str = ""
    webhook_url: str = ""
    webhook_ca_file: str = ""
    # Messages a route that is down holds before it drops the oldest (and says so).
    route_buffer: int = 10_000
    # Retention of the SQL store, per hub: older than this many seconds, and/or beyond this many
    # newest messages, are pruned in the background. 0: kept forever.
    retention_seconds: float = 0.0
    retention_count: int = 0
    prune_interval_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # Days the audit trail keeps its entries (iotdps.audit.retention); 0 keeps them forever.
    # Nothing else ever removes an entry: the log is never capped behind the operator's back.
    retention_days: int = 0


@dataclass(frozen=True, slots=True)
class HubConfig:
    host_name: str
    bind: str = "127.0.0.1"
    mqtt_port: int = 8883
    websocket_port: int = 443
    weight: int = 1
    apply_allocation_policy: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path
    dsn: str | None = None
    dps: DpsConfig = field(default_factory=DpsConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    hubs: tuple[HubConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    crl: CrlConfig = field(default_factory=CrlConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    hub_ports: HubPortsConfig = field(default_factory=HubPortsConfig)

    @property
    def hub_mqtt_port(self) -> int:
        return self.hub_ports.mqtt or self.dps.mqtt_port

    @property
    def hub_websocket_port(self) -> int:
        return self.hub_ports.websocket or self.dps.https_port

    @property
    def database_dsn(self) -> str:
        return self.dsn or f"sqlite:///{self.data_dir / 'iotdps.db'}"

    @property
    def effective_hubs(self) -> tuple[HubConfig, ...]:
        """With no hub configured, one hub (the implicit hub) shares the DPS host name and, unless
        [hub_ports] says otherwise, its listeners."""
        if self.hubs:
            return self.hubs
        return (self.implicit_hub,)

    @property
    def implicit_hub(self) -> HubConfig:
        return HubConfig(
            host_name=self.dps.host_name,
            bind=self.dps.bind,
            mqtt_port=self.hub_mqtt_port,
            websocket_port=self.hub_websocket_port,
        )

    def server_names(self) -> tuple[str, ...]:
        """Every name the server certificate must cover, in a stable order without repeats."""
        names = ["localhost", "127.0.0.1", self.dps.host_name]
        names += [h.host_name for h in self.effective_hubs]
        names += list(self.tls.extra_names)
        # Listening addresses too: a client may dial the address rather than a name.
        binds = [self.dps.bind, self.management.bind, *(h.bind for h in self.effective_hubs)]
        names += [b for b in binds if not is_unspecified(b)]
        return tuple(dict.fromkeys(names))

    @property
    def metrics_bind(self) -> str:
        return self.metrics.bind or self.management.bind

    @property
    def metrics_token_file(self) -> Path:
        if self.metrics.token_file:
            return Path(self.metrics.token_file).expanduser()
        return self.data_dir / "metrics-token"

    @property
    def management_host(self) -> str:
        """The host clients of the management API dial (for connection strings)."""
        if is_unspecified(self.management.bind):
            return self.dps.host_name
        return self.management.bind


_ENV_PREFIX = "IOTDPS_"

# Environment variable -> (section, key); section "" is the top level.
_ENV_KEYS: Mapping[str, tuple[str, str]] = {
    "DATA_DIR": ("", "data_dir"),
    "DSN": ("", "dsn"),
    "DPS_HOST": ("dps", "host_name"),
    "DPS_BIND": ("dps", "bind"),
    "MQTT_PORT": ("dps", "mqtt_port"),
    "HTTPS_PORT": ("dps", "https_port"),
    "MANAGEMENT_BIND": ("management", "bind"),
    "MANAGEMENT_PORT": ("management", "port"),
    "METRICS_BIND": ("metrics", "bind"),
    "METRICS_PORT": ("metrics", "port"),
    "METRICS_REQUIRE_AUTH": ("metrics", "require_auth"),
    "METRICS_TOKEN_FILE": ("metrics", "token_file"),
    "HUB_MQTT_PORT": ("hub_ports", "mqtt"),
    "HUB_WEBSOCKET_PORT": ("hub_ports", "websocket"),
    "TLS_EXTRA_NAMES": ("tls", "extra_names"),
    "TLS_CERT_FILE": ("tls", "cert_file"),
    "TLS_KEY_FILE": ("tls", "key_file"),
    "TLS_CA_PKCS11_URI": ("tls", "ca_pkcs11_uri"),
    "REGISTRATIONS_PER_SECOND": ("limits", "registrations_per_second"),
    "DEVICE_TOKEN_MAX_LIFETIME": ("auth", "device_token_max_lifetime"),
    "WEBHOOK_ALLOWLIST": ("allocation", "webhook_allowlist"),
    "NATS_URL": ("cluster", "nats_url"),
    "NODE_ID": ("cluster", "node_id"),
    "TELEMETRY_ROUTES": ("telemetry", "routes"),
    "CRL_BIND": ("crl", "bind"),
    "CRL_PORT": ("crl", "port"),
}
# Settings that are lists; their environment variables are comma separated.
_LIST_KEYS = frozenset({"extra_names", "webhook_allowlist", "routes"})


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)


def default_data_dir() -> Path:
    """The per-user data directory, used when no data_dir is configured."""
    import platformdirs

    return Path(platformdirs.user_data_dir("iotdps"))


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read defaults, then the TOML file, then IOTDPS_* variables, then `overrides`
    (dotted keys such as "dps.bind", as the CLI passes its options)."""
    env = os.environ if environ is None else environ
    problems = _Problems()
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.add(f"config file {path} does not exist")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(f"config file {path} cannot be read: {exc.__class__.__name__}")
        except tomllib.TOMLDecodeError as exc:
            problems.add(f"config file {path} is not valid TOML: {exc}")
    for suffix, (section, key) in _ENV_KEYS.items():
        value = env.get(_ENV_PREFIX + suffix)
        if value is None or value == "":
            continue
        target = raw if not section else raw.setdefault(section, {})
        if not isinstance(target, dict):
            problems.add(f"[{section}] must be a table")
            continue
        target[key] = [v.strip() for v in value.split(",") if v.strip()] if key in _LIST_KEYS else value
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        target = raw if not section else raw.setdefault(section, {})
        target[key] = value
    config = _build(raw, problems)
    if problems.items:
        raise ConfigError(problems.items)
    assert config is not None
    return config


def _build(raw: Mapping[str, Any], problems: _Problems) -> Config | None:
    known_top = {
        "data_dir",
        "dsn",
        "dps",
        "management",
        "metrics",
        "tls",
        "limits",
        "hubs",
        "auth",
        "allocation",
        "cluster",
        "telemetry",
        "hub_ports",
        "crl",
        "audit",
    }
    for key in raw:
        if key not in known_top:
            problems.add(f"unknown setting {key!r}")

    data_dir = raw.get("data_dir")
    data_path = default_data_dir() if data_dir is None else Path(str(data_dir)).expanduser()
    dsn = raw.get("dsn")
    if dsn is not None and (not isinstance(dsn, str) or "://" not in dsn):
        problems.add("dsn must be a database URL such as postgresql+asyncpg://user@host/db")
        dsn = None
    elif isinstance(dsn, str) and not dsn.startswith(
        # sqlite+aiosqlite:// is the spelling of earlier releases; it opens the same store.
        ("sqlite://", "sqlite+aiosqlite://", "postgresql://", "postgresql+asyncpg://", "memory://")
    ):
        problems.add("dsn must start with sqlite://, postgresql+asyncpg:// or memory://")

    dps = _section(raw, "dps", DpsConfig(), problems)
    # The management API follows the DPS address unless told otherwise: two instances that
    # differ by --bind must not both claim 127.0.0.1:8443.
    management = _section(raw, "management", ManagementConfig(bind=dps.bind), problems)
    hub_ports = _section(raw, "hub_ports", HubPortsConfig(), problems)
    default_hub = HubConfig(
        host_name="",
        mqtt_port=hub_ports.mqtt or dps.mqtt_port,
        websocket_port=hub_ports.websocket or dps.https_port,
    )
    metrics = _section(raw, "metrics", MetricsConfig(), problems)
    tls = _section(raw, "tls", TlsConfig(), problems)
    limits = _section(raw, "limits", LimitsConfig(), problems)
    auth = _section(raw, "auth", AuthConfig(), problems)
    allocation = _section(raw, "allocation", AllocationConfig(), problems)
    cluster = _section(raw, "cluster", ClusterConfig(), problems)
    telemetry = _section(raw, "telemetry", TelemetryConfig(), problems)
    crl = _section(raw, "crl", CrlConfig(), problems)
    audit = _section(raw, "audit", AuditConfig(), problems)

    hubs: list[HubConfig] = []
    hub_index: list[int] = []  # position in the file, for messages
    raw_hubs = raw.get("hubs", [])
    if not isinstance(raw_hubs, list):
        problems.add("hubs must be an array of tables ([[hubs]])")
        raw_hubs = []
    for index, entry in enumerate(raw_hubs):
        if not isinstance(entry, dict) or not entry.get("host_name"):
            problems.add(f"hubs[{index}] needs a host_name")
            continue
        base = replace(default_hub, host_name=str(entry["host_name"]))
        hub = _section({"hub": entry}, "hub", base, problems, f"hubs[{index}]")
        hubs.append(hub)
        hub_index.append(index)

    # Cross-field rules.
    if not 0 <= audit.retention_days <= 36_500:
        problems.add(f"audit.retention_days must be 0 (keep forever) or 1..36500, not {audit.retention_days}")
    for name, port in (
        ("dps.mqtt_port", dps.mqtt_port),
        ("dps.https_port", dps.https_port),
        ("management.port", management.port),
    ):
        if not 1 <= port <= 65535:
            problems.add(f"{name} must be 1..65535, not {port}")
    for name, port in (("hub_ports.mqtt", hub_ports.mqtt), ("hub_ports.websocket", hub_ports.websocket)):
        if not 0 <= port <= 65535:
            problems.add(f"{name} must be 1..65535 (0: the DPS's port), not {port}")
    for name, addr in (("dps.bind", dps.bind), ("management.bind", management.bind)):
        if not is_ip_address(addr):
            problems.add(f"{name} must be an IP address, not {addr!r}")
    seen_hosts: set[str] = set()
    for index, hub in zip(hub_index, hubs, strict=True):
        if hub.host_name in seen_hosts:
            problems.add(f"hubs[{index}].host_name {hub.host_name!r} is listed twice")
        seen_hosts.add(hub.host_name)
        if not is_ip_address(hub.bind):
            problems.add(f"hubs[{index}].bind must be an IP address, not {hub.bind!r}")
        if not 1 <= hub.weight <= 1000:
            problems.add(f"hubs[{index}].weight must be 1..1000")
        for pname, port in (("mqtt_port", hub.mqtt_port), ("websocket_port", hub.websocket_port)):
            if not 1 <= port <= 65535:
                problems.add(f"hubs[{index}].{pname} must be 1..65535, not {port}")
    if not 0 <= crl.port <= 65535:
        problems.add(f"crl.port must be 0 (off) or 1..65535, not {crl.port}")
    if not is_ip_address(crl.bind):
        problems.add(f"crl.bind must be an IP address, not {crl.bind!r}")
    _check_metrics(metrics, management, dps, hubs or [replace(default_hub, bind=dps.bind)], problems)
    if not problems.items:
        for clash in listener_clashes(dps, management, hubs or [replace(default_hub, bind=dps.bind)]):
            problems.add(clash)
    if limits.registrations_per_second < 0:
        problems.add("limits.registrations_per_second must be >= 0")
    if limits.max_packet_size < 1024:
        problems.add("limits.max_packet_size must be at least 1024")
    # Limits that would let nothing through (a burst of -1, no connection) are mistakes, not
    # settings: refuse them at start rather than serve a node that refuses every device.
    if limits.registration_burst < 1:
        problems.add("limits.registration_burst must be at least 1")
    if limits.retry_after_seconds < 1:
        problems.add("limits.retry_after_seconds must be at least 1")
    if limits.max_connections < 1:
        problems.add("limits.max_connections must be at least 1")
    if not 100 <= limits.refusal_history <= 10_000_000:
        problems.add("limits.refusal_history must be 100..10000000")
    if not 0 < limits.certificate_requests_per_minute <= 600:
        problems.add("limits.certificate_requests_per_minute must be > 0 and at most 600")
    if not 1 <= limits.certificate_request_burst <= 1000:
        problems.add("limits.certificate_request_burst must be 1..1000")
    if tls.handshake_timeout <= 0:
        problems.add("tls.handshake_timeout must be > 0")
    if bool(tls.cert_file) != bool(tls.key_file):
        problems.add("tls.cert_file and tls.key_file go together: set both or neither")
    if tls.ca_pkcs11_uri:
        try:
            token_key_uri(tls.ca_pkcs11_uri)
        except InvalidInput as exc:
            problems.add(f"tls.ca_pkcs11_uri: {exc.message}")
    if not 0 < limits.connect_timeout <= 3600:
        problems.add("limits.connect_timeout must be > 0 and at most 3600 seconds")
    if not MIN_DEVICE_TOKEN_LIFETIME <= auth.device_token_max_lifetime <= MAX_DEVICE_TOKEN_LIFETIME:
        problems.add(
            f"auth.device_token_max_lifetime must be {MIN_DEVICE_TOKEN_LIFETIME}..{MAX_DEVICE_TOKEN_LIFETIME} seconds"
        )
    try:
        WebhookDestinations.parse(allocation.webhook_allowlist)
    except InvalidInput as exc:
        problems.add(f"allocation.webhook_allowlist: {exc.message}")

    _check_cluster(cluster, telemetry, dsn if isinstance(dsn, str) else None, problems)

    if problems.items:
        return None
    return Config(
        data_dir=data_path,
        dsn=dsn if isinstance(dsn, str) else None,
        dps=dps,
        management=management,
        metrics=metrics,
        tls=tls,
        limits=limits,
        hubs=tuple(hubs),
        auth=auth,
        allocation=allocation,
        cluster=cluster,
        telemetry=telemetry,
        crl=crl,
        hub_ports=hub_ports,
        audit=audit,
    )


def _same_address(a: str, b: str) -> bool:
    # 0.0.0.0 (or ::) takes the port on every address, so it clashes with any of them.
    return a == b or is_unspecified(a) or is_unspecified(b)


def listener_clashes(dps: DpsConfig, management: ManagementConfig, hubs: Sequence[HubConfig]) -> list[str]:
    """Listeners that would claim one address and port for different things. MQTT listeners
    are shared on purpose (DPS and hub CONNECTs are told apart by username), and a hub's
    websocket route rides on the DPS HTTPS listener when they share address and port; anything
    else on one port would fail at bind time with a less helpful message."""
    listeners = [
        ("dps.mqtt_port", dps.bind, dps.mqtt_port, "mqtt"),
        ("dps.https_port", dps.bind, dps.https_port, "https"),
        ("management.port", management.bind, management.port, "management"),
    ]
    for index, hub in enumerate(hubs):
        label = f"hubs[{index}]" if hub.host_name != "" else "the implicit hub"
        listeners.append((f"{label} mqtt port", hub.bind, hub.mqtt_port, "mqtt"))
        listeners.append((f"{label} websocket port", hub.bind, hub.websocket_port, "https"))
        # The management API is served on every hub address too (the hub service API).
        listeners.append((f"management.port (on {label}'s address)", hub.bind, management.port, "management"))
    clashes: list[str] = []
    for i, (name_a, addr_a, port_a, kind_a) in enumerate(listeners):
        for name_b, addr_b, port_b, kind_b in listeners[i + 1 :]:
            if port_a == port_b and kind_a != kind_b and _same_address(addr_a, addr_b):
                clash = f"{name_a} and {name_b} both take port {port_a} on {addr_a}"
                if clash not in clashes:
                    clashes.append(clash)
    return clashes


_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_ROUTES = frozenset({"sql", "nats", "webhook"})


def _subject_token_ok(value: str) -> bool:
    """A NATS subject token (or dotted tokens) without wildcards or spaces."""
    return bool(value) and all(part and _NODE_ID_CHARS >= set(part) for part in value.split("."))


def _check_cluster(cluster: ClusterConfig, telemetry: TelemetryConfig, dsn: str | None, problems: _Problems) -> None:
    if cluster.nats_url and not cluster.nats_url.startswith(("nats://", "tls://")):
        problems.add("cluster.nats_url must start with nats:// or tls://")
    if cluster.nats_url and not (dsn or "").startswith("postgresql"):
        problems.add("cluster.nats_url needs a shared PostgreSQL database (dsn = postgresql+asyncpg://...)")
    if cluster.node_id and (len(cluster.node_id) > 64 or not _NODE_ID_CHARS >= set(cluster.node_id)):
        problems.add("cluster.node_id must be 1..64 letters, digits, '-' or '_'")
    if not _subject_token_ok(cluster.subject_prefix):
        problems.add("cluster.subject_prefix must be NATS subject tokens (letters, digits, '-', '_', '.')")
    if not 0.1 <= cluster.heartbeat_seconds <= 60:
        problems.add("cluster.heartbeat_seconds must be 0.1..60")
    if cluster.lease_seconds < 2 * cluster.heartbeat_seconds:
        problems.add("cluster.lease_seconds must be at least twice cluster.heartbeat_seconds")
    unknown = [r for r in telemetry.routes if r not in _ROUTES]
    if unknown:
        problems.add(f"telemetry.routes: unknown route {unknown[0]!r} (use sql, nats, webhook)")
    if "sql" not in telemetry.routes:
        # The PUBACK waits for the SQL store (server/telemetry_routes.py): without it a PUBACK
        # would promise nothing.
        problems.add("telemetry.routes must include sql (the route a device's PUBACK waits for)")
    if "nats" in telemetry.routes and not cluster.nats_url:
        problems.add("the nats telemetry route needs cluster.nats_url")
    if telemetry.nats_stream and not (_NODE_ID_CHARS >= set(telemetry.nats_stream)):
        problems.add("telemetry.nats_stream must be letters, digits, '-' or '_'")
    if "webhook" in telemetry.routes and not telemetry.webhook_url.startswith("https://"):
        problems.add("the webhook telemetry route needs telemetry.webhook_url (https://...)")
    if not 1 <= telemetry.route_buffer <= 10_000_000:
        problems.add("telemetry.route_buffer must be 1..10000000")
    if telemetry.retention_seconds < 0 or telemetry.retention_count < 0:
        problems.add("telemetry.retention_seconds and retention_count must be >= 0 (0: keep forever)")
    if not 1 <= telemetry.prune_interval_seconds <= 86400:
        problems.add("telemetry.prune_interval_seconds must be 1..86400")


def _check_metrics(
    metrics: MetricsConfig, management: ManagementConfig, dps: DpsConfig, hubs: list[HubConfig], problems: _Problems
) -> None:
    if metrics.port == 0:
        if metrics.bind:
            problems.add("metrics.bind needs metrics.port (0 serves /metrics on the management port only)")
        return
    if not 1 <= metrics.port <= 65535:
        problems.add(f"metrics.port must be 0 (none) or 1..65535, not {metrics.port}")
        return
    bind = metrics.bind or management.bind
    if not is_ip_address(bind):
        problems.add(f"metrics.bind must be an IP address, not {bind!r}")
        return
    taken = {
        (management.bind, management.port): "management.port",
        (dps.bind, dps.mqtt_port): "dps.mqtt_port",
        (dps.bind, dps.https_port): "dps.https_port",
    }
    for index, hub in enumerate(hubs):
        taken.setdefault((hub.bind, hub.mqtt_port), f"hubs[{index}].mqtt_port")
        taken.setdefault((hub.bind, hub.websocket_port), f"hubs[{index}].websocket_port")
    for (address, port), name in taken.items():
        # An all-interfaces listener takes the port on every address.
        if port == metrics.port and (address == bind or is_unspecified(address) or is_unspecified(bind)):
            problems.add(f"metrics.port collides with {name} on the same address")
            return


_T = TypeVar("_T")


def _section(raw: Mapping[str, Any], name: str, default: _T, problems: _Problems, label: str | None = None) -> _T:
    """Overlay raw[name] on the dataclass `default`, converting and type-checking each field."""
    label = label or name
    table = raw.get(name, {})
    if not isinstance(table, dict):
        problems.add(f"[{label}] must be a table")
        return default
    fields = {f: getattr(default, f) for f in default.__dataclass_fields__}  # type: ignore[attr-defined]
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            problems.add(f"unknown setting {label}.{key}")
            continue
        current = fields[key]
        converted = _convert(value, current)
        if converted is _INVALID:
            problems.add(f"{label}.{key} must be {_type_name(current)}, not {value!r}")
            continue
        changes[key] = converted
    return replace(default, **changes)  # type: ignore[type-var]


_INVALID = object()


def _type_name(current: object) -> str:
    if isinstance(current, bool):
        return "true or false"
    if isinstance(current, int):
        return "an integer"
    if isinstance(current, float):
        return "a number"
    if isinstance(current, tuple):
        return "a list of strings"
    return "a string"


def _convert(value: object, current: object) -> object:
    # Environment values arrive as strings; TOML values arrive typed.
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        return _INVALID
    if isinstance(current, int):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return _INVALID
    if isinstance(current, float):
        if isinstance(value, bool):
            return _INVALID
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if isinstance(current, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        return _INVALID
    if isinstance(value, str) and value:
        return value
    return _INVALID
