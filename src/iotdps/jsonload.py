"""The one way JSON from outside the process is parsed: a depth limit, no NaN, UTF-8 only.

Every edge that reads JSON a peer sent (the device API and MQTT payloads, the management and
hub service APIs, continuation tokens, webhook answers, the control socket, CLI arguments)
goes through `load_json`. Python's parser and everything after it (twin merges, `json.dumps`,
validators) recurse once per nesting level, so a body of a few kilobytes of `[[[[...` raised
RecursionError deep inside a handler: a 500 with a traceback, or a dropped MQTT connection.
Here such a document is refused before anything walks it, with one error type
(`InvalidJson`, an InvalidInput: 400 at HTTP edges) whose message says what was wrong.

32 levels is far above what any Azure document needs (twin properties nest at most 10 deep,
inside an envelope of 3 or 4) and far below the interpreter's recursion limit.

Cost: a document with at most 32 `{` and `[` in its text cannot nest deeper than 32, and two
`count` calls say so; only documents with more brackets than that are walked after parsing
(iteratively, stopping at the first level too deep). A DPS register body pays two `count`s.
"""

from __future__ import annotations

import json
import math
from typing import Any

from iotdps.errors import InvalidInput

__all__ = ["MAX_JSON_DEPTH", "InvalidJson", "load_json"]

MAX_JSON_DEPTH = 32


class InvalidJson(InvalidInput):
    """A document from outside that is not JSON we accept; the message says why, in words."""


def _no_constant(name: str) -> Any:
    # NaN and Infinity are Python's extensions, not JSON; stored, they would not load elsewhere.
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e999 parses to infinity, which JSON cannot hold either: stored documents are encoded by
    # iotdps.jsondump, which would write it as null. Refused here, where the sender learns why.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the range of a number")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests objects/arrays more than `limit` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def load_json(
    data: bytes | bytearray | memoryview | str, *, what: str = "the document", max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse `data` (UTF-8 bytes, a BOM tolerated, or text) as JSON nested at most `max_depth`
    levels. Raises InvalidJson with a message that starts with `what`."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidJson(f"{what} is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidJson(f"{what} is JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise InvalidJson(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    if isinstance(value, dict | list) and text.count("{") + text.count("[") > max_depth and _too_deep(value, max_depth):
        raise InvalidJson(f"{what} is JSON nested deeper than {max_depth} levels")
    return value
