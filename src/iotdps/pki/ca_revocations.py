"""What the CA directory revoked, and the CRLs it signs (the model: `pki.revocation`).

Beside the index (pki.cadir), one file and one directory:

    revocations.json   {"version": 1, "crlUrl": template or null, "cas": {CA name: {
                           "number": last CRL number, "days": CRL lifetime,
                           "revoked": [{"serial": hex, "revokedAt": ISO, "reason": ..., "subject": ...}]}}}
    crl/<name>.crl.pem the CA's latest CRL, signed by its key (file or token)

A revocation is recorded under the CA that issued the certificate (the CA whose CRL lists it):
a device under its line CA, a line CA under its factory CA. Entries are never removed: a
revoked certificate stays revoked. Every change writes the issuing CA's next CRL at once (its
number one higher), under the directory's lock, so two commands cannot hand out one number.
`crl generate` re-signs CRLs before their nextUpdate (run it from cron on the CA's machine).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from iotdps.errors import InvalidInput, NotFound, PkiError
from iotdps.fsutil import atomic_write
from iotdps.pki.cadir import REVOCATIONS_FILE, CaDirectory
from iotdps.pki.certs import certificate_label, signed_by
from iotdps.pki.issuer import Issuer
from iotdps.pki.revocation import RevokedEntry, build_crl, crl_pem, load_crl, parse_reason

__all__ = ["CaRevocations", "Revoked"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Revoked:
    """The outcome of one `revoke`: under which CA, and whether it was new."""

    issuer: str
    entry: RevokedEntry
    new: bool


def _serial_hex(serial: int) -> str:
    return f"{serial:X}"


def _entry_json(entry: RevokedEntry) -> dict[str, Any]:
    return {
        "serial": _serial_hex(entry.serial),
        "revokedAt": entry.revoked_at.isoformat(),
        "reason": entry.reason,
        "subject": entry.subject,
    }


def _entry_from(doc: Any) -> RevokedEntry:
    return RevokedEntry(
        int(doc["serial"], 16),
        dt.datetime.fromisoformat(doc["revokedAt"]),
        str(doc.get("reason") or "unspecified"),
        str(doc.get("subject") or ""),
    )


def parse_serial(text: str) -> int:
    """A serial number as operators copy it: hex, with or without 0x or colons."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InvalidInput(f"serial {text!r} is not a hexadecimal number") from None
    if value <= 0 or value.bit_length() > 160:
        raise InvalidInput(f"serial {text!r} is not a certificate serial number (1 to 20 octets)")
    return value


class CaRevocations:
    """The revocation register of one CA directory."""

    def __init__(self, cadir: CaDirectory) -> None:
        self.cadir = cadir
        self._file = cadir.path / REVOCATIONS_FILE

    # -- the file ---------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        if not self._file.exists():
            return {"version": _VERSION, "crlUrl": None, "cas": {}}
        try:
            raw = json.loads(self._file.read_text("utf-8"))
            if raw.get("version") != _VERSION or not isinstance(raw.get("cas"), dict):
                raise ValueError
            return dict(raw)
        except (ValueError, OSError, AttributeError):
            raise PkiError(f"the revocation register {self._file} is damaged") from None

    def _write(self, doc: dict[str, Any]) -> None:
        atomic_write(self._file, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o644)

    # -- the CRL distribution point -----------------------------------------------------------

    def set_crl_url(self, template: str | None) -> None:
        """Where CRLs are published: a URL, `{ca}` standing for the issuing CA's name (the name
        the service knows it by), e.g. http://crl.example.com/crl/{ca}.crl. None: no CDP."""
        if template is not None and not template.startswith(("http://", "https://")):
            raise InvalidInput(f"the CRL URL must start with http:// (or https://), not {template!r}")
        with self.cadir.locked():
            doc = self._read()
            doc["crlUrl"] = template
            self._write(doc)

    def crl_url_template(self) -> str | None:
        value = self._read().get("crlUrl")
        return value if isinstance(value, str) and value else None

    # -- revocations --------------------------------------------------------------------------

    def entries(self, ca: str) -> list[RevokedEntry]:
        section = self._read()["cas"].get(ca) or {}
        try:
            return [_entry_from(e) for e in section.get("revoked", [])]
        except (KeyError, ValueError, TypeError):
            raise PkiError(f"the revocation register {self._file} is damaged at CA {ca!r}") from None

    def issuer_of(self, cert: x509.Certificate) -> str:
        """The name of the CA of this directory that signed `cert`."""
        for rec in self.cadir.records():
            ca = self.cadir.certificate(rec.name)
            if ca.subject == cert.issuer and signed_by(cert, ca) and ca != cert:
                return rec.name
        raise NotFound(f"no CA in {self.cadir.path} signed {certificate_label(cert)}")

    def revoke(self, issuer: Issuer, serial: int, reason: str, now: dt.datetime, *, subject: str = "") -> Revoked:
        """Record that CA `issuer` revoked `serial` and write its next CRL (signed by `issuer`).
        Revoking again keeps the first date and reason and re-signs nothing."""
        parse_reason(reason)
        name = self._name(issuer)
        entry = RevokedEntry(serial, now, reason, subject)
        with self.cadir.locked():
            doc = self._read()
            section = doc["cas"].setdefault(name, {"number": 0, "revoked": []})
            for existing in section["revoked"]:
                if int(existing["serial"], 16) == serial:
                    return Revoked(name, _entry_from(existing), False)
            section["revoked"].append(_entry_json(entry))
            self._sign_locked(doc, issuer, now, None)
        return Revoked(name, entry, True)

    # -- CRLs ---------------------------------------------------------------------------------

    def crl_path(self, ca: str) -> Path:
        return self.cadir.path / "crl" / f"{ca}.crl.pem"

    def current_crl(self, ca: str) -> x509.CertificateRevocationList | None:
        path = self.crl_path(ca)
        if not path.exists():
            return None
        return load_crl(path.read_bytes())

    def generate(self, issuer: Issuer, now: dt.datetime, days: int | None = None) -> x509.CertificateRevocationList:
        """Sign CA `issuer`'s next CRL now (the same entries, the next number)."""
        with self.cadir.locked():
            doc = self._read()
            doc["cas"].setdefault(self._name(issuer), {"number": 0, "revoked": []})
            return self._sign_locked(doc, issuer, now, days)

    def due(self, now: dt.datetime) -> list[str]:
        """CAs whose CRL must be re-signed: no CRL yet though it revoked something, or past half
        its validity (so a missed run still leaves time before nextUpdate)."""
        out = []
        doc = self._read()
        for rec in self.cadir.records():
            crl = self.current_crl(rec.name)
            if crl is None:
                if (doc["cas"].get(rec.name) or {}).get("revoked"):
                    out.append(rec.name)
                continue
            next_update = crl.next_update_utc
            if next_update is None or now >= crl.last_update_utc + (next_update - crl.last_update_utc) / 2:
                out.append(rec.name)
        return out

    def all_crls(self) -> list[tuple[str, x509.Certificate, x509.CertificateRevocationList]]:
        """Every CRL of this directory with its CA, for `cert verify`."""
        out = []
        for rec in self.cadir.records():
            crl = self.current_crl(rec.name)
            if crl is not None:
                out.append((rec.name, self.cadir.certificate(rec.name), crl))
        return out

    def _name(self, issuer: Issuer) -> str:
        if issuer.name is None:
            raise InvalidInput("the issuing CA has no name in this directory")
        return issuer.name

    def _sign_locked(
        self, doc: dict[str, Any], issuer: Issuer, now: dt.datetime, days: int | None
    ) -> x509.CertificateRevocationList:
        name = self._name(issuer)
        section = doc["cas"][name]
        number = int(section.get("number") or 0) + 1
        lifetime = days if days is not None else int(section.get("days") or 7)
        if not 1 <= lifetime <= 366:
            raise InvalidInput("a CRL's lifetime is 1..366 days")
        entries = [_entry_from(e) for e in section.get("revoked", [])]
        crl = build_crl(issuer, entries, number=number, this_update=now, next_update=now + dt.timedelta(days=lifetime))
        path = self.crl_path(name)
        path.parent.mkdir(mode=0o755, exist_ok=True)
        atomic_write(path, crl_pem(crl).encode("ascii"), mode=0o644)
        section["number"] = number
        section["days"] = lifetime
        self._write(doc)
        return crl
