"""The device's TPM 2.0 through tpm2-pytss (the optional `iotdps[tpm]` extra).

What a TPM device does for DPS (azure-wire-protocol.md 3), the way the Azure C and Node SDKs
do it, so a TPM set up for one works for the others:

* the EK at persistent handle 0x81010001 and the SRK at 0x81000001 are read, never replaced
  (`provision_keys` creates them only where nothing is yet: a fresh software TPM);
* an activation blob is imported with ActivateCredential (the EK under a
  PolicySecret(endorsement) session, the SRK as the object the credential is bound to), then
  Import under the SRK with the recovered AES-128-CFB inner key, Load, and EvictControl to
  0x81000100, replacing the key there. The key never leaves the TPM;
* SAS signatures are TPM2_HMAC with that key.

tpm2-pytss is imported when a `Tpm` is opened, so the rest of the device client (and the
service) installs and runs without the native TSS libraries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from iotdps.errors import IotdpsError

__all__ = ["EK_HANDLE", "ID_KEY_HANDLE", "SRK_HANDLE", "Tpm", "TpmError", "split_activation_blob"]

EK_HANDLE = 0x81010001
SRK_HANDLE = 0x81000001
ID_KEY_HANDLE = 0x81000100

# The SDKs' SRK: a restricted storage key that needs no auth session and has no DA lockout.
_SRK_ATTRIBUTES = "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"
_MAX_HMAC_INPUT = 1024  # TPM2B_MAX_BUFFER on common TPMs; a SAS string-to-sign is far shorter
_BLOB_FIELDS = 6


class TpmError(IotdpsError):
    """The TPM (or the TSS talking to it) refused or failed; the message says which step."""


def split_activation_blob(blob: bytes) -> list[bytes]:
    """The blob's six fields, each with its UINT16 size (azure-wire-protocol.md 3.3).

    Our own small parser so the device client does not import the service's attestation code."""
    fields: list[bytes] = []
    pos = 0
    for _ in range(_BLOB_FIELDS):
        if pos + 2 > len(blob):
            raise TpmError("activation blob is truncated")
        size = int.from_bytes(blob[pos : pos + 2], "big")
        if pos + 2 + size > len(blob):
            raise TpmError("activation blob is truncated")
        fields.append(blob[pos : pos + 2 + size])
        pos += 2 + size
    if pos != len(blob):
        raise TpmError("activation blob has trailing bytes")
    return fields


def _pytss() -> Any:
    try:
        import tpm2_pytss
        import tpm2_pytss.utils  # create_ek_template, NoSuchIndex: not imported by the package
    except ImportError as exc:  # the extra is not installed, or libtss2 is missing at run time
        raise TpmError(
            f"TPM support needs tpm2-pytss: pip install 'iotdps[tpm]' (builds against libtss2-dev) ({exc})"
        ) from None
    return tpm2_pytss


class Tpm:
    """One open TPM. `tcti` is a tpm2-tools TCTI string: `device:/dev/tpmrm0` on a device,
    `swtpm:host=127.0.0.1,port=2321` for a software TPM. Calls are serialised: a TPM runs one
    command at a time, and the asyncio client calls in from worker threads. No connection is
    held between calls (swtpm serves one client at a time, and tpm2-tools may want the TPM)."""

    def __init__(self, tcti: str) -> None:
        self._t = _pytss()
        self.tcti = tcti
        self._lock = threading.Lock()
        self._esapi: Any = None
        with self._open():  # fail here, with the TCTI named, when the TPM cannot be reached
            pass

    @contextmanager
    def _open(self) -> Iterator[None]:
        """One ESAPI context per operation, under the lock. ESAPI caches what it knows of each
        persistent handle while its context lives; the ID key at 0x81000100 is replaced on
        every import, and a long-lived context then refuses the new key ("name mismatch")."""
        with self._lock:
            try:
                self._esapi = self._t.ESAPI(self.tcti)
            except Exception as exc:  # the TSS raises its own types; say where, not a traceback
                raise TpmError(f"cannot open the TPM at {self.tcti!r}: {exc}") from None
            try:
                yield
            finally:
                self._esapi.close()
                self._esapi = None

    def close(self) -> None:
        """Nothing stays open between operations; kept so a Tpm can be used with `with`."""

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ keys

    def _persistent(self) -> set[int]:
        t = self._t
        handles: set[int] = set()
        more, start = True, int(t.TPM2_HC.PERSISTENT_FIRST)
        while more:
            more, data = self._esapi.get_capability(t.TPM2_CAP.HANDLES, start, 64)
            found = [int(h) for h in data.data.handles]
            handles.update(found)
            if not found:
                break
            start = max(found) + 1
        return handles

    def _read_public(self, handle: int, what: str) -> bytes:
        with self._open():
            if handle not in self._persistent():
                raise TpmError(f"no {what} at 0x{handle:08x}: provision the TPM first (see the README)")
            tr = self._esapi.tr_from_tpmpublic(handle)
            try:
                public, _, _ = self._esapi.read_public(tr)
            finally:
                self._esapi.tr_close(tr)
            return bytes(public.marshal())

    def endorsement_key(self) -> bytes:
        """The EK's marshaled TPM2B_PUBLIC, what an enrollment and the register body carry."""
        return self._read_public(EK_HANDLE, "endorsement key")

    def storage_root_key(self) -> bytes:
        return self._read_public(SRK_HANDLE, "storage root key")

    def provision_keys(self) -> None:
        """Create the EK (TCG default RSA-2048 template) and the SRK where none is persisted.

        For a fresh software TPM (the fleet simulator); a real device's keys are left alone."""
        t = self._t
        with self._open():
            present = self._persistent()
            if EK_HANDLE not in present:

                def no_nv(index: int) -> bytes:
                    raise t.utils.NoSuchIndex(index)

                _, template = t.utils.create_ek_template("EK-RSA2048", no_nv)
                self._create_persistent(t.ESYS_TR.ENDORSEMENT, template, EK_HANDLE)
            if SRK_HANDLE not in present:
                template = t.TPM2B_PUBLIC.parse(
                    "rsa2048:null:aes128cfb", objectAttributes=t.TPMA_OBJECT.parse(_SRK_ATTRIBUTES)
                )
                self._create_persistent(t.ESYS_TR.OWNER, template, SRK_HANDLE)

    def _create_persistent(self, hierarchy: Any, template: Any, handle: int) -> None:
        t = self._t
        try:
            tr, _, _, _, _ = self._esapi.create_primary(t.TPM2B_SENSITIVE_CREATE(), template, hierarchy)
            try:
                self._close(self._esapi.evict_control(t.ESYS_TR.OWNER, tr, handle))
            finally:
                self._esapi.flush_context(tr)  # swtpm has three transient slots
        except t.TSS2_Exception as exc:
            raise TpmError(f"creating the key at 0x{handle:08x} failed: {exc}") from None

    def _close(self, tr: Any) -> None:
        if tr != self._t.ESYS_TR.NONE:
            self._esapi.tr_close(tr)

    # ------------------------------------------------------------------ the challenge

    def activate(self, blob: bytes) -> None:
        """Import an activation blob; its key becomes the one at 0x81000100 (see the module doc)."""
        t = self._t
        fields = split_activation_blob(blob)
        try:
            id_object, _ = t.TPM2B_ID_OBJECT.unmarshal(fields[0])
            secret, _ = t.TPM2B_ENCRYPTED_SECRET.unmarshal(fields[1])
            duplicate, _ = t.TPM2B_PRIVATE.unmarshal(fields[2])
            seed, _ = t.TPM2B_ENCRYPTED_SECRET.unmarshal(fields[3])
            public, _ = t.TPM2B_PUBLIC.unmarshal(fields[4])
        except Exception as exc:  # the unmarshalers raise TSS errors on malformed fields
            raise TpmError(f"activation blob is malformed: {exc}") from None
        with self._open():
            esapi = self._esapi
            ek = esapi.tr_from_tpmpublic(EK_HANDLE)
            srk = esapi.tr_from_tpmpublic(SRK_HANDLE)
            try:
                inner_key = self._activate_credential(ek, srk, id_object, secret)
                symmetric = t.TPMT_SYM_DEF_OBJECT.parse("aes128cfb")
                try:
                    private = esapi.import_(srk, inner_key, public, duplicate, seed, symmetric)
                    loaded = esapi.load(srk, private, public)
                except t.TSS2_Exception as exc:
                    raise TpmError(f"the TPM refused to import the key: {exc}") from None
                try:
                    if ID_KEY_HANDLE in self._persistent():
                        old = esapi.tr_from_tpmpublic(ID_KEY_HANDLE)
                        self._close(esapi.evict_control(t.ESYS_TR.OWNER, old, ID_KEY_HANDLE))  # closes `old`
                    # Close the new persistent object's handle too: ESAPI remembers a handle's
                    # name while one is open, and the next import would then not match it.
                    self._close(esapi.evict_control(t.ESYS_TR.OWNER, loaded, ID_KEY_HANDLE))
                finally:
                    esapi.flush_context(loaded)
            finally:
                esapi.tr_close(ek)
                esapi.tr_close(srk)

    def _activate_credential(self, ek: Any, srk: Any, id_object: Any, secret: Any) -> bytes:
        t = self._t
        esapi = self._esapi
        # The TCG EK's policy is PolicySecret(endorsement): satisfied in a policy session.
        session = esapi.start_auth_session(
            t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.POLICY, t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL),
            t.TPM2_ALG.SHA256,
        )  # fmt: skip
        try:
            esapi.policy_secret(t.ESYS_TR.ENDORSEMENT, session)
            credential = esapi.activate_credential(
                srk, ek, id_object, secret, session1=t.ESYS_TR.PASSWORD, session2=session
            )
        except t.TSS2_Exception as exc:
            raise TpmError(f"the TPM refused the credential (not made for this TPM's EK and SRK): {exc}") from None
        finally:
            esapi.flush_context(session)
        return bytes(credential.buffer)

    def sign(self, data: bytes) -> bytes:
        """HMAC-SHA-256 inside the TPM with the imported key (a SAS signature)."""
        if len(data) > _MAX_HMAC_INPUT:
            raise TpmError(f"data to sign is {len(data)} bytes; the TPM takes at most {_MAX_HMAC_INPUT}")
        t = self._t
        with self._open():
            if ID_KEY_HANDLE not in self._persistent():
                raise TpmError("no key imported yet at 0x81000100: the device must provision first")
            key = self._esapi.tr_from_tpmpublic(ID_KEY_HANDLE)
            try:
                digest = self._esapi.hmac(key, data, t.TPM2_ALG.SHA256)
            except t.TSS2_Exception as exc:
                raise TpmError(f"TPM2_HMAC failed: {exc}") from None
            finally:
                self._esapi.tr_close(key)
            return bytes(digest.buffer)
