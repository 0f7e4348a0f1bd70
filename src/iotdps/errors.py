"""The one root error of iotdps, and the families every edge maps to its own codes.

    IotdpsError                 root; carries a reason enum and a message safe to show
    ├── ConfigError             invalid configuration (lists every problem)
    ├── InvalidInput            bad input from a user, API client or device (400)
    │   └── InvalidRegistrationId
    ├── NotFound                a named thing does not exist (404)
    ├── AlreadyExists           create of something that exists (409)
    ├── PreconditionFailed      etag mismatch (412)
    ├── Unauthorized            credentials missing or wrong (401)
    ├── Forbidden               credentials right, request refused (403: a console change without its CSRF token)
    ├── Throttled               rate limit hit; carries retry_after seconds (429)
    ├── PkiError                a certificate or key operation failed
    │   ├── BadPassphrase
    │   └── ChainError          a chain does not validate; `reason` says why in words
    └── StoreError              the database failed (503 at the edges, never a half write)

Edges (MQTT, HTTP, CLI) translate these in one table each. Messages never contain key
material or secrets: the exception text may end up in logs and API answers.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BadPassphrase",
    "ChainError",
    "ConfigError",
    "Forbidden",
    "InvalidInput",
    "InvalidRegistrationId",
    "IotdpsError",
    "NotFound",
    "PkiError",
    "PreconditionFailed",
    "StoreError",
    "Throttled",
    "Unauthorized",
]


class IotdpsError(Exception):
    """Root of every error iotdps raises on purpose.

    `message` is safe to show to the party that caused the error (an operator, an API
    client); devices get terser answers chosen by their edge.
    """

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(IotdpsError):
    """Configuration is invalid; `problems` lists every one found, not only the first."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = list(problems)


class InvalidInput(IotdpsError):
    http_status = 400


class InvalidRegistrationId(InvalidInput):
    pass


class NotFound(IotdpsError):
    http_status = 404


class AlreadyExists(IotdpsError):
    http_status = 409


class PreconditionFailed(IotdpsError):
    http_status = 412


class Unauthorized(IotdpsError):
    http_status = 401


class Forbidden(IotdpsError):
    http_status = 403


class Throttled(IotdpsError):
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PkiError(IotdpsError):
    http_status = 400


class BadPassphrase(PkiError):
    pass


class ChainError(PkiError):
    """A certificate chain does not validate. `message` explains why, in words."""


class StoreError(IotdpsError):
    http_status = 503
