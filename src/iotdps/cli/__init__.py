"""The `iotdps` command."""

__all__: list[str] = []
