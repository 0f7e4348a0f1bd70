"""Naming a key in a PKCS#11 token (RFC 7512 URIs), and where the module and PIN come from.

A key is named by a URI such as `pkcs11:token=ca;object=factory-a;type=private`. The URI only
names the key: the module (the token vendor's shared library) and the user PIN come from the
environment (IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE), never from a
command line, and the PIN is never logged or shown. A URI that carries `pin-value`,
`pin-source`, `module-path` or `module-name` is parsed (so the refusal can say what is wrong)
and refused where a key is looked up (`Pkcs11Uri.key_only`).

Nothing here needs python-pkcs11: a command can check its URI and configuration before the
optional dependency is imported.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from iotdps.errors import BadPassphrase, InvalidInput, PkiError
from iotdps.secret import Secret

__all__ = [
    "ENV_MODULE",
    "ENV_PIN",
    "ENV_PIN_FILE",
    "ENV_TOKEN",
    "KeyMismatch",
    "KeyNotFound",
    "ModuleNotFound",
    "ObjectType",
    "Pkcs11Config",
    "Pkcs11Error",
    "Pkcs11Uri",
    "TokenNotFound",
    "WrongPin",
    "parse_pkcs11_uri",
]

ENV_MODULE = "IOTDPS_PKCS11_MODULE"
ENV_PIN = "IOTDPS_PKCS11_PIN"
ENV_PIN_FILE = "IOTDPS_PKCS11_PIN_FILE"
ENV_TOKEN = "IOTDPS_PKCS11_TOKEN"  # noqa: S105 - a variable name


class Pkcs11Error(PkiError):
    """A PKCS#11 module, token or key problem. Messages name the token and the key, never the PIN."""


class ModuleNotFound(Pkcs11Error):
    pass


class TokenNotFound(Pkcs11Error):
    pass


class KeyNotFound(Pkcs11Error):
    pass


class KeyMismatch(Pkcs11Error):
    """The token's key is not the one expected (a CA certificate's): configuration, not an outage."""


class WrongPin(Pkcs11Error, BadPassphrase):
    pass


# -- RFC 7512 URIs ---------------------------------------------------------------------------

ObjectType = Literal["private", "public", "cert", "secret-key", "data"]
_OBJECT_TYPES: tuple[ObjectType, ...] = ("private", "public", "cert", "secret-key", "data")
_PATH_ATTRS = ("token", "manufacturer", "serial", "model", "object", "type", "id")
_QUERY_ATTRS = ("pin-value", "pin-source", "module-name", "module-path")
# RFC 7512 2.3: unreserved characters and these may appear unescaped in a value (path or query);
# everything else must be percent-encoded. We decode leniently only what the RFC allows.
_PATH_SAFE = set(string.ascii_letters + string.digits + "-._~" + ":[]@!$'()*+,=&")
_QUERY_SAFE = set(string.ascii_letters + string.digits + "-._~" + ":[]@!$'()*+,=/?|")


def _pct_decode(raw: str, name: str, safe: set[str], secret: bool) -> bytes:
    """Percent-decode one attribute value. Errors name the attribute, never a secret value."""
    shown = "its value" if secret else repr(raw)
    for i, ch in enumerate(raw):
        if ch == "%":
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in string.hexdigits for c in pair):
                raise InvalidInput(f"PKCS#11 URI attribute {name}: bad percent-escape in {shown}")
        elif ch not in safe:
            raise InvalidInput(f"PKCS#11 URI attribute {name}: {shown} has a character that must be percent-encoded")
    return unquote_to_bytes(raw)


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"PKCS#11 URI attribute {name} is not UTF-8 text") from None


@dataclass(frozen=True, repr=False)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI that iotdps uses. `str()` writes it back without pin-value."""

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None
    type: ObjectType | None = None
    module_path: str | None = None
    module_name: str | None = None
    pin_source: str | None = None
    pin_value: Secret[str] | None = field(default=None, compare=False)

    def __str__(self) -> str:
        def enc(text: str) -> str:
            return quote(text, safe="")

        path: list[str] = []
        for name, value in (
            ("token", self.token),
            ("manufacturer", self.manufacturer),
            ("serial", self.serial),
            ("model", self.model),
            ("object", self.object),
        ):
            if value is not None:
                path.append(f"{name}={enc(value)}")
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        if self.type is not None:
            path.append(f"type={self.type}")
        query = [
            f"{name}={quote(value, safe='/')}"
            for name, value in (
                ("module-name", self.module_name),
                ("module-path", self.module_path),
                ("pin-source", self.pin_source),
            )
            if value is not None
        ]
        return "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else "")

    def __repr__(self) -> str:
        return f"Pkcs11Uri({str(self)!r}{', pin-value=***' if self.pin_value is not None else ''})"

    def key_only(self) -> Pkcs11Uri:
        """This URI, refused if it carries a module or a PIN: those come from the environment,
        because a URI ends up on command lines, in shell history and in process listings."""
        for name, value in (
            ("pin-value", self.pin_value),
            ("pin-source", self.pin_source),
            ("module-path", self.module_path),
            ("module-name", self.module_name),
        ):
            if value is not None:
                where = f"{ENV_PIN} or {ENV_PIN_FILE}" if name.startswith("pin") else ENV_MODULE
                raise InvalidInput(f"the PKCS#11 URI carries {name}; iotdps takes it only from {where}")
        return self

    def describe(self) -> str:
        """How error messages name the key: its label and id (never a PIN)."""
        parts = []
        if self.object is not None:
            parts.append(f"label {self.object!r}")
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return " and ".join(parts) or "(any)"


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse `pkcs11:path?query` (RFC 7512). Unknown or repeated attributes are refused: a URI
    that names something we would ignore could select a different key than its author meant."""
    if not isinstance(text, str):
        raise TypeError("a PKCS#11 URI is a str")
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() != "pkcs11":
        raise InvalidInput("a PKCS#11 URI starts with 'pkcs11:'")
    path_text, _, query_text = rest.partition("?")
    seen: dict[str, bytes] = {}
    pin: Secret[str] | None = None
    for part, sep_char, known, safe in (
        (path_text, ";", _PATH_ATTRS, _PATH_SAFE),
        (query_text, "&", _QUERY_ATTRS, _QUERY_SAFE),
    ):
        if not part:
            continue
        for item in part.split(sep_char):
            name, eq, raw = item.partition("=")
            if not eq:
                raise InvalidInput(f"PKCS#11 URI attribute {name[:40]!r} has no '=value'")
            if name not in known:
                where = "path" if sep_char == ";" else "query"
                raise InvalidInput(f"PKCS#11 URI {where} attribute {name[:40]!r} is not supported by iotdps")
            if name in seen or (name == "pin-value" and pin is not None):
                raise InvalidInput(f"PKCS#11 URI attribute {name} appears twice")
            value = _pct_decode(raw, name, safe, secret=name == "pin-value")
            if name == "pin-value":
                pin = Secret(_text(value, name))
            else:
                seen[name] = value
    kind = _text(seen["type"], "type") if "type" in seen else None
    if kind is not None and kind not in _OBJECT_TYPES:
        raise InvalidInput(f"PKCS#11 URI type {kind!r} is not one of {', '.join(_OBJECT_TYPES)}")
    if "id" in seen and not seen["id"]:
        raise InvalidInput("PKCS#11 URI attribute id is empty")

    def txt(name: str) -> str | None:
        return _text(seen[name], name) if name in seen else None

    return Pkcs11Uri(
        token=txt("token"),
        manufacturer=txt("manufacturer"),
        serial=txt("serial"),
        model=txt("model"),
        object=txt("object"),
        id=seen.get("id"),
        type=kind,  # checked against _OBJECT_TYPES above
        module_path=txt("module-path"),
        module_name=txt("module-name"),
        pin_source=txt("pin-source"),
        pin_value=pin,
    )


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Pkcs11Config:
    """Where the PKCS#11 module is and how to log in; `token_label` is the default token for
    URIs that name none."""

    module_path: Path
    pin: Secret[str] = field(compare=False)
    token_label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pin, Secret):
            raise TypeError("pin must be a Secret")
        object.__setattr__(self, "module_path", Path(self.module_path))

    def __repr__(self) -> str:
        return f"Pkcs11Config(module_path={str(self.module_path)!r}, token_label={self.token_label!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Pkcs11Config:
        """From IOTDPS_PKCS11_MODULE, IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE (a file whose
        first line is the PIN, as container secrets are mounted), and IOTDPS_PKCS11_TOKEN."""
        env = os.environ if environ is None else environ
        module = env.get(ENV_MODULE, "").strip()
        if not module:
            raise Pkcs11Error(f"set {ENV_MODULE} to the path of the PKCS#11 module (the token vendor's .so)")
        if not os.path.isabs(module):
            # dlopen() searches the library path and the working directory for a relative name.
            raise Pkcs11Error(f"{ENV_MODULE} must be an absolute path, not {module!r}")
        pin_value, pin_file = env.get(ENV_PIN), env.get(ENV_PIN_FILE)
        if pin_value is not None and pin_file is not None:
            raise Pkcs11Error(f"set one of {ENV_PIN} and {ENV_PIN_FILE}, not both")
        if pin_file is not None:
            try:
                lines = Path(pin_file).read_text("utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
                raise Pkcs11Error(f"cannot read the PIN file {pin_file} ({ENV_PIN_FILE}): {reason}") from None
            pin_value = lines[0] if lines else ""
        if not pin_value:
            raise Pkcs11Error(f"set {ENV_PIN} or {ENV_PIN_FILE} to the token's user PIN")
        token = env.get(ENV_TOKEN) or None
        return cls(Path(module), Secret(pin_value), token)
