"""`iotdps explain` and the API's /explain: the decision for a device in words, without registering.

The precedence walk of attestation and `enrollment.resolve`, the decision, and for an admitted
device its device id and the hub a built-in allocation policy would choose. The custom webhook is
never called from here. The scope is the service's own.
"""

from __future__ import annotations

from iotdps.enrollment.models import EnrollmentSettings
from iotdps.evidence import Credential
from iotdps.pki.csr_policy import KeyType
from iotdps.provisioning.registration import RegistrationRequest, allocate_builtin_for, plan_for
from iotdps.provisioning.service import ProvisioningService

__all__ = ["explain_registration"]


async def explain_registration(service: ProvisioningService, registration_id: str, credential: Credential) -> list[str]:
    async with service.store.read() as uow:
        settings = await service.service_settings(uow)
        linked = list(await uow.hubs.list())
    auth = await service.authenticate(settings.id_scope, registration_id, credential)
    lines = auth.decision.explain()
    if auth.decision.admitted:
        plan = plan_for(RegistrationRequest(settings.id_scope, registration_id, credential), auth, settings)
        lines.append(f"device id: {plan.device_id}; allocation policy: {plan.policy}")
        if plan.policy == "custom":
            lines.append("hub: chosen by the custom allocation webhook (not called by explain)")
        else:
            allocated = allocate_builtin_for(plan, linked)
            if allocated.refusal is not None:
                lines.append(f"hub: none -> {allocated.refusal.reason}: {allocated.refusal.message}")
            else:
                lines.append(f"hub: {allocated.hub} (unless the reprovision policy keeps the current hub)")
        lines.extend(await _issuance_lines(service, plan.settings))
    return lines


async def _issuance_lines(service: ProvisioningService, settings: EnrollmentSettings) -> list[str]:
    """What certificate issuance this device's registration would involve (issue 18)."""
    policy = settings.issuance_policy
    out: list[str] = []
    if policy is None:
        out.append("certificate issuance: none (a CSR in the register request is refused: CSR_NOT_EXPECTED)")
    else:
        async with service.store.read() as uow:
            ca = await uow.issuing_cas.get(policy.certificate_authority_name)
        where = f"{ca.kind} issuing CA" if ca is not None else "MISSING issuing CA (ISSUING_CA_UNKNOWN)"
        keys = ", ".join(t.value for t in KeyType if t in policy.accepted_key_types)
        out.append(
            f"certificate issuance: {where} {policy.certificate_authority_name!r}, {policy.validity_days} days, "
            f"CSR {policy.csr_requirement.value} (api-version 2025-07-01-preview or 2021-11-01-preview), "
            f"CN = registration id, key types {keys}"
        )
        if policy.keep_existing_credential:
            out.append("hub credential: the issued certificate and the device's own credential (kept by the policy)")
        else:
            out.append("hub credential: the issued certificate only (the device's own credential stops working there)")
    if settings.trust_bundle_id:
        out.append(f"trust bundle: {settings.trust_bundle_id} (sent with the preview api-versions)")
    return out
