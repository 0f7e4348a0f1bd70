"""The shared access policies of one service, kept in `<data_dir>/access-policies.json`
(owner-only, 0600): generated at first start (`iotdps up` shows them once, as connection
strings), loaded after, and asked who a request acts as.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from iotdps.access.rights import DEFAULT_POLICIES, HUB_POLICIES, HUB_RIGHTS, AccessPolicy, Permission, new_key
from iotdps.access.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, SessionGate, session_policy
from iotdps.access.tokens import verify_token
from iotdps.errors import InvalidInput
from iotdps.fsutil import atomic_write

__all__ = ["POLICIES_FILE", "AccessPolicies"]

POLICIES_FILE = "access-policies.json"


class AccessPolicies:
    """The named policies of one service. `just_created` is True when `load_or_create` made them
    now (so `iotdps up` shows the keys this once)."""

    def __init__(self, policies: Iterable[AccessPolicy], *, just_created: bool = False) -> None:
        self._policies = {p.name: p for p in policies}
        self.just_created = just_created
        # Policies made by this process (all of them at first start; the hub policies when an
        # older policy file had none): their connection strings are shown this once.
        self.fresh_names: tuple[str, ...] = tuple(sorted(self._policies)) if just_created else ()

    def __repr__(self) -> str:
        return f"AccessPolicies({sorted(self._policies)!r})"

    @classmethod
    def generate(cls, rights: Mapping[str, frozenset[Permission]] = DEFAULT_POLICIES) -> AccessPolicies:
        return cls(
            (AccessPolicy(name, new_key(), new_key(), frozenset(r)) for name, r in rights.items()),
            just_created=True,
        )

    @classmethod
    def load(cls, path: Path) -> AccessPolicies:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise InvalidInput(f"{path} is not valid JSON") from None
        items = doc.get("policies") if isinstance(doc, Mapping) else None
        if not isinstance(items, list) or not items:
            raise InvalidInput(f"{path} holds no access policies")
        return cls(AccessPolicy.from_json(item) for item in items)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> AccessPolicies:
        """The policies in `<data_dir>/access-policies.json`, generated (mode 0600) when absent."""
        path = Path(data_dir) / POLICIES_FILE
        if path.exists():
            loaded = cls.load(path)
            if not any(p.rights & HUB_RIGHTS for p in loaded._policies.values()):
                # A data dir from before the hub service API: add the hub policies (keeping
                # every existing one) so the hubs are manageable after an upgrade.
                added = [p for p in cls.generate(HUB_POLICIES)._policies.values() if p.name not in loaded._policies]
                loaded._policies.update((p.name, p) for p in added)
                loaded.save(path)
                loaded.fresh_names = tuple(sorted(p.name for p in added))
            return loaded
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        policies = cls.generate()
        policies.save(path)
        return policies

    def save(self, path: Path) -> None:
        doc = {"policies": [p.to_json() for p in self._policies.values()]}
        atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600)

    @property
    def names(self) -> Sequence[str]:
        return sorted(self._policies)

    def get(self, name: str) -> AccessPolicy:
        try:
            return self._policies[name]
        except KeyError:
            raise InvalidInput(f"no access policy named {name!r}") from None

    def connection_string(self, policy: str, host: str) -> str:
        """`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` (the primary key)."""
        found = self.get(policy)
        return f"HostName={host};SharedAccessKeyName={found.name};SharedAccessKey={found.primary_key.reveal()}"

    def authenticate(
        self,
        header: str | None,
        *,
        host_names: Sequence[str],
        path: str,
        needed: Permission | None,
        now: float | None = None,
    ) -> AccessPolicy:
        """The policy that signed `header`, when the token is valid for `path` and grants
        `needed`; else Unauthorized (the same safe message whatever the reason)."""
        return verify_token(
            self._policies,
            header,
            host_names=host_names,
            path=path,
            needed=needed,
            now=time.time() if now is None else now,
        )

    def authorize(
        self,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        method: str,
        *,
        host_names: Sequence[str],
        path: str,
        needed: Permission | None,
        sessions: SessionGate | None,
    ) -> AccessPolicy:
        """The policy a request acts as: its SharedAccessSignature's, or, with no Authorization
        header, the console session its cookie names (iotdps.web). A session stands for the
        policies whose keys the operator gave at login and holds the same rights, checked
        here route by route like a token's; a change (any method but GET/HEAD/OPTIONS) must
        also carry the session's CSRF token (403 without it). A policy whose keys were
        rotated since the login no longer counts for the session."""
        header = headers.get("Authorization")
        cookie = cookies.get(SESSION_COOKIE)
        if header or sessions is None or not cookie:
            return self.authenticate(header, host_names=host_names, path=path, needed=needed)
        proven = sessions.proven(cookie, headers.get(CSRF_HEADER), change=method.upper() not in SAFE_METHODS)
        return session_policy(self._policies, proven, needed)
