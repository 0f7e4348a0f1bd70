"""iotdps.jsondump: orjson's speed with the standard library's answers.

Every value is checked against `json.dumps(value, separators=(",", ":"))` by meaning (the
document parses back to the same value) and, for ASCII documents, byte for byte; the values
orjson refuses must come out exactly as the standard library writes them, and what the
standard library refuses is still refused.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdps.errors import InvalidInput
from iotdps.jsondump import dumps, dumps_text
from iotdps.store._common import DocText, dump_doc, json_column_text


def _stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# What JSON from a device or a client can hold once parsed (iotdps.jsonload): no NaN or infinity.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(_json_values)
def test_same_document_as_the_standard_library(value: Any) -> None:
    text = dumps_text(value)
    assert json.loads(text) == json.loads(_stdlib(value))
    assert dumps(value) == text.encode("utf-8") or dumps(value) == text.encode("ascii")
    if text.isascii() and _stdlib(value).isascii() and "\\u" not in _stdlib(value) and not _has_exponent(value):
        assert text == _stdlib(value)


def _has_exponent(value: Any) -> bool:
    """Whether a float in `value` is written with an exponent, where orjson and the standard
    library differ in spelling (`5e-8` against `5e-08`), not in meaning."""
    if isinstance(value, float):
        return "e" in repr(value)
    if isinstance(value, list):
        return any(_has_exponent(v) for v in value)
    if isinstance(value, dict):
        return any(_has_exponent(v) for v in value.values())
    return False


def test_exponents_differ_in_spelling_only() -> None:
    value = {"t": 5.960464477539063e-08, "big": 1.5e300}
    assert dumps_text(value) == '{"t":5.960464477539063e-8,"big":1.5e+300}'
    assert json.loads(dumps_text(value)) == value


def test_a_registration_record_byte_for_byte() -> None:
    record = {
        "registrationId": "dev-38",
        "status": "assigned",
        "assignedHub": "hub.bench.local",
        "errorCode": None,
        "iotEdge": False,
        "twin": {"desired": {"t": 21.5, "n": -3}, "version": 1},
        "thumbprints": [],
    }
    assert dumps_text(record) == _stdlib(record)
    assert dumps(record) == _stdlib(record).encode()


def test_non_ascii_is_utf8_not_escapes() -> None:
    assert dumps({"name": "Zürich ✓"}) == '{"name":"Zürich ✓"}'.encode()
    assert json.loads(dumps({"name": "Zürich ✓"})) == {"name": "Zürich ✓"}


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70},  # beyond 64 bits: orjson refuses, the standard library writes it
        {1: "int key"},  # the standard library makes the key a string
        {"lone": "\ud800"},  # a lone surrogate: the standard library escapes it
        [[[]]] * 2 + [json.loads("[" * 300 + "]" * 300)],  # deeper than orjson's 254 levels
    ],
)
def test_what_orjson_refuses_comes_out_as_before(value: Any) -> None:
    assert dumps_text(value) == _stdlib(value)
    assert dumps(value) == _stdlib(value).encode("ascii")


@dataclasses.dataclass
class _Record:
    name: str


@pytest.mark.parametrize("value", [{"at": datetime(2026, 1, 1, tzinfo=UTC)}, {"r": _Record("x")}, {"s": {1, 2}}])
def test_what_the_standard_library_refuses_is_still_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        dumps(value)
    with pytest.raises(TypeError):
        dumps_text(value)
    with pytest.raises(InvalidInput, match="holds a value that is not JSON"):
        dump_doc(value, "the record")


def test_stored_documents_and_json_columns_use_it() -> None:
    doc = {"system": {"connection_device_id": "d1", "message_id": None}, "application": {"k": "v"}}
    assert dump_doc(doc, "the record") == _stdlib(doc)
    assert isinstance(dump_doc(doc, "the record"), DocText)
    assert json_column_text(doc) == _stdlib(doc)
    already = DocText('{"a":1}')
    assert json_column_text(already) is already
