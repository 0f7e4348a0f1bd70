"""The management server a command talks to, from --server/--connection-string/--policy/--key.

Its own module so that the remote client can name it without importing the option handling that
opens the remote client (cli.target), which would be a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from iotdps.errors import InvalidInput
from iotdps.secret import Secret

__all__ = ["ServerTarget", "server_target"]


@dataclass(frozen=True)
class ServerTarget:
    url: str
    policy: str
    key: Secret[str]
    ca_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def _parse_connection_string(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput("the connection string is not Name=Value;Name=Value")
        out[name.strip().lower()] = value.strip()
    return out


def server_target(params: Mapping[str, Any]) -> ServerTarget | None:
    """The server the options name, or None for the local store."""
    url, cs = params.get("server"), params.get("connection_string")
    policy, key = params.get("policy"), params.get("key")
    if cs:
        parsed = _parse_connection_string(str(cs))
        missing = [k for k in ("hostname", "sharedaccesskeyname", "sharedaccesskey") if not parsed.get(k)]
        if missing:
            raise InvalidInput(f"the connection string lacks {', '.join(missing)}")
        url = url or parsed["hostname"]
        policy, key = parsed["sharedaccesskeyname"], parsed["sharedaccesskey"]
    if not url:
        if policy or key:
            raise InvalidInput("--policy/--key need --server URL")
        return None
    if not policy or not key:
        raise InvalidInput("--server needs --connection-string, or --policy and --key")
    text = str(url).rstrip("/")
    if "://" not in text:
        text = "https://" + text
    if not text.startswith("https://"):
        raise InvalidInput("--server must be an https:// URL")
    ca = params.get("server_ca")
    return ServerTarget(text, str(policy), Secret(str(key)), str(ca) if ca else None)
