"""From a certificate towards a trust anchor: the one path walker, and how a walk ends.

Three callers need to know how far a chain goes and why it stops there, and none of them admits
anything (cryptography's verifier under `pki.chain_policy` does that):

- `pki.chain.explain_chain` (`iotdps cert verify`), for an operator holding a device bundle;
- attestation's words for a chain the TLS handshake refused (`attestation.x509.diagnose`);
- attestation's extension of a verified chain above its anchor to the root, where groups on
  higher CAs are found (`attestation.x509.extend_above`).

They share this walker and its vocabulary, `End`; each words an end for its own audience. The
rules, at each certificate of the path, in this order:

- ANCHORED: it is one of `anchors` (any anchor ends every path through it, whether root,
  intermediate or the device certificate itself: partial-chain semantics, as in the handshake);
- SELF_SIGNED: it is self-signed (its own key verifies it) and not an anchor: nothing above it
  could vouch for it;
- otherwise the next certificate is the first of `pool`, in the caller's order of preference,
  that names it as issuer (subject, and key identifiers when both have one) and whose key
  verifies its signature (`pki.certs.signed_by`, memoised). A certificate already on the path is
  never taken again. When there is none, the walk ends:
  WRONG_KEY: a certificate of the pool has the issuer's name but does not verify the signature
  (a re-created CA with a new key, or a signature algorithm nobody verifies: `lookalike`);
  LOOP: only a certificate already on the path would verify it;
  NO_ISSUER: no certificate of the pool has the issuer's name;
- TOO_LONG: `max_steps` certificates were looked at without reaching an anchor.

`lookalike` is also set on a SELF_SIGNED end when the pool holds another certificate of the
same name (a trusted root re-created with another key, say).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from iotdps.pki.certs import is_self_issued, signed_by
from iotdps.pki.encoding import sha256_thumbprint

__all__ = ["End", "Walk", "walk"]


class End(enum.Enum):
    ANCHORED = "anchored"
    SELF_SIGNED = "self-signed"
    WRONG_KEY = "wrong key"
    LOOP = "loop"
    NO_ISSUER = "no issuer"
    TOO_LONG = "too long"


@dataclass(frozen=True, slots=True)
class Walk:
    """How far a walk got: `path` from the start (leaf first) to `top`, and why it stopped there."""

    path: tuple[x509.Certificate, ...]
    end: End
    lookalike: x509.Certificate | None = None

    @property
    def top(self) -> x509.Certificate:
        return self.path[-1]

    @property
    def anchored(self) -> bool:
        return self.end is End.ANCHORED


def walk(
    start: Sequence[x509.Certificate],
    pool: Iterable[x509.Certificate],
    anchors: Iterable[x509.Certificate] = (),
    *,
    max_steps: int | None = None,
) -> Walk:
    """Walk up from `start[-1]` (`start` is the path so far, leaf first; not empty).

    `pool`: the certificates that may be issuers, in order of preference. `max_steps`: how many
    certificates are looked at before the walk is TOO_LONG (default: as many as could be on a
    path, so never)."""
    candidates = list(pool)
    anchor_prints = {sha256_thumbprint(a) for a in anchors}
    path = list(start)
    on_path = {sha256_thumbprint(c) for c in path}
    steps = max_steps if max_steps is not None else len(candidates) + 1
    for _ in range(steps):
        current = path[-1]
        if sha256_thumbprint(current) in anchor_prints:
            return Walk(tuple(path), End.ANCHORED)
        if is_self_issued(current) and signed_by(current, current):
            return Walk(tuple(path), End.SELF_SIGNED, _lookalike(current, candidates, on_path))
        parent = next(
            (c for c in candidates if sha256_thumbprint(c) not in on_path and signed_by(current, c)),
            None,
        )
        if parent is None:
            return _dead_end(tuple(path), candidates, on_path)
        path.append(parent)
        on_path.add(sha256_thumbprint(parent))
    return Walk(tuple(path), End.TOO_LONG)


def _lookalike(
    current: x509.Certificate, candidates: Sequence[x509.Certificate], on_path: set[str]
) -> x509.Certificate | None:
    return next(
        (c for c in candidates if sha256_thumbprint(c) not in on_path and c.subject == current.issuer),
        None,
    )


def _dead_end(path: tuple[x509.Certificate, ...], candidates: Sequence[x509.Certificate], on_path: set[str]) -> Walk:
    current = path[-1]
    lookalike = _lookalike(current, candidates, on_path)
    if lookalike is not None:
        return Walk(path, End.WRONG_KEY, lookalike)
    if any(signed_by(current, c) for c in path[:-1]):
        return Walk(path, End.LOOP)
    return Walk(path, End.NO_ISSUER)
