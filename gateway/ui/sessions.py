"""Who is signed in to the admin page: random session ids kept server-side.

A browser holds only an opaque id (``th_session``); the server keeps, by the id's
hash, when the session began, when it was last used, its CSRF token and a
fingerprint of the admin token it signed in with. A session ends when it is signed
out, when it has been idle for ``idle_s`` or alive for ``max_age_s``, or when the
admin token changes (its fingerprint no longer matches): so a token rotated by a
config reload signs every page out. The sign-in form has its own CSRF pair
(``LoginNonces``), so no other site can sign a browser in to an account of its own.

Everything here is synchronous and takes ``now``, like the actors' cores.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs


@attrs.frozen
class SessionRules:
    idle_s: float = 1800.0  # 30 minutes without a page
    max_age_s: float = 43200.0  # 12 hours in all
    max_sessions: int = 100  # the oldest is signed out past this
    login_nonce_s: float = 600.0  # how long a sign-in form stays valid
    max_login_nonces: int = 1000


@attrs.define
class Session:
    csrf: str  # the token every form of this session carries
    started: float
    last_seen: float
    token_print: str  # fingerprint of the admin token it signed in with


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@attrs.define
class Sessions:
    rules: SessionRules = attrs.field(factory=SessionRules)
    _by_id: dict[str, Session] = attrs.field(factory=dict)  # by the id's hash, oldest first

    def __len__(self) -> int:
        return len(self._by_id)

    def begin(self, token_print: str, now: float) -> tuple[str, Session]:
        """A new session: its id (for the cookie, never stored) and its record."""
        session_id = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), now, now, token_print)
        self._by_id[_key(session_id)] = session
        while len(self._by_id) > self.rules.max_sessions:
            del self._by_id[next(iter(self._by_id))]
        return session_id, session

    def find(self, session_id: str | None, token_print: str | None, now: float) -> Session | None:
        """The live session with this id (and marks it used), or None: unknown, expired,
        or signed in with another admin token than the one configured now."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._by_id.get(key)
        if session is None:
            return None
        if (token_print is None or not hmac.compare_digest(session.token_print, token_print)
                or now - session.last_seen > self.rules.idle_s or now - session.started > self.rules.max_age_s):
            del self._by_id[key]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(_key(session_id), None)

    def end_all(self) -> None:
        self._by_id.clear()


@attrs.define
class LoginNonces:
    """The sign-in form's CSRF pair: a random nonce in a cookie and in the form, good
    once and for ``login_nonce_s``."""

    rules: SessionRules = attrs.field(factory=SessionRules)
    _issued: dict[str, float] = attrs.field(factory=dict)

    def issue(self, now: float) -> str:
        nonce = secrets.token_urlsafe(24)
        self._issued[nonce] = now
        while len(self._issued) > self.rules.max_login_nonces:
            del self._issued[next(iter(self._issued))]
        return nonce

    def redeem(self, cookie: str | None, form: str | None, now: float) -> bool:
        """Whether the cookie and the form carry the same live nonce (used up either way)."""
        if not cookie or not form or not hmac.compare_digest(cookie.encode(), form.encode()):
            return False
        issued = self._issued.pop(cookie, None)
        return issued is not None and now - issued <= self.rules.login_nonce_s


@attrs.frozen
class SignInLimits:
    max_failures: int = 10  # wrong tokens from one address...
    window_s: float = 300.0  # ...within this long, and it must wait out the window
    max_addresses: int = 10000


@attrs.define
class SignInGuard:
    """Slows a guesser down: an address that sent ``max_failures`` wrong tokens within
    ``window_s`` may not try again until its oldest failure leaves the window. (The
    JSON API's bearer check has no form to retry, and a guesser gains nothing there
    that a long random token does not already deny.)"""

    limits: SignInLimits = attrs.field(factory=SignInLimits)
    _failures: dict[str, list[float]] = attrs.field(factory=dict)

    def wait_s(self, address: str, now: float) -> float:
        """0 when ``address`` may try now, else how long it must wait."""
        recent = [t for t in self._failures.get(address, ()) if now - t < self.limits.window_s]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        if len(recent) < self.limits.max_failures:
            return 0.0
        return recent[0] + self.limits.window_s - now

    def failed(self, address: str, now: float) -> None:
        self._failures.setdefault(address, []).append(now)
        while len(self._failures) > self.limits.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
