"""Log output for `iotdps up`: the usual text lines, or one JSON object per line (`--log-format json`).

Both formats carry the same records; JSON only spells them out for a log pipeline:

    {"time": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "iotdps.dps",
     "event": "registration_refused", "message": "registration dev-1 from ... refused: ...",
     "args": ["dev-1", "127.0.0.1:50000", ...], ...}

`event` is the name a call site gives (`extra={"event": ...}`), else a stable name made from the
message template (its words, without the values), so every line of the text format has one.
Other `extra` fields a call site passes appear as fields of their own; `args` keeps the values
the message was formatted with, so a pipeline can read them without parsing the sentence. A
traceback, when a record has one, goes into `exception` as one string: still one line.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfgixeEGX%]")
_NOT_LETTERS = re.compile(r"[^a-z]+")
_event_names: dict[str, str] = {}


def _event_name(template: object) -> str:
    text = str(template)
    name = _event_names.get(text)
    if name is None:
        words = [w for w in _NOT_LETTERS.split(_PLACEHOLDER.sub(" ", text).lower()) if w][:6]
        name = "_".join(words) or "log"
        if len(_event_names) < 4096:  # templates are the code's; a bound all the same
            _event_names[text] = name
    return name


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _plain(record.__dict__.get("event")) or _event_name(record.msg),
            "message": record.getMessage(),
        }
        if record.args and isinstance(record.args, tuple):
            out["args"] = [_plain(a) for a in record.args]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "event" and key not in out:
                out[key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root handler on stderr, in `log_format` ("text" or "json")."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
