"""TPM keys on the command line: base64 text, or a file (binary TPM2B_PUBLIC or base64 text).

`tpm2_readpublic -c 0x81010001 -o ek.pub` writes the binary TPM2B_PUBLIC; the Azure portal and
the SDKs show base64. Both are accepted, so an operator can enroll from either without
converting. Whether the key is a usable EK or SRK is checked by the enrollment itself.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from iotdps.errors import InvalidInput

__all__ = ["tpm_key_text"]

_MAX_FILE = 4096


def tpm_key_text(value: str, option: str) -> str:
    """The base64 wire form of a key given as base64 or as a file holding it."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a long base64 string is not a valid path on every system
        is_file = False
    if not is_file:
        return value.strip()
    data = path.read_bytes()[: _MAX_FILE + 1]
    if len(data) > _MAX_FILE:
        raise InvalidInput(f"{option}: {value} is too large for a TPM2B_PUBLIC")
    try:
        text = data.decode("ascii").strip()
        base64.b64decode(text, validate=True)
        return text
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return base64.b64encode(data).decode("ascii")
