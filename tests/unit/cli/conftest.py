"""Puts the shared test certificate kit (tests/unit/provisioning/certkit.py) on sys.path."""

import sys
from pathlib import Path

_KIT = str(Path(__file__).resolve().parents[1] / "provisioning")
if _KIT not in sys.path:
    sys.path.insert(0, _KIT)
