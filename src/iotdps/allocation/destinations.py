"""Where a custom-allocation webhook may be called: HTTPS to public hosts, and the allowlist.

Anyone with EnrollmentWrite names a webhook URL, and the server POSTs enrollment JSON to it from
inside the network: without a rule that is a request forgery (SSRF) into loopback, the private
network or a cloud metadata address. The rule:

- HTTPS to a public address is allowed (Azure Functions and the like).
- Anything else needs an entry of `[allocation] webhook_allowlist`:
  * a URL prefix (`http://alloc.internal:8080/api`): URLs with that scheme, host, port and path
    prefix are allowed as they are, plain HTTP and private addresses included;
  * a host name (`alloc.internal`, or `*.corp.example` for its subdomains): HTTPS to that host,
    whatever it resolves to;
  * an address or network (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`): HTTPS to addresses inside it.
- Non-public means anything `ipaddress` does not call global (loopback, private, link-local,
  shared, reserved, unspecified) and multicast; an IPv4-mapped IPv6 address counts as its IPv4
  address. `localhost` and `*.localhost` are loopback by name.

The check runs twice: when an enrollment is written (a clear 400, `check_webhook_url`, which
looks the name up with the event loop's resolver) and when the webhook is called, on the
addresses the host name resolves to at that moment (DNS may answer differently later; the
transport, server/webhook_http.py, checks inside its own resolver what it dials).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from iotdps.errors import InvalidInput

__all__ = ["DestinationRefused", "Verdict", "WebhookDestinations", "check_webhook_url"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOWLIST = "[allocation] webhook_allowlist"
_LOOKUP_TIMEOUT = 5.0


class DestinationRefused(OSError):
    """A webhook destination the rules refuse; the message names the host only (webhook URLs
    often carry a secret in their query)."""


@dataclass(frozen=True, slots=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        path = path or "/"
        # Segment-wise: `/api` covers `/api` and `/api/x`, not `/apix`.
        if self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The static answer for one URL. `refusal` set: refused. `any_address`: the URL is trusted
    as it is (a prefix or host name entry), so what its host resolves to is not checked."""

    host: str
    refusal: str | None = None
    any_address: bool = False


def _address(text: str) -> IpAddress | None:
    try:
        found = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _is_public(address: IpAddress) -> bool:
    return address.is_global and not address.is_multicast


def _port(url: SplitResult) -> int | None:
    try:
        return url.port or _DEFAULT_PORTS.get(url.scheme.lower())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class WebhookDestinations:
    prefixes: tuple[_Prefix, ...] = ()
    names: frozenset[str] = frozenset()  # exact host names, lower case
    suffixes: tuple[str, ...] = ()  # ".corp.example" from "*.corp.example"
    networks: tuple[IpNetwork, ...] = ()

    @staticmethod
    def parse(entries: Iterable[str]) -> WebhookDestinations:
        """The allowlist from its entries; InvalidInput names every entry it cannot read."""
        prefixes: list[_Prefix] = []
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IpNetwork] = []
        bad: list[str] = []
        for raw in entries:
            entry = raw.strip()
            if "://" in entry:
                url = urlsplit(entry)
                port = _port(url)
                if url.scheme.lower() not in _DEFAULT_PORTS or not url.hostname or port is None:
                    bad.append(raw)
                    continue
                host = url.hostname.lower()
                mapped = _address(host)
                prefixes.append(_Prefix(url.scheme.lower(), str(mapped) if mapped else host, port, url.path or "/"))
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if name.startswith("*.") and _is_host_name(name[2:]):
                suffixes.append(name[1:])
            elif _is_host_name(name):
                names.add(name)
            else:
                bad.append(raw)
        if bad:
            raise InvalidInput(
                f"{', '.join(repr(b) for b in bad)}: not a URL prefix (http(s)://host[:port]/path), a host name"
                " (or *.domain), nor an address or network (10.0.0.0/8)"
            )
        return WebhookDestinations(tuple(prefixes), frozenset(names), tuple(suffixes), tuple(networks))

    def _named(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def _listed(self, address: IpAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)

    def check(self, url_text: str) -> Verdict:
        """The rules that need no lookup, for the URL as written."""
        url = urlsplit(url_text)
        host = (url.hostname or "").lower()
        port = _port(url)
        if url.scheme.lower() not in _DEFAULT_PORTS or not host or port is None:
            return Verdict(host, "the webhook URL must be http(s)://host[:port]/path")
        literal = _address(host)
        key = str(literal) if literal is not None else host
        if any(p.matches(url.scheme.lower(), key, port, url.path) for p in self.prefixes):
            return Verdict(host, any_address=True)
        if url.scheme.lower() != "https":
            return Verdict(host, f"a webhook must use https unless {_ALLOWLIST} lists its URL prefix")
        if literal is None and self._named(host):
            return Verdict(host, any_address=True)
        if literal is not None:
            return Verdict(host, self.address_refusal(host, literal))
        if host.rsplit(".", 1)[-1].isdigit() or host.startswith("0x"):
            # 2130706433, 127.1, 0x7f.1: legacy spellings of addresses, never host names.
            return Verdict(host, f"{host} is not a canonical address nor a host name")
        if host == "localhost" or host.endswith(".localhost"):
            return Verdict(host, f"{host} is a loopback name; {_ALLOWLIST} must list it to allow it")
        return Verdict(host)

    def address_refusal(self, host: str, address: IpAddress) -> str | None:
        """None when a webhook of `host` may connect to `address`, else why not."""
        if _is_public(address) or self._listed(address):
            return None
        what = host if host == str(address) else f"{host} is {address},"
        return (
            f"{what} a non-public address (loopback, private, link-local or reserved);"
            f" {_ALLOWLIST} must list it to allow it"
        )

    def allowed_addresses(self, verdict: Verdict, addresses: Sequence[str]) -> list[str]:
        """Of what `verdict.host` resolved to, the addresses a webhook may connect to."""
        if verdict.any_address:
            return list(addresses)
        return [
            a for a in addresses if (ip := _address(a)) is not None and self.address_refusal(verdict.host, ip) is None
        ]

    def resolved_refusal(self, verdict: Verdict, addresses: Sequence[str]) -> str | None:
        """Words when none of the resolved `addresses` may be called (None: some may)."""
        if not addresses or self.allowed_addresses(verdict, addresses):
            return None
        return (
            f"{verdict.host} resolves to {', '.join(sorted(set(addresses)))}, no public address;"
            f" {_ALLOWLIST} must list it to allow it"
        )


def _is_host_name(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    )


async def _lookup(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_webhook_url(destinations: WebhookDestinations, url: str) -> str | None:
    """Words when `url` may not be a webhook (the rules, then what its host resolves to now);
    None when it may. A name that does not resolve yet is let through: the call-time check
    decides then."""
    verdict = destinations.check(url)
    if verdict.refusal is not None or verdict.any_address:
        return verdict.refusal
    try:
        addresses = await asyncio.wait_for(_lookup(verdict.host), _LOOKUP_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return None
    return destinations.resolved_refusal(verdict, addresses)
