"""How a socket peer is written down: its address alone (refusal records, which group attempts
by source) or `host:port` (log lines, which tell one connection from another)."""

from __future__ import annotations

__all__ = ["peer_address", "peer_text"]


def peer_address(peername: object) -> str | None:
    """The IP address of a transport's `peername` (a (host, port, ...) tuple for TCP)."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    if isinstance(peername, str) and peername:
        return peername
    return None


def peer_text(peername: object) -> str:
    """`host:port` (IPv6 in brackets) for a socket peer name; whatever it is otherwise."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = str(peername[0])
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return str(peername)
