"""Our own asyncio device client: provision (X.509, symmetric key or TPM), cache the assignment,
connect to the hub, send telemetry, use the twin, answer methods, receive C2D.

It speaks the same sans-IO MQTT codec as the server (client side). Why not the Azure SDK: it
cannot do TPM or CSR flows, and it is too heavy for load generation.
"""

from __future__ import annotations

from iotdps.device.agent import DeviceAgent, DeviceSettings, HubUnreachable, load_state, save_state
from iotdps.device.credentials import (
    Credential,
    SymmetricKey,
    TpmCredential,
    TpmSigner,
    X509Files,
    make_hub_sas_token,
)
from iotdps.device.hub_client import C2DReceived, HubClient, TwinError
from iotdps.device.mqtt import ConnectRefused, MqttClient
from iotdps.device.provision import Assignment, ProvisioningFailed, provision
from iotdps.device.provision_https import provision_tpm

__all__ = [
    "Assignment",
    "C2DReceived",
    "ConnectRefused",
    "Credential",
    "DeviceAgent",
    "DeviceSettings",
    "HubClient",
    "HubUnreachable",
    "MqttClient",
    "ProvisioningFailed",
    "SymmetricKey",
    "TpmCredential",
    "TpmSigner",
    "TwinError",
    "X509Files",
    "load_state",
    "make_hub_sas_token",
    "provision",
    "provision_tpm",
    "save_state",
]
