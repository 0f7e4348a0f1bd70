"""Weighted rendezvous (highest random weight) hashing of registration ids over hubs.

Why rendezvous: it is deterministic per registration id (a device re-registering lands on the
same hub), needs no shared state between nodes, honours weights exactly in expectation, and
when a hub is added or removed only the devices that must move do move.

Score of hub h for id r: -w_h / ln(u), u in (0, 1) from SHA-256(r, h). The hub with the highest
score wins; P(h wins) = w_h / sum(w). SHA-256, not Python's `hash()`, so every process and every
node agrees. Registration ids are case-insensitive in DPS, so the id is lower-cased first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from iotdps.allocation.hubs import LinkedHub

__all__ = ["choose_hashed", "score"]

_TWO_64 = float(1 << 64)


def score(registration_id: str, hub: LinkedHub) -> float:
    digest = hashlib.sha256(f"{registration_id.lower()}\n{hub.host_name.lower()}".encode()).digest()
    # u strictly inside (0, 1): ln(0) and ln(1) would divide by infinity or zero.
    u = (int.from_bytes(digest[:8], "big") + 0.5) / _TWO_64
    return -hub.allocation_weight / math.log(u)


def choose_hashed(registration_id: str, hubs: Sequence[LinkedHub]) -> LinkedHub:
    if not hubs:
        raise ValueError("no hubs to choose from")
    # Ties (practically impossible) break on the host name so the answer stays deterministic.
    return max(hubs, key=lambda h: (score(registration_id, h), h.host_name))
