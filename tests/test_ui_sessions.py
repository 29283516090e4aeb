"""The admin page's session rules on their own, with time as an argument."""

from __future__ import annotations

from gateway.ui.sessions import LoginNonces, SessionRules, Sessions, SignInGuard, SignInLimits, fingerprint

TOKEN = fingerprint("th-admin")


def test_a_session_lives_while_used_but_never_past_its_maximum_age():
    sessions = Sessions(SessionRules(idle_s=10, max_age_s=25))
    session_id, session = sessions.begin(TOKEN, now=0)
    for now in (9, 18, 25):
        assert sessions.find(session_id, TOKEN, now) is session
    assert sessions.find(session_id, TOKEN, 26) is None  # used 1 s ago, but 26 s old
    assert len(sessions) == 0


def test_an_idle_session_ends_and_its_id_is_not_kept():
    sessions = Sessions(SessionRules(idle_s=10))
    session_id, session = sessions.begin(TOKEN, now=0)
    assert session_id not in repr(sessions)  # kept by the id's hash only
    assert sessions.find(session_id, TOKEN, 10.5) is None
    assert sessions.find(session_id, TOKEN, 1) is None  # gone for good


def test_a_session_is_bound_to_the_admin_token_it_signed_in_with():
    sessions = Sessions()
    session_id, _ = sessions.begin(TOKEN, now=0)
    assert sessions.find(session_id, fingerprint("th-other"), 1) is None
    assert sessions.find(session_id, TOKEN, 1) is None
    other_id, _ = sessions.begin(TOKEN, now=0)
    assert sessions.find(other_id, None, 1) is None  # no token configured any more: nobody is signed in


def test_the_oldest_sessions_go_past_the_limit():
    sessions = Sessions(SessionRules(max_sessions=2))
    first, _ = sessions.begin(TOKEN, now=0)
    second, _ = sessions.begin(TOKEN, now=1)
    third, _ = sessions.begin(TOKEN, now=2)
    assert [sessions.find(i, TOKEN, 3) is not None for i in (first, second, third)] == [False, True, True]


def test_a_sign_in_nonce_is_good_once_and_only_while_fresh():
    nonces = LoginNonces(SessionRules(login_nonce_s=60))
    nonce = nonces.issue(now=0)
    assert not nonces.redeem(nonce, "other", 1)
    assert not nonces.redeem(None, nonce, 1)
    fresh = nonces.issue(now=0)
    assert nonces.redeem(fresh, fresh, 59)
    assert not nonces.redeem(fresh, fresh, 59)  # used up
    stale = nonces.issue(now=0)
    assert not nonces.redeem(stale, stale, 61)
    assert not nonces.redeem("made-up", "made-up", 1)


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
