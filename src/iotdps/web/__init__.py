"""The console: a web UI for operators, served by `iotdps up` on the management port.

`Console(policies).mount(management_app)` adds the page, its assets and the sign-in routes
under /console/; `Console.sessions` is the session table the management API accepts as a
second way in (`build_management_app(sessions=...)`). The pages call the management API's own
routes; the assets are hand-written ES modules and one stylesheet (no build step).
"""

from __future__ import annotations

from iotdps.web.app import CONSOLE_PATH, CONTENT_SECURITY_POLICY, SECURITY_HEADERS, Console
from iotdps.web.sessions import LoginLimiter, SessionTable

__all__ = ["CONSOLE_PATH", "CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "Console", "LoginLimiter", "SessionTable"]
