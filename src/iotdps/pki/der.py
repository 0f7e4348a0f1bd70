"""A minimal DER writer (and one reader step) for the few structures we encode by hand: the
device certificate template (pki.template) and encrypted PKCS#8 (pki.pkcs8)."""

from __future__ import annotations

import base64

__all__ = ["content", "der_to_pem", "integer", "length", "octets", "oid", "sequence", "tlv"]


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + length(len(body)) + body


def sequence(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def octets(data: bytes) -> bytes:
    return tlv(0x04, data)


def integer(value: int) -> bytes:
    """A non-negative INTEGER."""
    if value < 0:
        raise ValueError("only non-negative integers are written")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # +1 keeps the sign bit clear
    return tlv(0x02, body)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def content(der: bytes, at: int) -> tuple[int, int]:
    """Where the content of the DER element at `at` starts and where the element ends."""
    first = der[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    width = first & 0x7F
    start = at + 2 + width
    return start, start + int.from_bytes(der[at + 2 : start], "big")


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    b64 = base64.b64encode(der)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN " + label.encode() + b"-----\n" + lines + b"\n-----END " + label.encode() + b"-----\n"
