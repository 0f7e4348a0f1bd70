"""Provision once, remember the assignment, connect straight to the hub afterwards.

Seeds 000/001: the device provisions once, caches its assigned hub and connects to it directly
on the next boot. The cache is a small JSON state file (registration id, id scope, provisioning
host, assigned hub, device id), written atomically and owner-only. It is dropped, and the device
provisions again, when the hub refuses the device (CONNACK 4/5: it was moved or deleted) or
stays unreachable for `hub_attempts` tries.

With `issue_certificate` (`iotdps device run --csr`, issue 18) the device registers with a CSR
(whatever its attestation; a TPM device over HTTPS), keeps the issued key, chain and trust
bundle beside the state file (device.issued) and connects to the hub with that certificate. It
renews before expiry (`DeviceSettings.renewal`, a third of the validity left by default): at
start, and while running by a timer that `start` arms (cancelled by `stop`). A renewal asks the
hub over its credentials topic when connected, and falls back to registering again with a new
CSR; the new key and chain replace the old pair atomically, and the device reconnects with
them. A failed renewal is retried with a growing pause (at most `renew_check` seconds), while
the old certificate still works.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from iotdps.device.credentials import Credential, TpmCredential
from iotdps.device.hub_client import CertificateRequestFailed, HubClient
from iotdps.device.issued import IssuedFiles, RenewalRule, due_for_renewal, new_key_and_csr
from iotdps.device.mqtt import ConnectRefused
from iotdps.device.provision import Assignment, provision
from iotdps.device.provision_https import provision_tpm
from iotdps.errors import IotdpsError

__all__ = ["DeviceAgent", "DeviceSettings", "HubUnreachable", "load_state", "save_state"]


class HubUnreachable(IotdpsError):
    """The assigned hub could not be reached (no answer, connection refused, TLS failed):
    not a refusal of the device, which is ConnectRefused with the hub's CONNACK code."""

    def __init__(self, hub: str, attempts: int, cause: BaseException) -> None:
        super().__init__(f"hub {hub} is unreachable after {attempts} attempts ({type(cause).__name__}: {cause})")
        self.hub = hub
        self.cause = cause


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    provisioning_host: str
    id_scope: str
    registration_id: str
    credential: Credential
    state_file: Path
    ca_pem: str | None = None
    port: int = 8883
    https_port: int = 443  # DPS over HTTPS: where a TPM device registers
    payload: Any = None
    hub_attempts: int = 3
    retry_delay: float = 1.0
    keepalive: int = 60
    # Register with a CSR and use the issued certificate on the hub (device.issued).
    issue_certificate: bool = False
    # When the issued certificate is due, and the longest pause between two looks at it (also
    # the longest pause between two attempts after a failed renewal).
    renewal: RenewalRule = field(default_factory=RenewalRule)
    renew_check: float = 300.0


def load_state(settings: DeviceSettings) -> Assignment | None:
    try:
        doc = json.loads(settings.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or (
        doc.get("registrationId"),
        doc.get("idScope"),
        doc.get("provisioningHost"),
    ) != (settings.registration_id, settings.id_scope, settings.provisioning_host):
        return None  # a state file of another identity or service is not ours to use
    hub, device_id = doc.get("assignedHub"), doc.get("deviceId")
    if not isinstance(hub, str) or not isinstance(device_id, str):
        return None
    return Assignment(settings.registration_id, hub, device_id, doc.get("substatus"))


def save_state(settings: DeviceSettings, assignment: Assignment) -> None:
    doc = {**assignment.to_json(), "idScope": settings.id_scope, "provisioningHost": settings.provisioning_host}
    path = settings.state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DeviceAgent:
    def __init__(self, settings: DeviceSettings, **hub_handlers: Any) -> None:
        self.settings = settings
        self._handlers = hub_handlers
        self.provisioned = 0  # how many times this agent contacted the provisioning service
        self.assignment: Assignment | None = None
        self.client: HubClient | None = None
        # Why the last hub connection failed: the hub's refusal, or what kept it from answering.
        self._hub_failure: ConnectRefused | BaseException | None = None
        self.renewals = 0  # certificates renewed while running
        self.on_renewed: Callable[[x509.Certificate, str], Any] | None = None  # (new leaf, "hub"/"dps")
        self._renewing = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None

    def _hub_client(self, assignment: Assignment) -> HubClient:
        s = self.settings
        credential: Credential = s.credential
        if s.issue_certificate:
            credential = IssuedFiles(s.state_file).credential() or s.credential
        return HubClient(
            assignment.assigned_hub,
            assignment.device_id,
            credential,
            ca_pem=self.root_store(),
            port=s.port,
            keepalive=s.keepalive,
            **self._handlers,
        )

    def root_store(self) -> str | None:
        """The CAs this device trusts for the service (DPS and its hub alike): its configured CA
        file and the last trust bundle it was given. The bundle is how a device learns a new
        server CA before the service presents it (server CA rotation, provisioning.server_ca);
        the configured CA stays, so a bundle can add trust but a bad one cannot strand it."""
        s = self.settings
        bundle = IssuedFiles(s.state_file).bundle_pem() if s.issue_certificate else None
        if bundle is None or s.ca_pem is None:
            return s.ca_pem
        return s.ca_pem + "\n" + bundle

    async def _provision(self) -> Assignment:
        s = self.settings
        self.provisioned += 1
        # With --csr a software key, for TPM devices too: the hub's TLS handshake signs with it,
        # and Python's ssl takes only key files (README, certificate issuance).
        key, csr = new_key_and_csr(s.registration_id) if s.issue_certificate else (None, None)
        if isinstance(s.credential, TpmCredential):
            # TPM is HTTPS-only; the hub key lands in the TPM, so the cached hub needs no secret.
            assignment = await provision_tpm(
                s.provisioning_host,
                s.id_scope,
                s.registration_id,
                s.credential,
                ca_pem=self.root_store(),
                port=s.https_port,
                payload=s.payload,
                csr=csr,
            )
        else:
            assignment = await provision(
                s.provisioning_host,
                s.id_scope,
                s.registration_id,
                s.credential,
                ca_pem=self.root_store(),
                port=s.port,
                payload=s.payload,
                csr=csr,
            )
        if key is not None:
            IssuedFiles(s.state_file).save(key, assignment.issued_chain, assignment.trust_bundle)
        save_state(s, assignment)
        return assignment

    def certificate_due(self) -> bool:
        """With --csr: no issued certificate yet, or it is due (`DeviceSettings.renewal`)."""
        if not self.settings.issue_certificate:
            return False
        leaf = IssuedFiles(self.settings.state_file).leaf()
        return leaf is None or due_for_renewal(leaf, rule=self.settings.renewal)

    async def renew(self, via: Literal["auto", "hub", "dps"] = "auto") -> HubClient:
        """A new key and certificate now, and a connection that uses them. `auto`: over the hub
        when connected, else (or when the hub does not issue) by registering again."""
        async with self._renewing:
            if via == "hub" and (self.client is None or not self.client.connected):
                raise ConnectionError("not connected to the hub: cannot renew over it")
            used = "dps"
            client: HubClient | None = None
            if via != "dps" and self.client is not None and self.client.connected:
                try:
                    client = await self._renew_over_hub(self.client)
                    used = "hub"
                except (CertificateRequestFailed, TimeoutError, ConnectionError, ValueError) as exc:
                    if via == "hub":
                        raise
                    log.info("renewal over the hub failed (%s): registering again", exc)
            if client is None:
                client = await self._renew_by_registering()
            self.client = client
            self.renewals += 1
            leaf = IssuedFiles(self.settings.state_file).leaf()
            if self.on_renewed is not None and leaf is not None:
                self.on_renewed(leaf, used)
            return client

    async def _renew_over_hub(self, current: HubClient) -> HubClient:
        s = self.settings
        assert self.assignment is not None
        key, csr = new_key_and_csr(s.registration_id)
        issued = await current.request_certificate(csr)
        # ValueError: not a chain for this key. The bundle, like a registration's, joins the
        # root store: how a device that renews only over the hub learns a new server CA.
        IssuedFiles(s.state_file).save(key, issued.chain, issued.trust_bundle)
        # The hub keeps the previous certificate as secondary, so the old connection was fine
        # until now; one connection per device, so close it before the new one connects.
        await current.close()
        client = await self._try_hub(self.assignment)
        if client is None:
            raise ConnectionError(f"the hub did not take the renewed certificate: {self._hub_failure}")
        return client

    async def _renew_by_registering(self) -> HubClient:
        if self.client is not None:
            await self.client.close()
            self.client = None
        assignment = await self._provision()
        client = await self._try_hub(assignment)
        if client is None:
            raise ConnectRefused(5)
        self.assignment = assignment
        return client

    def _seconds_until_due(self) -> float:
        leaf = IssuedFiles(self.settings.state_file).leaf()
        if leaf is None:
            return 0.0
        left = (self.settings.renewal.due_at(leaf) - dt.datetime.now(dt.UTC)).total_seconds()
        return max(0.0, left)

    async def _keep_renewed(self) -> None:
        """The renewal timer: sleep until the certificate is due (looking again at least every
        `renew_check` seconds), renew, repeat; after a failure wait `retry_delay`, doubling up
        to `renew_check`. Runs until cancelled."""
        s = self.settings
        pause = s.retry_delay
        while True:
            await asyncio.sleep(min(self._seconds_until_due(), s.renew_check))
            if not self.certificate_due():
                continue
            try:
                await self.renew()
                pause = s.retry_delay
            except (IotdpsError, OSError, TimeoutError, ValueError) as exc:
                log.warning("certificate renewal of %s failed (%s); retrying in %.0f s", s.registration_id, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, s.renew_check)

    async def _try_hub(self, assignment: Assignment) -> HubClient | None:
        """The connected client, or None when the hub refused or stayed unreachable."""
        for attempt in range(self.settings.hub_attempts):
            client = self._hub_client(assignment)
            try:
                await client.connect()
                return client
            except ConnectRefused as exc:
                log.info("hub %s refused %s (CONNACK %d)", assignment.assigned_hub, assignment.device_id, exc.code)
                self._hub_failure = exc
                await client.close()
                return None
            except (OSError, TimeoutError) as exc:
                self._hub_failure = exc
                log.info(
                    "hub %s unreachable (%s), attempt %d", assignment.assigned_hub, type(exc).__name__, attempt + 1
                )
                await client.close()
                await asyncio.sleep(self.settings.retry_delay)
        return None

    async def start(self) -> HubClient:
        """Connect to the cached hub, or provision (again) and connect to the assigned one."""
        cached = load_state(self.settings)
        if cached is not None and not self.certificate_due():
            client = await self._try_hub(cached)
            if client is not None:
                self.assignment, self.client = cached, client
                self._arm_timer()
                return client
            log.info("cached assignment of %s no longer works: provisioning again", self.settings.registration_id)
        assignment = await self._provision()
        client = await self._try_hub(assignment)
        if client is None:
            failure = self._hub_failure
            if isinstance(failure, ConnectRefused):
                raise failure
            assert failure is not None
            raise HubUnreachable(assignment.assigned_hub, self.settings.hub_attempts, failure)
        self.assignment, self.client = assignment, client
        self._arm_timer()
        return client

    def _arm_timer(self) -> None:
        if self.settings.issue_certificate and (self._timer is None or self._timer.done()):
            self._timer = asyncio.get_running_loop().create_task(self._keep_renewed())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            try:
                await self._timer
            except asyncio.CancelledError:
                pass
            self._timer = None
        if self.client is not None:
            await self.client.close()
