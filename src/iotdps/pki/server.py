"""A server CA and a server certificate in one call, for `iotdps up` and tests.

The server CA is what devices are given as their trust anchor (the Azure SDKs take it as
`server_verification_cert`); the certificate covers every host name and address the listeners
answer on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from iotdps.pki.issuer import Issuer, Validity
from iotdps.pki.keys import KeySpec, PrivateKey, generate_private_key
from iotdps.pki.profiles import create_root_ca, issue_server_certificate

__all__ = ["ServerIdentity", "create_server_identity"]


@dataclass(frozen=True, repr=False)
class ServerIdentity:
    ca_certificate: x509.Certificate
    ca_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    key: PrivateKey = field(repr=False)

    def __repr__(self) -> str:
        return f"ServerIdentity(subject={self.certificate.subject.rfc4514_string()!r})"

    @property
    def issuer(self) -> Issuer:
        return Issuer(self.ca_certificate, self.ca_key, name="server-ca")


def create_server_identity(
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = ("127.0.0.1",),
    *,
    ca_name: str = "iotdps server CA",
    ca_days: int = 3650,
    days: int = 825,
    key_spec: KeySpec = KeySpec.P256,
) -> ServerIdentity:
    """A new self-signed server CA (path length 0) and a server certificate it signed."""
    ca_key = generate_private_key(key_spec)
    ca = create_root_ca(ca_name, ca_key, Validity.days(ca_days), path_length=0)
    key = generate_private_key(key_spec)
    cert = issue_server_certificate(
        Issuer(ca, ca_key),
        key.public_key(),
        Validity.days(days),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        clamp=True,
    )
    return ServerIdentity(ca, ca_key, cert, key)
