"""Action names: an open list.

An action is a dotted lower-case name, `<what>.<verb>` (`enrollment.create`, `ca.verify`). New
features add their own (revocations, issuance configuration) without touching this module: any
well-formed name is accepted, so the log never refuses a change for want of a table entry.
`KNOWN_ACTIONS` documents the names the service writes today (README, `iotdps audit list
--help`); the shape check keeps free text (and SQL LIKE wildcards) out of the column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from iotdps.errors import InvalidInput

__all__ = ["KNOWN_ACTIONS", "PRUNED", "check_action", "check_action_filter"]

_ACTION = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\.[a-z][a-z0-9]*(?:-[a-z0-9]+)*)+")
_MAX = 64

PRUNED = "audit.pruned"

KNOWN_ACTIONS: Mapping[str, str] = {
    "ca.upload": "a CA certificate uploaded or replaced",
    "ca.verification-code": "a proof-of-possession code handed out",
    "ca.verify": "proof of possession accepted; the CA is a trust anchor",
    "ca.delete": "a CA certificate deleted",
    "ca.crl-upload": "a CA's CRL uploaded (revocation: what the handshake and the hub enforce)",
    "enrollment.create": "an individual enrollment created",
    "enrollment.update": "an individual enrollment changed",
    "enrollment.delete": "an individual enrollment deleted",
    "group.create": "an enrollment group created",
    "group.update": "an enrollment group changed",
    "group.delete": "an enrollment group deleted",
    "hub.link": "a hub linked",
    "hub.update": "a linked hub's weight, policy or location changed",
    "hub.unlink": "a hub unlinked",
    "hub-device.create": "a device identity created on a hub (hub service API)",
    "hub-device.update": "a hub device's status, credential or capabilities changed (never its keys: whether they did)",
    "hub-device.delete": "a device identity deleted from a hub",
    "hub-twin.update": "a hub device twin's tags or desired properties changed by an operator",
    "settings.update": "the service settings (ID scope, default allocation) changed",
    "registration.delete": "a registration record deleted",
    "issuing-ca.create": "an issuing CA object created (certificate issuance)",
    "issuing-ca.update": "an issuing CA object replaced",
    "issuing-ca.delete": "an issuing CA object deleted",
    "trust-bundle.create": "a trust bundle created",
    "trust-bundle.update": "a trust bundle's next version stored",
    "trust-bundle.delete": "a trust bundle deleted",
    "server-ca.rotate": "a new built-in server CA made beside the current one (iotdps tls rotate)",
    "server-ca.activate": "the new built-in server CA presented (iotdps tls activate; force: devices stranded)",
    "server-ca.retire": "the old built-in server CA dropped from the trust bundle (iotdps tls retire)",
    "server-ca.move-to-token": "the built-in server CA's key moved into a PKCS#11 token",
    PRUNED: "entries older than the retention removed; names the last one removed",
}


def check_action(action: str) -> str:
    """`action` when it is a well-formed action name; InvalidInput otherwise."""
    if len(action) > _MAX or not _ACTION.fullmatch(action):
        raise InvalidInput(
            f"{action[:80]!r} is not an action name (dotted lower-case words, such as enrollment.create)"
        )
    return action


def check_action_filter(action: str) -> str:
    """A filter names a whole action or a prefix of whole words (`enrollment`, `ca`)."""
    if "." not in action and len(action) <= _MAX and _ACTION.fullmatch(action + ".x"):
        return action
    return check_action(action)
