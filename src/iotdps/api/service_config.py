"""Handlers of the service configuration: CA certificates (proof of possession), linked hubs,
service settings, recent refusals and `explain`.

Azure keeps these in ARM, not in the DPS data plane, so the paths are ours; the bodies follow
the ARM shapes (azure-wire-protocol.md 4.7 and 5): a CA is `{name, etag, properties: {subject,
expiry, thumbprint, isVerified, created, updated, certificate}}` and an upload takes
`{"certificate": ..., "isVerified": ...}` or the same inside `properties`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from aiohttp import web

from iotdps.allocation.hubs import LinkedHub
from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
from iotdps.attestation.x509 import evidence_from_chain
from iotdps.enrollment.models import ALLOCATION_POLICIES
from iotdps.errors import InvalidInput, NotFound
from iotdps.evidence import SasCredential, TpmEvidence
from iotdps.ids import check_registration_id
from iotdps.pki import certs
from iotdps.pki.encoding import load_certificate, load_certificates
from iotdps.ports import Refusal
from iotdps.provisioning import config_admin
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.provisioning.explain import explain_registration
from iotdps.provisioning.settings import ServiceSettings
from iotdps.provisioning.trust import trust_anchors
from iotdps.sas import make_sas_token
from iotdps.secret import Secret
from iotdps.timestamps import format_time

__all__ = [
    "delete_ca",
    "delete_hub",
    "explain",
    "generate_verification_code",
    "get_ca",
    "get_hub",
    "get_settings",
    "list_cas",
    "list_hubs",
    "list_refusals",
    "patch_hub",
    "put_ca",
    "put_hub",
    "put_settings",
    "verify_ca",
]

_REFUSALS_MAX = 1000


def _ca_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > 128 or any(c in name for c in "/\\?#"):
        raise InvalidInput("a CA name is 1..128 characters without / \\ ? #")
    return name


def _certificate_field(doc: Mapping[str, Any], what: str) -> str:
    props = doc.get("properties")
    source = json_object(props, "properties") if props is not None else doc
    cert = source.get("certificate")
    if not isinstance(cert, str) or not cert.strip():
        raise InvalidInput(f"{what} needs certificate: a PEM or base64 DER string")
    return cert


# --------------------------------------------------------------------------- CA certificates


async def list_cas(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.begin() as uow:
        found = await uow.cas.list()
    return json_response({"value": [ca.to_json() for ca in found]})


async def get_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    async with ctx.store.begin() as uow:
        ca = await uow.cas.get(name)
    if ca is None:
        raise NotFound(f"CA certificate {name} not found")
    return json_response(ca.to_json(), etag=ca.etag)


async def put_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    doc = json_object(await read_json(request, ctx), "the CA certificate")
    pem = _certificate_field(doc, "a CA upload")
    props = doc.get("properties")
    source = props if isinstance(props, Mapping) else doc
    verified = source.get("isVerified", False)
    if verified is None:
        verified = False
    if not isinstance(verified, bool):
        raise InvalidInput("isVerified must be true or false")
    cert = load_certificate(pem)
    if not certs.is_ca(cert):
        raise InvalidInput("the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)")
    async with ctx.store.begin() as uow:
        before = await uow.cas.get(name)
    saved = await _cas(ctx).upload_ca(name, pem, verified, if_match(request))
    if saved.is_verified or (before is not None and before.is_verified):
        await ctx.trust_changed()
    return json_response(saved.to_json(), etag=saved.etag)


def _cas(ctx: ApiContext) -> CaAdminService:
    return CaAdminService(ctx.store, ctx.service.clock, actor=ctx.acting)


async def delete_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    await _cas(ctx).delete_ca(name, if_match(request))
    await ctx.trust_changed()
    return web.Response(status=204)


async def generate_verification_code(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    code, saved = await _cas(ctx).generate_verification_code(name, if_match(request))
    doc = saved.to_json()
    doc["properties"]["verificationCode"] = code
    if saved.verification_code_expires is not None:
        doc["properties"]["verificationCodeExpiry"] = format_time(saved.verification_code_expires)
    return json_response(doc, etag=saved.etag)


async def verify_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    doc = json_object(await read_json(request, ctx), "the verification request")
    pem = _certificate_field(doc, "a verification request")
    saved = await _cas(ctx).verify_ca(name, pem, if_match(request))
    await ctx.trust_changed()
    return json_response(saved.to_json(), etag=saved.etag)


# --------------------------------------------------------------------------- linked hubs


def _hub_name(request: web.Request) -> str:
    name = request.match_info["name"].strip().lower()
    if not name or len(name) > 253 or not all(c.isascii() and (c.isalnum() or c in "-.:") for c in name):
        raise InvalidInput("a linked hub is named by its host name (letters, digits, - . :)")
    return name


def _hub_fields(doc: Mapping[str, Any], base: LinkedHub) -> LinkedHub:
    weight = doc.get("allocationWeight", base.allocation_weight)
    if weight is None:
        weight = 1
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise InvalidInput("allocationWeight must be an integer 1..1000")
    apply = doc.get("applyAllocationPolicy", base.apply_allocation_policy)
    if apply is None:
        apply = True
    if not isinstance(apply, bool):
        raise InvalidInput("applyAllocationPolicy must be true or false")
    location = doc.get("location", base.location)
    if location is not None and not isinstance(location, str):
        raise InvalidInput("location must be a string")
    # An operator's change makes an implicit hub theirs (it no longer follows the DPS host);
    # the serving lease is the nodes' business and is kept.
    return replace(base, allocation_weight=weight, apply_allocation_policy=apply, location=location, implicit=False)


async def list_hubs(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.begin() as uow:
        hubs = await uow.hubs.list()
    return json_response([h.to_json() for h in hubs])


async def get_hub(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _hub_name(request)
    async with ctx.store.begin() as uow:
        hub = await uow.hubs.get(name)
    if hub is None:
        raise NotFound(f"hub {name} is not linked")
    return json_response(hub.to_json())


async def put_hub(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Link a hub, or replace its settings (fields left out take their defaults)."""
    name = _hub_name(request)
    doc = await read_json(request, ctx, required=False)
    hub = _hub_fields(json_object(doc if doc is not None else {}, "the linked hub"), LinkedHub(name))
    saved = await config_admin.link_hub(ctx.store, hub, actor=ctx.acting)
    return json_response(saved.to_json())


async def patch_hub(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Change a linked hub's weight, applyAllocationPolicy or location; the rest stays."""
    name = _hub_name(request)
    doc = json_object(await read_json(request, ctx), "the linked hub update")
    saved = await config_admin.update_hub(ctx.store, name, lambda current: _hub_fields(doc, current), actor=ctx.acting)
    return json_response(saved.to_json())


async def delete_hub(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _hub_name(request)
    await config_admin.unlink_hub(ctx.store, name, actor=ctx.acting)
    return web.Response(status=204)


# --------------------------------------------------------------------------- settings, refusals, explain


def _settings_json(settings: ServiceSettings) -> dict[str, Any]:
    return {"idScope": settings.id_scope, "allocationPolicy": settings.default_allocation_policy}


async def get_settings(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.begin() as uow:
        found = await uow.settings.get()
    found = found or ctx.service.default_settings
    if found is None:
        raise NotFound("the service has no settings yet (ID scope)")
    return json_response(_settings_json(found))


async def put_settings(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    doc = json_object(await read_json(request, ctx), "the service settings")
    scope = doc.get("idScope")
    if not isinstance(scope, str) or not scope.strip() or len(scope) > 64 or not scope.isascii():
        raise InvalidInput("idScope is required: a short ASCII string such as 0ne00000001")
    policy = doc.get("allocationPolicy", "hashed")
    if policy not in ALLOCATION_POLICIES or policy == "custom":
        raise InvalidInput("allocationPolicy must be hashed, geoLatency or static")
    settings = ServiceSettings(scope.strip(), cast(Any, policy))
    saved = await config_admin.put_settings(ctx.store, settings, actor=ctx.acting)
    return json_response(_settings_json(saved))


async def list_refusals(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    rid = request.query.get("registrationId") or None
    raw_limit = request.query.get("limit", "100")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidInput("limit must be a number") from None
    if not 1 <= limit <= _REFUSALS_MAX:
        raise InvalidInput(f"limit must be 1..{_REFUSALS_MAX}")
    async with ctx.store.begin() as uow:
        found = await uow.refusals.list(rid, limit)
    return json_response([_refusal_json(r) for r in found])


def _refusal_json(refusal: Refusal) -> dict[str, Any]:
    """One entry: the attempts with one reason, registration id and peer. `timestampUtc` is
    the latest attempt (what it was when an entry was one attempt)."""
    last = refusal.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "registrationId": refusal.registration_id,
        "reason": refusal.reason,
        "message": refusal.message,
        "attestationType": refusal.attestation_type,
        "enrollment": refusal.enrollment,
        "timestampUtc": last,
        "peerAddress": refusal.peer,
        "count": refusal.count,
        "firstSeenUtc": refusal.first_seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastSeenUtc": last,
    }


async def explain(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """The precedence walk for a device, without registering it: give `certificates` (the
    device chain, leaf first, PEM) or `registrationId` and `symmetricKey` or `endorsementKey` (TPM)."""
    doc = json_object(await read_json(request, ctx), "the explain request")
    chain_text, rid, key = doc.get("certificates"), doc.get("registrationId"), doc.get("symmetricKey")
    ek = doc.get("endorsementKey")
    for field, value in (
        ("certificates", chain_text),
        ("registrationId", rid),
        ("symmetricKey", key),
        ("endorsementKey", ek),
    ):
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{field} must be a string")
    svc = ctx.service
    if chain_text:
        chain = load_certificates(str(chain_text))
        registration_id = str(rid) if rid else (certs.common_name(chain[0]) or "")
        evidence = evidence_from_chain(chain, await trust_anchors(ctx.store), svc.clock.now())
        lines = [f"registration id: {registration_id}"]
        if evidence.verified is None:
            lines.append(f"chain: not trusted by the TLS layer ({'; '.join(evidence.errors)})")
        else:
            lines.append("chain: " + " -> ".join(certs.describe(c) for c in evidence.verified))
        return json_response({"lines": lines + await explain_registration(svc, registration_id, evidence)})
    if rid and ek:
        # A TPM device: does its EK match, would it get the challenge (no SAS to check here).
        registration_id = check_registration_id(str(rid))
        lines = [f"registration id: {registration_id}"]
        tpm = TpmEvidence(str(ek))
        return json_response({"lines": lines + await explain_registration(svc, registration_id, tpm)})
    if not rid or not key:
        raise InvalidInput("give certificates, or registrationId and symmetricKey or endorsementKey")
    registration_id = check_registration_id(str(rid))
    async with ctx.store.begin() as uow:
        settings = await uow.settings.get()
    settings = settings or svc.default_settings
    if settings is None:
        raise NotFound("the service has no settings yet (ID scope)")
    try:
        token = make_sas_token(settings.id_scope, registration_id, str(key), int(svc.clock.now().timestamp()) + 300)
    except ValueError:
        raise InvalidInput("symmetricKey is not base64") from None
    lines = [f"registration id: {registration_id}"]
    credential = SasCredential(Secret(token))
    return json_response({"lines": lines + await explain_registration(svc, registration_id, credential)})
