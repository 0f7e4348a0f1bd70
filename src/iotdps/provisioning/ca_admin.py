"""CA proof of possession: upload a CA certificate, hand out a verification code, verify; and
the CA's CRL (`upload_crl`; the model is `pki.revocation`'s docstring).

An uploaded CA is a trust anchor only once verified: the service gives out a random code (single
use, expiring after `verification_code_ttl`), and a verification certificate whose CN is that
code, signed by the CA's key, proves that whoever asks holds the key (azure-wire-protocol.md 5).
The code rules are `pki.verification`'s; the signature check is `pki.certs.signed_by`.

The management API and the CLI call this service; the CLI against a remote server calls the
same three operations over the API (`iotdps.ports.CaAdmin`). Each change appends its audit entry
(iotdps.audit) in its own transaction, naming the `actor` the service was made for.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from iotdps.audit import Actor, record
from iotdps.enrollment.cas import CaCertificate
from iotdps.errors import InvalidInput, NotFound
from iotdps.pki import certs
from iotdps.pki.encoding import certificate_info, load_certificate
from iotdps.pki.revocation import check_crl, crl_pem, load_crl, summarize
from iotdps.pki.verification import code_matches, new_code
from iotdps.ports import Clock, Store, SystemClock
from iotdps.secret import Secret
from iotdps.timestamps import format_time

__all__ = ["DEFAULT_VERIFICATION_CODE_TTL", "CaAdminService"]

DEFAULT_VERIFICATION_CODE_TTL = timedelta(hours=1)


class CaAdminService:
    """The local `CaAdmin`: proof of possession against the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        *,
        actor: Actor,
        verification_code_ttl: timedelta = DEFAULT_VERIFICATION_CODE_TTL,
    ) -> None:
        self.store = store
        self.actor = actor  # who the audit trail names for this service's changes
        self.clock: Clock = clock or SystemClock()
        self.verification_code_ttl = verification_code_ttl

    async def upload_ca(
        self, name: str, pem: str, verified: bool = False, if_match: str | None = None
    ) -> CaCertificate:
        """Upload (or replace) a CA certificate. A replaced certificate loses its verification."""
        if not name or any(c in name for c in "/\\?#") or len(name) > 128:
            raise InvalidInput("a CA name is 1..128 characters without / \\ ? #")
        cert = load_certificate(pem)
        ca = CaCertificate(name, certs.to_pem(cert), certificate_info(cert), is_verified=verified)
        async with self.store.begin() as uow:
            existing = await uow.cas.get(name)
            if existing is not None and existing.sha256_thumbprint == ca.sha256_thumbprint:
                # The same certificate again: its CRL stays (a new certificate drops it: the
                # CRL was checked against the old one's key).
                ca = replace(ca, crl=existing.crl, crl_info=existing.crl_info)
                if not verified:
                    ca = replace(ca, is_verified=existing.is_verified)
            saved = await uow.cas.put(ca, if_match)
            detail = {"sha256Thumbprint": saved.sha256_thumbprint, "verified": saved.is_verified}
            await record(uow, self.actor, "ca.upload", f"ca/{name}", before=existing, after=saved, detail=detail)
            return saved

    async def upload_crl(self, name: str, data: str | bytes, if_match: str | None = None) -> CaCertificate:
        """Hold `data` (PEM or DER) as CA `name`'s CRL, after checking it is that CA's (issuer,
        signature by its key, cRLSign, a nextUpdate, not in the future) and not older than the
        CRL held now (a lower CRL number would un-revoke what the newer one lists). An expired
        CRL is refused: upload a fresh one (`iotdps crl generate`)."""
        crl = load_crl(data)
        now = self.clock.now()
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            check_crl(crl, load_certificate(ca.certificate), now)
            summary = summarize(crl)
            if summary.expired(now):
                assert summary.next_update is not None
                raise InvalidInput(
                    f"the CRL of CA {name} expired at {summary.next_update:%Y-%m-%d %H:%M:%SZ} (its nextUpdate); "
                    "regenerate it where the CA key is (iotdps crl generate) and upload that"
                )
            held = ca.crl_info.get("number") if ca.crl_info else None
            if isinstance(held, int) and summary.number is not None and summary.number < held:
                raise InvalidInput(
                    f"the CRL's number {summary.number} is older than the one held for CA {name} ({held})"
                )
            info = {
                "number": summary.number,
                "thisUpdate": format_time(summary.this_update),
                "nextUpdate": format_time(summary.next_update) if summary.next_update else None,
                "revokedCount": summary.revoked,
            }
            saved = await uow.cas.put(replace(ca, crl=crl_pem(crl), crl_info=info), if_match)
            detail = {"crlNumber": summary.number, "revokedCount": summary.revoked}
            await record(uow, self.actor, "ca.crl-upload", f"ca/{name}", before=ca, after=saved, detail=detail)
            return saved

    async def generate_verification_code(self, name: str, if_match: str | None = None) -> tuple[str, CaCertificate]:
        """A fresh random code (single use, expires after `verification_code_ttl`); the previous
        outstanding code, if any, is replaced. Returns the code and the updated record."""
        code = new_code()
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            updated = replace(
                ca,
                verification_code=Secret(code),
                verification_code_expires=self.clock.now() + self.verification_code_ttl,
            )
            saved = await uow.cas.put(updated, if_match)
            # The code itself never goes into the log: it is a credential until it is used.
            await record(uow, self.actor, "ca.verification-code", f"ca/{name}", before=ca, after=saved)
        return code, saved

    async def verify_ca(self, name: str, verification_cert_pem: str, if_match: str | None = None) -> CaCertificate:
        """Proof of possession: the certificate's CN is the outstanding code and the CA's key
        signed it. The code is consumed on success."""
        presented = load_certificate(verification_cert_pem)
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            if ca.verification_code is None or ca.verification_code_expires is None:
                raise InvalidInput(f"CA {name} has no outstanding verification code; generate one first")
            if self.clock.now() > ca.verification_code_expires:
                raise InvalidInput(f"the verification code of CA {name} has expired; generate a new one")
            cn = certs.common_name(presented) or ""
            if not code_matches(ca.verification_code, cn):
                raise InvalidInput("the verification certificate's CN is not the outstanding verification code")
            if not certs.signed_by(presented, load_certificate(ca.certificate)):
                raise InvalidInput(f"the verification certificate is not signed by CA {name}")
            verified = replace(ca, is_verified=True, verification_code=None, verification_code_expires=None)
            saved = await uow.cas.put(verified, if_match)
            detail = {"sha256Thumbprint": saved.sha256_thumbprint}
            await record(uow, self.actor, "ca.verify", f"ca/{name}", before=ca, after=saved, detail=detail)
            return saved

    async def delete_ca(self, name: str, if_match: str | None = None) -> CaCertificate:
        """Delete an uploaded CA; returns what was deleted (NotFound when nothing was)."""
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            await uow.cas.delete(name, if_match)
            detail = {"sha256Thumbprint": ca.sha256_thumbprint}
            await record(uow, self.actor, "ca.delete", f"ca/{name}", before=ca, detail=detail)
            return ca
