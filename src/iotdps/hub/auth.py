"""Who may CONNECT to a hub: SAS tokens and X.509 leaf thumbprints (azure-wire-protocol.md 8.1).

`check_device` returns None when the device is admitted, or the reason in words for operators
(the device itself only sees CONNACK 5). Hub SAS tokens are device-scoped: `sr` is
`{hostname}/devices/{deviceId}` (percent-encoded), no `skn`, signed with the device's primary
or secondary key. The signature covers `sr` exactly as sent (iotdps.sas.parse_sas keeps it raw).
A token valid further ahead than the maximum lifetime is refused, as at DPS (iotdps.sas).

A device the service issued a certificate to (issue 18) is admitted with that certificate
whatever its type (`DeviceAuth.issued_thumbprints`); its own SAS key or certificate works
beside it only when its enrollment's issuance policy kept them.

X.509 devices that DPS provisioned are `selfSigned`: the leaf's SHA-256 or SHA-1 thumbprint must
be registered. The thumbprint is the identity, as on Azure, so the CN need not be the device id
(an enrollment's deviceId override gives the device another id than its CN). The chain need not reach one of our
anchors, as on the real hub; an expired or not-yet-valid leaf is still refused, and so is a leaf
that breaks the chain policy's rules for device certificates (a CA, a weak key, no clientAuth...:
`iotdps.pki.chain_policy`). `certificateAuthority` devices need a chain that verified against
our anchors under the chain policy (the TLS layer's verdict), plus the CN.

Revocation (the service's CRLs, `iotdps.pki.revocation`) holds for every X.509 device whatever
its auth type: a device whose certificate, or a CA of whose chain, is revoked is refused at
CONNECT (`revoked_chain`), and the hub drops such a device's live connection when a CRL arrives
(`server.hub_live.HubConnections.enforce_revocations`).

A live connection follows its device's identity: when the identity changes (a registration
that issued a certificate without `keepExistingCredential`, a renewal dropping an old issued
certificate, new enrollment keys), the hub re-checks the credential the connection
authenticated with (`ConnectProof`) against the new identity with `recheck_device` and closes
the connection when it is no longer accepted (`server.hub_live.HubConnections.recheck`). The
re-check is the CONNECT check minus its clock: a SAS token's expiry and lifetime, like a
certificate's validity, were checked at CONNECT, and a connection is not dropped for time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from iotdps.evidence import PeerIdentity
from iotdps.hub.devices import DeviceIdentity
from iotdps.pki import certs
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.pki.revocation import Revocations
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME, SasCheck, lifetime_problem, parse_sas, signature_matches
from iotdps.secret import Secret

__all__ = ["ConnectProof", "check_device", "recheck_device", "revoked_chain"]

# OpenSSL verify codes about the leaf's own validity window.
_LEAF_TIME_ERRORS = frozenset({9, 10, 13, 14})
# X509_V_ERR_CERT_REVOKED, which the chain policy's revocation rule reports (chain_policy.Rule).
_REVOKED = 23


@dataclass(frozen=True, slots=True)
class ConnectProof:
    """What a connection authenticated with at CONNECT: its username's host name, its SAS token
    (None for X.509) and its TLS evidence. Kept for the connection's life, for `recheck_device`."""

    hostname: str
    password: Secret[bytes] | None
    peer: PeerIdentity | None


def revoked_chain(peer: PeerIdentity | None, revoked: Revocations) -> str | None:
    """Why the peer's chain is revoked under `revoked`, or None: the verified path when the TLS
    layer built one, else the chain as presented (each issuer signature-checked)."""
    if peer is None or not peer.chain:
        return None
    if peer.verified_chain is not None:
        found = revoked.path_problems(peer.verified_chain)
    else:
        found = revoked.presented_problems(peer.chain)
    if not found:
        return None
    _depth, cert, words = found[0]
    return words.replace("{cert}", certs.certificate_label(cert))


def _check_sas(
    device: DeviceIdentity, hostname: str, password: bytes, now: datetime | None, max_lifetime: int
) -> str | None:
    """`now` None: re-checking a live connection, whose token's times CONNECT checked."""
    auth = device.auth
    if auth.type != "sas":
        if auth.issued_thumbprints:
            # Its enrollment's issuance policy did not keep the device's key (issue 18).
            return f"device {device.device_id} authenticates with its issued certificate only, not a SAS token"
        return f"device {device.device_id} does not authenticate with a SAS token"
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return "the SAS token is not UTF-8"
    token = parse_sas(text)
    if isinstance(token, SasCheck):
        return token.message
    if token.skn is not None:
        return "a device connects with a device token; shared access policies (skn) are not accepted"
    expected = f"{hostname}/devices/{device.device_id}"
    if unquote(token.sr).lower() != expected.lower():
        return f"SAS resource {unquote(token.sr)!r} is not {expected!r}"
    if now is not None:
        if token.expiry < int(now.timestamp()):
            return f"SAS token expired at Unix time {token.expiry}"
        too_long = lifetime_problem(token.expiry, now, max_lifetime)
        if too_long is not None:
            return too_long
    for key in (auth.primary_key, auth.secondary_key):
        if key is not None and signature_matches(token, key.reveal()):
            return None
    return "SAS signature does not match the device's keys"


def _check_x509(device: DeviceIdentity, peer: PeerIdentity | None) -> str | None:
    leaf = peer.leaf if peer is not None else None
    if peer is None or leaf is None:
        return "the device presented neither a SAS token nor a client certificate"
    revoked = next((e for e in peer.verify_errors if e.policy and e.code == _REVOKED), None)
    if revoked is not None:
        return f"the certificate chain is revoked: {revoked.message}"
    if any(e.depth == 0 and e.code in _LEAF_TIME_ERRORS and not e.policy for e in peer.verify_errors):
        return "the device certificate is expired or not yet valid"
    broken = next((e for e in peer.verify_errors if e.depth == 0 and e.policy), None)
    if broken is not None:
        return f"the device certificate breaks the certificate policy: {broken.message}"
    auth = device.auth
    prints = {sha256_thumbprint(leaf), sha1_thumbprint(leaf)}
    if prints & {tp.upper() for tp in auth.issued_thumbprints}:
        return None  # the certificate the service issued, beside whatever `type` says
    if auth.type == "selfSigned":
        if prints & {tp.upper() for tp in auth.own_thumbprints}:
            return None
        if auth.issued_only:
            return "the certificate's thumbprint is not the one issued to this device"
        return "the certificate's thumbprint is not registered for this device"
    if auth.type == "certificateAuthority":
        # No thumbprint names the device here: only the CN ties the chain to this identity.
        if certs.common_name(leaf) != device.device_id:
            return f"the certificate's CN {certs.common_name(leaf)!r} is not the device id"
        return None if peer.ok else f"the certificate chain did not verify: {peer.explain()}"
    if auth.issued_thumbprints:
        return "the certificate's thumbprint is not the one issued to this device"
    return f"device {device.device_id} does not authenticate with a certificate"


def check_device(
    device: DeviceIdentity | None,
    hostname: str,
    password: bytes | None,
    peer: PeerIdentity | None,
    now: datetime,
    max_token_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME,
) -> str | None:
    """None when `device` may connect with these credentials, else why not."""
    if device is None:
        return "no such device on this hub"
    if device.status != "enabled":
        return f"device {device.device_id} is disabled"
    if password:
        return _check_sas(device, hostname, password, now, max_token_lifetime)
    return _check_x509(device, peer)


def recheck_device(device: DeviceIdentity | None, proof: ConnectProof) -> str | None:
    """None when a live connection that CONNECT admitted with `proof` is still accepted by
    `device` (its identity now), else why not: the same rules without the clock."""
    if device is None:
        return "the device identity was deleted"
    if device.status != "enabled":
        return f"device {device.device_id} is disabled"
    if proof.password is not None:
        return _check_sas(device, proof.hostname, proof.password.reveal(), None, DEFAULT_TOKEN_MAX_LIFETIME)
    return _check_x509(device, proof.peer)
