"""`iotdps device run`: our own device client as a command (see iotdps.device)."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(group: click.Group) -> None:
    pass
