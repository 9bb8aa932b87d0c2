"""Who may see what on the park page: the park manager and each company, by token (docs/web.md, "Access").

What it is: `Role` (the park manager, or one company), `Access` (a presented token checked against
the SHA-256 digests from `hubctl.config.resolve.web_settings`, sessions for the browser, the
once-only log of wrong credentials).

Decisions:

- **Tokens, hashed at rest.** A token comes from the unit's EnvironmentFile or as its SHA-256 in
  the config; only digests are kept in memory, in the config or anywhere in the state directory.
  A presented token is hashed and compared with every role's digest by `hmac.compare_digest`
  (constant time; all roles are tried, so the time does not say which role was close). SHA-256
  without salt or stretching is enough for random tokens of 16 characters or more (refused
  shorter at start: `web_problems`); it would not be for passwords people choose.
- **Two ways to present one**: `Authorization: Bearer TOKEN` (curl, Prometheus'
  `authorization.credentials_file`) or the login form, which gives the browser a session cookie
  (`hubctl_session`: a random id, HttpOnly, SameSite=Strict; 12 h; kept in memory only, so a
  restart logs everyone out). No write actions exist on the page.
- **Wrong credentials: 401, logged once.** The first wrong token from an address is logged (at
  WARNING, with the address); later ones from it are only counted
  (`hubctl_web_auth_failures_total`), so a browser retrying with an old token or a scanner never
  floods the journal. A request without any credentials is a plain 401, not logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from hubctl.config.resolve import WebSettings

__all__ = ["COOKIE", "Access", "Role"]

log = logging.getLogger("hubctl.web")

COOKIE = "hubctl_session"
SESSION_S = 12 * 3600.0
MAX_SESSIONS = 1000
MAX_REMEMBERED = 1000  # addresses whose first wrong token was logged


@dataclass(frozen=True, slots=True)
class Role:
    """The park manager (`company` None) or one company."""

    company: str | None = None

    @property
    def manager(self) -> bool:
        return self.company is None

    @property
    def name(self) -> str:
        return "park manager" if self.company is None else f"company {self.company}"


class Access:
    """Tokens to roles, sessions, and the wrong-credentials log (module docstring)."""

    def __init__(self, settings: WebSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._digests: list[tuple[bytes, Role]] = []
        if settings.manager_digest is not None:
            self._digests.append((bytes.fromhex(settings.manager_digest), Role()))
        self._digests += [(bytes.fromhex(d), Role(c)) for c, d in sorted(settings.company_digests.items())]
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[Role, float]] = OrderedDict()
        self._logged: OrderedDict[str, None] = OrderedDict()
        self.failures = 0

    def check(self, token: str) -> Role | None:
        """The role a token opens; None: none (every digest is compared, in constant time each)."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, role in self._digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = role
        return found

    def login(self, token: str, remote: str | None) -> tuple[Role, str] | None:
        """A new session for a valid token: (role, session id); None (and the failure noted) otherwise."""
        role = self.check(token)
        if role is None:
            self.failed(remote)
            return None
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = (role, self._clock() + SESSION_S)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        log.info("park page: %s logged in from %s", role.name, remote or "?")
        return role, sid

    def logout(self, sid: str | None) -> None:
        if sid is not None:
            self._sessions.pop(sid, None)

    def session(self, sid: str) -> Role | None:
        entry = self._sessions.get(sid)
        if entry is None:
            return None
        role, expires = entry
        if self._clock() >= expires:
            del self._sessions[sid]
            return None
        return role

    def failed(self, remote: str | None) -> None:
        """A wrong token: counted; logged only the first time from this address."""
        self.failures += 1
        key = remote or "?"
        if key in self._logged:
            return
        self._logged[key] = None
        while len(self._logged) > MAX_REMEMBERED:
            self._logged.popitem(last=False)
        log.warning(
            "park page: wrong credentials from %s (401; further ones from there are counted in "
            "hubctl_web_auth_failures_total, not logged)",
            key,
        )
