"""Where a custom-allocation webhook may point (allocation.destinations): the rules, and the
check when an enrollment is written. The transport that enforces them on what it dials is
tested with it (tests/unit/server/test_webhook_http.py)."""

from __future__ import annotations

import socket

import pytest

from iotdps.allocation.destinations import WebhookDestinations, check_webhook_url
from iotdps.errors import InvalidInput

STRICT = WebhookDestinations()
LISTED = WebhookDestinations.parse(
    ["http://alloc.internal:8080/api", "hooks.corp.example", "*.lab.example", "10.0.0.0/8", "fd00::/8", "192.0.2.7"]
)


@pytest.mark.parametrize(
    ("url", "refused_by_default", "refused_with_list"),
    [
        ("https://93.184.215.14/api?code=x", False, False),  # public https: the ordinary case
        ("https://alloc.example.com/api", False, False),  # a name: decided by what it resolves to
        ("http://93.184.215.14/api", True, True),  # plain http needs a URL prefix entry
        ("http://alloc.internal:8080/api", True, False),
        ("http://alloc.internal:8080/api/v1", True, False),
        ("http://alloc.internal:8080/apix", True, True),  # prefixes are segment-wise
        ("http://alloc.internal:8081/api", True, True),
        ("https://alloc.internal:8080/api", False, False),  # https to a name: resolved later
        ("https://10.9.8.7/api", True, False),
        ("https://11.0.0.1/api", False, False),
        ("https://192.0.2.7/api", True, False),
        ("https://192.0.2.8/api", True, True),
        ("https://[fd00::5]/api", True, False),
        ("https://[::ffff:10.0.0.1]/api", True, False),  # mapped: judged as its IPv4 address
        ("https://[::ffff:127.0.0.1]/api", True, True),
        ("https://127.0.0.1/api", True, True),
        ("https://169.254.169.254/", True, True),
        ("https://[fe80::1]/", True, True),
        ("https://224.0.0.1/", True, True),  # multicast
        ("https://100.64.1.1/", True, True),
        ("https://localhost/", True, True),
        ("https://api.localhost/", True, True),
        ("https://2130706433/", True, True),
        ("https://127.1/", True, True),
        ("https://0x7f.1/", True, True),
        ("ftp://alloc.example.com/", True, True),
        ("https:///nohost", True, True),
        ("https://host:99999/", True, True),
    ],
)
def test_static_rules(url: str, refused_by_default: bool, refused_with_list: bool) -> None:
    assert (STRICT.check(url).refusal is not None) is refused_by_default, STRICT.check(url)
    assert (LISTED.check(url).refusal is not None) is refused_with_list, LISTED.check(url)


def test_named_hosts_are_trusted_whatever_they_resolve_to() -> None:
    for host in ("hooks.corp.example", "a.lab.example", "b.c.lab.example"):
        verdict = LISTED.check(f"https://{host}/x")
        assert verdict.refusal is None and verdict.any_address
        assert LISTED.allowed_addresses(verdict, ["127.0.0.1"]) == ["127.0.0.1"]
    assert not LISTED.check("https://lab.example/x").any_address  # *.lab.example: subdomains only


def test_resolved_addresses() -> None:
    verdict = STRICT.check("https://alloc.example.com/api")
    assert STRICT.allowed_addresses(verdict, ["127.0.0.1", "93.184.215.14"]) == ["93.184.215.14"]
    words = STRICT.resolved_refusal(verdict, ["127.0.0.1", "10.0.0.2"])
    assert words is not None and "resolves to 10.0.0.2, 127.0.0.1" in words and "webhook_allowlist" in words
    assert LISTED.resolved_refusal(LISTED.check("https://alloc.example.com/api"), ["10.0.0.2"]) is None


def test_bad_entries_are_named() -> None:
    with pytest.raises(InvalidInput) as info:
        WebhookDestinations.parse(["ftp://x/", "not a host!", "10.0.0.0/8", "http:///"])
    assert "'ftp://x/', 'not a host!', 'http:///'" in info.value.message


def test_secrets_in_the_url_stay_out_of_the_words() -> None:
    refusal = STRICT.check("https://127.0.0.1/api?code=s3cret").refusal
    assert refusal is not None and "s3cret" not in refusal


def _loopback_name() -> str:
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = set()
    if not addresses or not all(a.startswith("127.") for a in addresses):
        pytest.skip(f"this machine's name {name!r} does not resolve to loopback")
    return name


async def test_write_time_check_resolves_names() -> None:
    name = _loopback_name()
    words = await check_webhook_url(STRICT, f"https://{name}/api")
    assert words is not None and "resolves to 127." in words
    assert await check_webhook_url(WebhookDestinations.parse([name]), f"https://{name}/api") is None
    # A name that does not resolve (yet) is decided when the webhook is called.
    assert await check_webhook_url(STRICT, "https://no-such-host.invalid/api") is None
