"""Sans-IO protocol machines: bytes in, typed events out; typed replies in, bytes out.

Nothing under this package performs I/O or reads a clock. Time enters as a float argument.
"""

from __future__ import annotations

__all__: list[str] = []
