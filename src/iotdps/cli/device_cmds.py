"""`iotdps device run`: our own device client as a command (see iotdps.device).

Provisions (or uses the cached assignment in `--state`), connects to the hub, sends
`--count` telemetry messages `--interval` seconds apart, answers every direct method with
its payload echoed, prints received C2D messages and desired patches as JSON lines, and stays
connected `--stay` seconds after the last message. With `--csr` it renews its issued
certificate while it runs (over the hub, else by registering again) and prints a `renewed` line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from iotdps.device import (
    C2DReceived,
    DeviceAgent,
    DeviceSettings,
    HubUnreachable,
    SymmetricKey,
    TpmCredential,
    X509Files,
)
from iotdps.device.credentials import Credential
from iotdps.device.issued import IssuedFiles, RenewalRule
from iotdps.errors import InvalidInput
from iotdps.secret import Secret

__all__ = ["register"]


def _credential(
    symmetric_key: str | None,
    group_key: str | None,
    cert: str | None,
    key: str | None,
    registration_id: str,
    tpm_tcti: str | None = None,
) -> Credential:
    chosen = [x for x in (symmetric_key, group_key, cert, tpm_tcti) if x]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of --symmetric-key, --group-key, --cert (with --key) or --tpm")
    if tpm_tcti:
        # Imported here: tpm2-pytss (the tpm extra) is needed only by TPM devices.
        from iotdps.device.tpm import Tpm, TpmError

        # libtss2 logs its own warnings to stderr; the command reports errors in one line.
        # TSS2_LOG set by the user (to debug the TSS) wins.
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        try:
            return TpmCredential(Tpm(tpm_tcti))
        except TpmError as exc:
            raise InvalidInput(exc.message) from None
    if symmetric_key:
        return SymmetricKey(Secret(symmetric_key))
    if group_key:
        return SymmetricKey.from_group(Secret(group_key), registration_id)
    if not key:
        raise InvalidInput("--cert needs --key")
    return X509Files(Path(str(cert)), Path(key))


@click.command("run")
@click.option("--provisioning-host", required=True, help="DPS host name (or address).")
@click.option("--id-scope", required=True)
@click.option("--registration-id", required=True)
@click.option("--symmetric-key", envvar="IOTDPS_DEVICE_KEY", help="The device's own key (base64).")
@click.option("--group-key", envvar="IOTDPS_GROUP_KEY", help="A symmetric-key group's key: the device key is derived.")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True), help="Device certificate chain (PEM).")
@click.option("--key", type=click.Path(dir_okay=False, exists=True), help="Device private key (PEM).")
@click.option("--tpm", is_flag=True, help="A TPM device: HTTPS challenge, keys and SAS signing in the TPM.")
@click.option(
    "--tcti",
    envvar="TPM2TOOLS_TCTI",
    default="device:/dev/tpmrm0",
    show_default=True,
    help="With --tpm: how to reach the TPM (tpm2-tools syntax, e.g. swtpm:host=127.0.0.1,port=2321).",
)
@click.option("--https-port", type=click.IntRange(1, 65535), default=443, show_default=True, help="DPS over HTTPS.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True), help="Server CA (PEM) to trust.")
@click.option("--state", "state_file", type=click.Path(dir_okay=False), required=True, help="Assignment cache file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--count", type=click.IntRange(min=0), default=1, show_default=True, help="Telemetry messages to send.")
@click.option("--interval", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--message", default='{"hello": "iotdps"}', show_default=True, help="Telemetry body.")
@click.option("--stay", type=click.FloatRange(min=0), default=0.0, help="Seconds to stay connected afterwards.")
@click.option(
    "--csr",
    "issue_certificate",
    is_flag=True,
    help="Register with a CSR (api-version 2025-07-01-preview); use the issued certificate on the hub, "
    "kept beside --state, and renew it when a third of its validity is left.",
)
@click.option(
    "--renew-fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=1 / 3,
    help="With --csr: renew when less than this fraction of the certificate's validity is left [default 1/3].",
)
@click.option(
    "--renew-before",
    type=click.FloatRange(min=0, min_open=True),
    help="With --csr: renew this many seconds before the certificate expires (instead of --renew-fraction).",
)
@click.option(
    "--renew-check",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="With --csr: the longest pause (seconds) between two looks at the certificate while running.",
)
def run_command(
    provisioning_host: str,
    id_scope: str,
    registration_id: str,
    symmetric_key: str | None,
    group_key: str | None,
    cert: str | None,
    key: str | None,
    tpm: bool,
    tcti: str,
    https_port: int,
    ca_file: str | None,
    state_file: str,
    port: int,
    count: int,
    interval: float,
    message: str,
    stay: float,
    issue_certificate: bool,
    renew_fraction: float,
    renew_before: float | None,
    renew_check: float,
) -> None:
    """Run a device: provision or use the cache, connect, send telemetry, answer the cloud."""
    ca_pem = Path(ca_file).read_text() if ca_file else None
    credential = _credential(symmetric_key, group_key, cert, key, registration_id, tcti if tpm else None)
    settings = DeviceSettings(
        provisioning_host,
        id_scope,
        registration_id,
        credential,
        Path(state_file),
        ca_pem=ca_pem,
        port=port,
        https_port=https_port,
        issue_certificate=issue_certificate,
        renewal=RenewalRule(renew_fraction, dt.timedelta(seconds=renew_before) if renew_before else None),
        renew_check=renew_check,
    )

    def emit(kind: str, doc: Any) -> None:
        click.echo(json.dumps({"event": kind, **doc}, sort_keys=True, default=str))

    async def on_method(name: str, payload: Any) -> tuple[int, Any]:
        emit("method", {"name": name, "payload": payload})
        return 200, {"method": name, "payload": payload}

    def on_c2d(m: C2DReceived) -> None:
        emit("c2d", {"body": m.body.decode("utf-8", "replace"), "properties": dict(m.application_properties)})

    def on_desired(patch: dict[str, Any]) -> None:
        emit("desired", {"patch": patch})

    def certificate(leaf: x509.Certificate) -> dict[str, Any]:
        return {"serial": format(leaf.serial_number, "X"), "notAfter": leaf.not_valid_after_utc.isoformat()}

    async def go() -> None:
        agent = DeviceAgent(settings, on_c2d=on_c2d, on_method=on_method, on_desired=on_desired)
        agent.on_renewed = lambda leaf, via: emit("renewed", {**certificate(leaf), "via": via})
        await agent.start()
        assert agent.assignment is not None
        emit(
            "connected",
            {
                "hub": agent.assignment.assigned_hub,
                "deviceId": agent.assignment.device_id,
                "provisioned": agent.provisioned > 0,
            },
        )
        if issue_certificate:
            leaf = IssuedFiles(settings.state_file).leaf()
            if leaf is not None:
                emit("certificate", certificate(leaf))
        try:
            for i in range(count):
                # agent.client: a renewal reconnects with a new client.
                assert agent.client is not None
                await agent.client.send_telemetry(message, {"seq": str(i)})
                emit("sent", {"seq": i})
                if i + 1 < count:
                    await asyncio.sleep(interval)
            if stay:
                await asyncio.sleep(stay)
        finally:
            await agent.stop()

    try:
        asyncio.run(go())
    except HubUnreachable as exc:
        if isinstance(exc.cause, ssl.SSLCertVerificationError):
            raise InvalidInput(_untrusted(exc.hub, ca_file)) from None
        raise
    except ssl.SSLCertVerificationError:
        raise InvalidInput(_untrusted(provisioning_host, ca_file)) from None
    except (OSError, TimeoutError) as exc:
        raise InvalidInput(
            f"the provisioning service {provisioning_host}:{port} is unreachable ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        if isinstance(credential, TpmCredential):
            close = getattr(credential.tpm, "close", None)
            if close is not None:
                close()


def _untrusted(host: str, ca_file: str | None) -> str:
    """A TLS verification failure in words: iotdps servers use their own CA, which a device
    must be given (the system's CAs never signed it)."""
    if ca_file is None:
        return (
            f"the certificate of {host} is not trusted: pass --ca FILE, the server CA "
            "(tls/server-ca.pem in the server's data dir)"
        )
    return f"the certificate of {host} is not signed by --ca {ca_file}"


def register(group: click.Group) -> None:
    device = group.commands.get("device")
    if isinstance(device, click.Group):
        device.add_command(run_command)
    else:
        fallback = click.Group("device", help="Devices on a hub, and our device client.")
        fallback.add_command(run_command)
        group.add_command(fallback)
