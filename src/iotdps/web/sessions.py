"""The console's sessions and its login limiter, held in this process's memory.

A session stands for the access policies whose keys the operator gave at login: it remembers
each policy's name and a digest of the key (never the key), and the API's check
(`AccessPolicies.authorize`) turns that into the policy's rights route by route, so a session
can do exactly what a token of those policies can. A rotated key ends the session's claim on
that policy.

Why in memory: one `iotdps up` serves its own console; a restart signs everyone out, which
is acceptable for an operator tool and keeps session ids out of the database. Several nodes
behind one name would need a shared table (or sticky routing); see the README.

Session ids are 256-bit random values; the table is keyed by their SHA-256, so even a dump of
this process's memory does not hand out live cookies. Each session has its own CSRF token
(synchronizer token): the page reads it from `GET /console/session` (same origin only, the
cookie is SameSite=Strict) and sends it in `X-CSRF-Token` with every change. Lifetimes: idle
timeout and an absolute limit, whichever ends first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from iotdps.errors import Forbidden, Throttled, Unauthorized

__all__ = [
    "ABSOLUTE_SECONDS",
    "IDLE_SECONDS",
    "LoginLimiter",
    "Session",
    "SessionTable",
]

IDLE_SECONDS = 30 * 60
ABSOLUTE_SECONDS = 8 * 3600
MAX_SESSIONS = 1000


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass
class Session:
    policies: dict[str, str]  # policy name -> key digest (access.key_digest)
    csrf_token: str
    created: float
    last_seen: float
    expires: float  # absolute end (the clock's seconds)

    def alive(self, now: float, idle: float) -> bool:
        return now < self.expires and now - self.last_seen < idle


@dataclass
class SessionTable:
    """Implements `iotdps.access.SessionGate`. `clock`: seconds (time.time by default, so
    `expires` can be shown to the operator as a wall-clock time)."""

    idle_seconds: float = IDLE_SECONDS
    absolute_seconds: float = ABSOLUTE_SECONDS
    max_sessions: int = MAX_SESSIONS
    clock: Callable[[], float] = time.time
    _sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, policies: Mapping[str, str]) -> tuple[str, Session]:
        """A new session for `policies`; returns the session id (the cookie's value, shown
        nowhere else) and the session."""
        now = self.clock()
        self._make_room(now)
        session_id = secrets.token_urlsafe(32)
        session = Session(dict(policies), secrets.token_urlsafe(32), now, now, now + self.absolute_seconds)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def _make_room(self, now: float) -> None:
        if len(self._sessions) < self.max_sessions:
            return
        for key in [k for k, s in self._sessions.items() if not s.alive(now, self.idle_seconds)]:
            del self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the least recently used

    def find(self, session_id: str | None) -> Session | None:
        """The live session `session_id` names (its idle timer restarts), else None."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if not session.alive(now, self.idle_seconds):
            del self._sessions[key]
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def close(self, session_id: str | None) -> bool:
        return bool(session_id) and self._sessions.pop(_digest(str(session_id)), None) is not None

    def check_csrf(self, session: Session, token: str | None) -> None:
        if not token or not hmac.compare_digest(token.encode("utf-8"), session.csrf_token.encode("utf-8")):
            raise Forbidden("a change through the console needs the session's X-CSRF-Token header")

    # SessionGate ---------------------------------------------------------------------------

    def proven(self, session_id: str, csrf_token: str | None, *, change: bool) -> Mapping[str, str]:
        session = self.find(session_id)
        if session is None:
            raise Unauthorized("the console session is unknown or has expired; sign in again")
        if change:
            self.check_csrf(session, csrf_token)
        return dict(session.policies)


@dataclass
class LoginLimiter:
    """Failed logins per client address: after `max_failures` within `window` seconds the
    address is refused (429, Retry-After) without its key being checked, until its oldest
    failure ages out. A success does not reset the count: a holder of one valid (say,
    read-only) key must not be able to keep guessing the owner key between successes.
    Behind a reverse proxy every client shares the proxy's address, so the limit is
    shared too (a safe failure mode: slower logins, never more guesses).

    Many addresses (a botnet, or the whole 127/8 on loopback) are bounded by a second,
    server-wide limit: past `max_total` failures within `window` every sign-in waits. That
    lets an attacker delay operators' logins, and never lets anyone guess faster; open
    sessions are not affected."""

    max_failures: int = 5
    window: float = 300.0
    max_total: int = 200
    max_addresses: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _failures: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)
    _all: list[float] = field(default_factory=list)

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def _wait(self, oldest: float, now: float) -> int:
        return max(1, int(self.window - (now - oldest)) + 1)

    def check(self, address: str) -> None:
        """Raises Throttled while `address`, or the server as a whole, has used up its failures."""
        now = self.clock()
        times = self._recent(address, now)
        if len(times) >= self.max_failures:
            wait = self._wait(times[0], now)
            raise Throttled(f"too many failed sign-ins from this address; try again in {wait} s", wait)
        self._all = [t for t in self._all if now - t < self.window]
        if len(self._all) >= self.max_total:
            wait = self._wait(self._all[0], now)
            raise Throttled(f"too many failed sign-ins on this server; try again in {wait} s", wait)

    def failed(self, address: str) -> None:
        now = self.clock()
        self._all.append(now)
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
