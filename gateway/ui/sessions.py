"""Who is signed in to the admin page: signed cookies that any gateway process accepts.

The ``th_session`` cookie carries the session itself: a random id, when it began and
when it was last used, and an HMAC-SHA256 over them with a key derived from the admin
token (``signing_key``). So every worker of ``--workers N`` (and every instance with
the same token) accepts it without shared state, and a changed admin token (a reload)
ends every session at once: its key no longer verifies them. A session ends when it
has been idle for ``idle_s`` (each page re-signs the cookie with a new ``last_seen``)
or alive for ``max_age_s`` (``started`` is signed and never moves). The CSRF token of
its forms is derived from the id (``HMAC(key, "csrf" + id)``), so it is the same on
every worker and for the session's whole life.

Signing out clears the cookie in the browser and puts the id on this process's
``ended`` list until its maximum age; another worker, which never saw the sign-out,
would accept a copy of the old cookie until it idles out (at most ``idle_s``), or until
the admin token changes.

The sign-in form's CSRF pair (``LoginNonces``) is signed too: a random nonce and its
issue time in the ``th_login`` cookie, the nonce in the form; good for
``login_nonce_s``, and once per process.

Everything here is synchronous and takes ``now`` (wall-clock seconds: the same on
every process of a machine, and across machines), like the actors' cores.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import attrs

VERSION = "v1"


@attrs.frozen
class SessionRules:
    idle_s: float = 1800.0  # 30 minutes without a page
    max_age_s: float = 43200.0  # 12 hours in all
    max_ended: int = 10000  # signed-out ids remembered by this process
    login_nonce_s: float = 600.0  # how long a sign-in form stays valid
    max_login_nonces: int = 1000  # redeemed nonces remembered by this process


@attrs.frozen
class Session:
    id: str  # random; in the cookie
    csrf: str  # the token every form of this session carries
    started: int
    last_seen: int


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def signing_key(admin_token: str, purpose: str) -> bytes:
    """The key for one kind of signed value, derived from the admin token (never the
    token itself, and a different key per purpose)."""
    return hmac.new(admin_token.encode(), f"tollhouse admin page {purpose} {VERSION}".encode(),
                    hashlib.sha256).digest()


def _mac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _signed(key: bytes, *fields: str) -> str:
    body = ".".join((VERSION, *fields))
    return f"{body}.{_mac(key, body)}"


def _verified(key: bytes, value: str | None, count: int) -> list[str] | None:
    """The fields of a value signed with ``key`` (``count`` of them), or None."""
    if not value or len(value) > 512:
        return None
    body, _, mac = value.rpartition(".")
    fields = body.split(".")
    if len(fields) != count + 1 or fields[0] != VERSION:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(key, body).encode()):
        return None
    return fields[1:]


def _seconds(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 12 else None


@attrs.define
class Sessions:
    rules: SessionRules = attrs.field(factory=SessionRules)
    _ended: dict[str, int] = attrs.field(factory=dict)  # signed out here: id -> when its maximum age ends

    def begin(self, admin_token: str, now: float) -> tuple[str, Session]:
        """A new session: its cookie value and the session."""
        session_id = secrets.token_urlsafe(24)
        session = Session(session_id, self._csrf(admin_token, session_id), int(now), int(now))
        return self.cookie(admin_token, session), session

    def cookie(self, admin_token: str, session: Session) -> str:
        """The session's cookie value, signed as it stands (``find`` gives it ``last_seen``)."""
        return _signed(signing_key(admin_token, "session"), session.id, str(session.started), str(session.last_seen))

    def find(self, cookie: str | None, admin_token: str | None, now: float) -> Session | None:
        """The live session in this cookie, used ``now`` (to be re-signed into the answer),
        or None: not signed with this admin token's key, idle, too old, or signed out here."""
        if not admin_token:
            return None
        fields = _verified(signing_key(admin_token, "session"), cookie, 3)
        if fields is None:
            return None
        session_id, started, last_seen = fields[0], _seconds(fields[1]), _seconds(fields[2])
        if started is None or last_seen is None or session_id in self._ended:
            return None
        if now - last_seen > self.rules.idle_s or now - started > self.rules.max_age_s or last_seen > now + 60:
            return None
        return Session(session_id, self._csrf(admin_token, session_id), started, max(last_seen, int(now)))

    def end(self, session: Session, now: float) -> None:
        """Signed out: this process refuses the id from now on (until it would have expired)."""
        self._ended = {i: until for i, until in self._ended.items() if until > now}
        self._ended[session.id] = int(session.started + self.rules.max_age_s) + 1
        while len(self._ended) > self.rules.max_ended:
            del self._ended[next(iter(self._ended))]

    def _csrf(self, admin_token: str, session_id: str) -> str:
        return _mac(signing_key(admin_token, "csrf"), session_id)


@attrs.define
class LoginNonces:
    """The sign-in form's CSRF pair: a signed nonce in a cookie and the nonce in the
    form, good for ``login_nonce_s`` and once per process."""

    rules: SessionRules = attrs.field(factory=SessionRules)
    _redeemed: dict[str, float] = attrs.field(factory=dict)  # nonce -> when it was issued

    def issue(self, admin_token: str, now: float) -> tuple[str, str]:
        """A fresh nonce: (the cookie's signed value, the form's nonce)."""
        nonce = secrets.token_urlsafe(24)
        return _signed(signing_key(admin_token, "sign-in"), nonce, str(int(now))), nonce

    def redeem(self, admin_token: str, cookie: str | None, form: str | None, now: float) -> bool:
        """Whether the cookie is a live nonce signed here and the form carries the same
        (used up either way)."""
        fields = _verified(signing_key(admin_token, "sign-in"), cookie, 2)
        if fields is None or not form:
            return False
        nonce, issued = fields[0], _seconds(fields[1])
        if issued is None or not hmac.compare_digest(nonce.encode(), form.encode()):
            return False
        self._redeemed = {n: t for n, t in self._redeemed.items() if now - t <= self.rules.login_nonce_s}
        if nonce in self._redeemed:
            return False
        self._redeemed[nonce] = issued
        while len(self._redeemed) > self.rules.max_login_nonces:
            del self._redeemed[next(iter(self._redeemed))]
        return 0 <= now - issued + 1 and now - issued <= self.rules.login_nonce_s


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
    that a long random token does not already deny.) Each process counts on its own:
    with ``--workers N`` a guesser gets up to N times the tries, still bounded."""

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
