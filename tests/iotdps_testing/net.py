"""Loopback addresses for servers that must listen on the Azure SDK's fixed ports.

The SDK always connects to 8883 (and 443 for websockets), so parallel test servers differ
by address, not port: each takes its own 127.x.y.z, with a matching IP SAN in the server
certificate. Addresses are drawn at random from a large range and checked by binding, so
test processes running side by side (several checkouts, pytest-xdist) do not collide.
"""

from __future__ import annotations

import random
import socket

__all__ = ["SDK_PORTS", "free_loopback_address", "free_port"]

SDK_PORTS = (8883, 443)


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_loopback_address(ports: tuple[int, ...] = SDK_PORTS, *, attempts: int = 200) -> str:
    """A 127.x.y.z address (never 127.0.0.1) on which every port in `ports` is free."""
    rng = random.SystemRandom()
    for _ in range(attempts):
        address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if all(_bindable(address, port) for port in ports):
            return address
    raise RuntimeError("no free loopback address found")


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
