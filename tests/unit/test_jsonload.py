"""The shared loader for JSON from outside: depth limit, no NaN, UTF-8, one error type."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iotdps.errors import InvalidInput
from iotdps.jsonload import MAX_JSON_DEPTH, InvalidJson, load_json


def _objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _arrays(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("nest", [_objects, _arrays])
def test_the_limit_is_inclusive(nest: Callable[[int], str]) -> None:
    assert load_json(nest(MAX_JSON_DEPTH)) is not None
    with pytest.raises(InvalidJson, match=f"the document is JSON nested deeper than {MAX_JSON_DEPTH} levels"):
        load_json(nest(MAX_JSON_DEPTH + 1))


def test_nesting_past_the_interpreters_recursion_limit_is_the_same_refusal() -> None:
    with pytest.raises(InvalidJson, match="nested deeper than"):
        load_json(_arrays(200_000).encode(), what="the body")


def test_many_brackets_are_not_depth() -> None:
    # More brackets than the limit, in strings and in siblings: walked, and accepted.
    wide = "[" + ",".join(["[1]"] * 500) + "]"
    assert len(load_json(wide)) == 500
    assert load_json('{"s": "' + "[{" * 100 + '"}') == {"s": "[{" * 100}
    # Brackets inside strings do not hide real depth either.
    with pytest.raises(InvalidJson):
        load_json('["' + "[" * 40 + '", ' + _arrays(33) + "]")


def test_mixed_nesting_counts_both_kinds() -> None:
    doc = '{"a": [' * 16 + "1" + "]}" * 16  # 32 levels
    assert load_json(doc) is not None
    with pytest.raises(InvalidJson):
        load_json('{"a": [' * 16 + "[1]" + "]}" * 16)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"a": NaN}', "NaN is not JSON"),
        (b"[Infinity]", "Infinity is not JSON"),
        # Overflows to infinity, which iotdps.jsondump would store as null.
        (b'{"t": 1e999}', "1e999 is beyond the range of a number"),
        (b"[-2.5E+400]", "-2.5E+400 is beyond the range of a number"),
        (b'{"a": ', "is not valid JSON: Expecting value at line 1 column 7"),
        (b"\xff\xfe{}", "the body is not UTF-8"),
    ],
)
def test_bad_documents_say_why(data: bytes, words: str) -> None:
    with pytest.raises(InvalidJson) as info:
        load_json(data, what="the body")
    assert words in info.value.message
    assert isinstance(info.value, InvalidInput) and info.value.http_status == 400


def test_text_bytes_and_a_bom() -> None:
    assert load_json('{"a": [1, 2]}') == {"a": [1, 2]}
    assert load_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert load_json(bytearray(b"7")) == 7
    assert load_json(memoryview(b'"x"')) == "x"


def test_big_and_small_numbers_stay_exact() -> None:
    # Parsing stays with the standard library (iotdps.jsondump says why): big integers exact.
    assert load_json(b"[123456789012345678901234567890, 1e308, 5e-324, -0.0]") == [
        123456789012345678901234567890,
        1e308,
        5e-324,
        -0.0,
    ]
