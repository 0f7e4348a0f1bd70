"""Which hubs take part, and the built-in policies (azure-wire-protocol.md 6.3).

Candidate hubs: the enrollment's `iotHubs` when it names any, else every linked hub; hubs with
applyAllocationPolicy=false never take part. A name in `iotHubs` that is not a linked hub is a
configuration error the operator must see (HUB_NOT_LINKED), not something to skip silently.

`unavailable`: linked hubs no running node serves (allocation.hubs, `served_until`). They are
skipped, since a device sent there could never connect; when that leaves no hub, the device is
refused with NO_HUB saying so, which the operator sees in `iotdps refusals`.
"""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.allocation.geo import choose_geo
from iotdps.allocation.hashed import choose_hashed
from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.models import AllocationPolicy, EnrollmentSettings
from iotdps.refusals import RefusalReason, Refused

__all__ = ["allocate_builtin", "candidate_hubs", "choose_static"]


def _linked_by_name(linked: Sequence[LinkedHub]) -> dict[str, LinkedHub]:
    # Host names are DNS names: compare case-insensitively.
    return {h.host_name.lower(): h for h in linked}


def _unserved(names: Sequence[str]) -> Refused:
    return Refused(
        RefusalReason.NO_HUB,
        f"no running iotdps node serves hub {', '.join(sorted(names))}: start the node that serves it, "
        "or unlink it (iotdps hub remove)",
    )


def candidate_hubs(
    settings: EnrollmentSettings, linked: Sequence[LinkedHub], unavailable: frozenset[str] = frozenset()
) -> list[LinkedHub]:
    by_name = _linked_by_name(linked)
    if settings.iot_hubs:
        unknown = [name for name in settings.iot_hubs if name.lower() not in by_name]
        if unknown:
            raise Refused(
                RefusalReason.HUB_NOT_LINKED, f"hub {', '.join(unknown)} named by the enrollment is not linked"
            )
        named = [by_name[name.lower()] for name in settings.iot_hubs]
    else:
        named = list(linked)
    hubs = [h for h in named if h.apply_allocation_policy]
    if not hubs:
        where = "the enrollment's iotHubs" if settings.iot_hubs else "the linked hubs"
        raise Refused(RefusalReason.NO_HUB, f"no hub of {where} takes part in allocation")
    served = [h for h in hubs if h.host_name not in unavailable]
    if not served:
        raise _unserved([h.host_name for h in hubs])
    return sorted(served, key=lambda h: h.host_name)


def choose_static(
    settings: EnrollmentSettings, linked: Sequence[LinkedHub], unavailable: frozenset[str] = frozenset()
) -> LinkedHub:
    """The one hub the enrollment names (iotHubs with one entry, or legacy iotHubHostName).

    Deviation, on purpose: when the enrollment names no hub and exactly one hub is linked, that
    hub is used, so a single-hub installation with the default policy `static` just works.
    applyAllocationPolicy is not consulted: a static hub is chosen by name, not by a policy.
    """
    by_name = _linked_by_name(linked)
    names = list(settings.iot_hubs) or ([settings.iot_hub_host_name] if settings.iot_hub_host_name else [])
    if len(names) > 1:
        raise Refused(
            RefusalReason.NO_HUB, f"static allocation needs exactly one hub; the enrollment names {len(names)}"
        )
    if not names:
        if len(linked) == 1:
            return _served(linked[0], unavailable)
        raise Refused(RefusalReason.NO_HUB, "static allocation but the enrollment names no hub")
    hub = by_name.get(names[0].lower())
    if hub is None:
        raise Refused(RefusalReason.HUB_NOT_LINKED, f"hub {names[0]} named by the enrollment is not linked")
    return _served(hub, unavailable)


def _served(hub: LinkedHub, unavailable: frozenset[str]) -> LinkedHub:
    # A static hub is chosen by name: there is no other to fall back on, so refuse loudly.
    if hub.host_name in unavailable:
        raise _unserved([hub.host_name])
    return hub


def allocate_builtin(
    policy: AllocationPolicy,
    registration_id: str,
    settings: EnrollmentSettings,
    linked: Sequence[LinkedHub],
    unavailable: frozenset[str] = frozenset(),
) -> LinkedHub:
    """hashed / geoLatency / static. Raises Refused with NO_HUB or HUB_NOT_LINKED."""
    if policy == "static":
        return choose_static(settings, linked, unavailable)
    hubs = candidate_hubs(settings, linked, unavailable)
    if policy == "geoLatency":
        return choose_geo(registration_id, hubs)
    if policy == "hashed":
        return choose_hashed(registration_id, hubs)
    raise ValueError(f"{policy} is not a built-in allocation policy")
