"""`iotdps explain` and the API's /explain: the decision for a device in words, without registering.

The precedence walk of attestation and `enrollment.resolve`, the decision, and for an admitted
device its device id and the hub a built-in allocation policy would choose. The custom webhook is
never called from here. The scope is the service's own.
"""

from __future__ import annotations

from iotdps.evidence import Credential
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
    return lines
