"""The hub host names one process serves (several hubs in one process, so allocation across
hubs is real). Host names compare case-insensitively; answers use the configured spelling."""

from __future__ import annotations

from collections.abc import Iterable

from iotdps.errors import InvalidInput, NotFound

__all__ = ["HubNames"]


class HubNames:
    def __init__(self, host_names: Iterable[str]) -> None:
        self._names = {name.lower(): name for name in host_names}
        if not self._names:
            raise InvalidInput("at least one hub host name is needed")

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(self._names.values())

    def find(self, host_name: str) -> str | None:
        """The configured spelling of `host_name`, or None when it is not served here."""
        return self._names.get(host_name.lower())

    def canonical(self, host_name: str) -> str:
        """As `find`, for operations on a hub: raises NotFound for a hub not served here."""
        name = self._names.get(host_name.lower())
        if name is None:
            raise NotFound(f"hub {host_name} is not served here")
        return name
