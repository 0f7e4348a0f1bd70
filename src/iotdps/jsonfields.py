"""Reading and writing the fields of a record's JSON document, strictly.

The records of the service API (enrollments, groups, registrations, CAs, linked hubs) are read
from documents a client sent with these: a wrong type or a missing required field raises
InvalidInput naming the field by its path (`enrollment.attestation.x509`), never a KeyError or
a TypeError deep inside. Parsing the bytes themselves is `iotdps.jsonload`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from iotdps.errors import InvalidInput
from iotdps.timestamps import format_time

__all__ = ["drop_none", "obj", "opt_bool", "opt_object", "opt_str", "req_str", "stamps"]


def obj(doc: object, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{where} must be a JSON object")
    return cast(Mapping[str, Any], doc)


def opt_str(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key} must be a string")
    return value


def req_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = opt_str(doc, key, where)
    if not value:
        raise InvalidInput(f"{where}.{key} is required")
    return value


def opt_bool(doc: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} must be true or false")
    return value


def opt_object(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None:
        return None
    return dict(obj(value, f"{where}.{key}"))


def drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def stamps(etag: str | None, created: datetime | None, updated: datetime | None) -> dict[str, Any]:
    """A record's etag and times, as the service API writes them (absent ones left out)."""
    return drop_none(
        {
            "etag": etag,
            "createdDateTimeUtc": format_time(created) if created else None,
            "lastUpdatedDateTimeUtc": format_time(updated) if updated else None,
        }
    )
