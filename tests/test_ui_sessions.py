"""The admin page's session rules on their own, with time as an argument."""

from __future__ import annotations

from gateway.ui.sessions import LoginNonces, SessionRules, Sessions, SignInGuard, SignInLimits

TOKEN = "th-admin-token-0123456789"


def test_a_session_lives_while_used_but_never_past_its_maximum_age():
    sessions = Sessions(SessionRules(idle_s=10, max_age_s=25))
    cookie, session = sessions.begin(TOKEN, now=0)
    for now in (9, 18, 25):
        found = sessions.find(cookie, TOKEN, now)
        assert found is not None and (found.id, found.csrf, found.last_seen) == (session.id, session.csrf, now)
        cookie = sessions.cookie(TOKEN, found)  # re-signed into the page's answer
    assert sessions.find(cookie, TOKEN, 26) is None  # used 1 s ago, but 26 s old


def test_an_idle_session_ends_and_its_cookie_says_nothing_secret():
    sessions = Sessions(SessionRules(idle_s=10))
    cookie, session = sessions.begin(TOKEN, now=0)
    assert TOKEN not in cookie and session.csrf not in cookie
    assert sessions.find(cookie, TOKEN, 10.5) is None
    assert sessions.find(cookie, TOKEN, 1) is not None  # a cookie re-signed at 1 would still be live


def test_any_process_with_the_same_admin_token_accepts_a_session_and_no_other():
    cookie, session = Sessions().begin(TOKEN, now=0)
    elsewhere = Sessions()  # another worker: nothing shared but the token
    found = elsewhere.find(cookie, TOKEN, 5)
    assert found is not None and found.csrf == session.csrf  # the same CSRF token on every worker
    assert elsewhere.find(cookie, "th-rotated-admin-token", 5) is None
    assert elsewhere.find(cookie, None, 5) is None  # no token configured any more: nobody is signed in


def test_a_changed_cookie_is_refused():
    sessions = Sessions()
    cookie, _ = sessions.begin(TOKEN, now=0)
    version, session_id, started, seen, mac = cookie.split(".")
    for forged in (f"{version}.{session_id}.{started}.99999999999.{mac}",  # a later last use
                   f"{version}.{session_id}.{int(started) + 1000}.{seen}.{mac}",  # a younger session
                   f"v0.{session_id}.{started}.{seen}.{mac}", cookie[:-1], "", "x" * 600):
        assert sessions.find(forged, TOKEN, 1) is None, forged


def test_a_signed_out_session_is_refused_by_this_process():
    sessions = Sessions()
    cookie, session = sessions.begin(TOKEN, now=0)
    sessions.end(session, now=1)
    assert sessions.find(cookie, TOKEN, 2) is None
    other, _ = sessions.begin(TOKEN, now=2)
    assert sessions.find(other, TOKEN, 3) is not None


def test_a_sign_in_nonce_is_good_once_and_only_while_fresh():
    nonces = LoginNonces(SessionRules(login_nonce_s=60))
    cookie, nonce = nonces.issue(TOKEN, now=0)
    assert nonce in cookie and TOKEN not in cookie
    assert not nonces.redeem(TOKEN, cookie, "other", 1)
    assert not nonces.redeem(TOKEN, None, nonce, 1)
    cookie, fresh = nonces.issue(TOKEN, now=0)
    assert LoginNonces(SessionRules(login_nonce_s=60)).redeem(TOKEN, cookie, fresh, 59)  # on any worker
    assert nonces.redeem(TOKEN, cookie, fresh, 59)
    assert not nonces.redeem(TOKEN, cookie, fresh, 59)  # used up here
    cookie, stale = nonces.issue(TOKEN, now=0)
    assert not nonces.redeem(TOKEN, cookie, stale, 61)
    cookie, made_up = nonces.issue("th-another-token-000000", now=0)
    assert not nonces.redeem(TOKEN, cookie, made_up, 1)
    assert not nonces.redeem(TOKEN, "v1.made-up.0.xyz", "made-up", 1)


def test_an_address_that_keeps_guessing_waits_out_the_window():
    guard = SignInGuard(SignInLimits(max_failures=3, window_s=60))
    for now in (0, 10, 20):
        assert guard.wait_s("10.0.0.1", now) == 0
        guard.failed("10.0.0.1", now)
    assert guard.wait_s("10.0.0.1", 30) == 30  # until the first failure is 60 s old
    assert guard.wait_s("10.0.0.2", 30) == 0  # another address is not held up
    assert guard.wait_s("10.0.0.1", 60) == 0  # one failure left the window: one more try
    guard.failed("10.0.0.1", 60)
    assert guard.wait_s("10.0.0.1", 61) == 9
    guard.succeeded("10.0.0.1")
    assert guard.wait_s("10.0.0.1", 61) == 0
