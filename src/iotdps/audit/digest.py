"""Before/after digests: SHA-256 over a record's canonical JSON.

A record is digested as its API document (`to_json()`, which carries its etag and never its
keys or codes), or, for a record without one, its dataclass fields. The etag makes every write
a new digest, so two entries with the same digest name the same stored version. Keys never go
into the log, not even hashed: a digest is of what an operator can read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

__all__ = ["record_digest"]


def _document(record: object) -> Any:
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        return to_json()
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    raise TypeError(f"cannot digest a {type(record).__name__}")


def record_digest(record: object | None) -> str | None:
    """`sha256:<hex>` of the record's canonical JSON; None for no record."""
    if record is None:
        return None
    text = json.dumps(_document(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()
