"""Sign-in hardening: constant-time check, back-off per user name and client, sessions."""

from __future__ import annotations

import logging

import pytest

from assistant.auth import LoginThrottle, MerchGate, SessionStore, check_credentials

CREDS = ("merch", "a long secret")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: FakeClock) -> MerchGate:
    return MerchGate(CREDS, throttle=LoginThrottle(clock=clock, pseudonymise=lambda s: f"pseudo({len(s)})"),
                     sessions=SessionStore(clock=clock, idle_s=60, max_age_s=600))


def test_credentials_need_both_fields():
    assert check_credentials(CREDS, "merch", "a long secret")
    assert not check_credentials(CREDS, "merch", "a long secreT")
    assert not check_credentials(CREDS, "other", "a long secret")
    assert not check_credentials(CREDS, "merch", "")
    assert not check_credentials(CREDS, None, None)
    assert not check_credentials(None, "merch", "a long secret")


def test_sixth_wrong_guess_is_refused_with_a_delay_and_other_users_are_unaffected(caplog):
    clock = FakeClock()
    g = gate(clock)
    with caplog.at_level(logging.WARNING, logger="bundle_assistant.auth"):
        for attempt in range(5):
            got = g.sign_in("merch", f"guess {attempt}", client="10.0.0.1")
            assert not got.ok and got.message.startswith("Wrong user name or password")
            clock.now += 1
        sixth = g.sign_in("merch", "a long secret", client="10.0.0.1")  # even the right password waits
    assert not sixth.ok and sixth.token is None
    assert sixth.retry_after_s > 0 and "Too many failed sign-ins" in sixth.message
    # another user on another client signs in at once
    other = g.sign_in("merch-2", "whatever", client="10.0.0.2")
    assert other.message.startswith("Wrong user name or password")  # checked, not throttled
    assert MerchGate(("merch-2", "pw of two"), throttle=g.throttle).sign_in("merch-2", "pw of two", "10.0.0.2").ok
    # the same client is throttled whatever user name it tries next
    assert "Too many" in g.sign_in("someone", "x", client="10.0.0.1").message
    # the log names neither the user nor the client in clear
    text = caplog.text
    assert "user merch" not in text and "10.0.0.1" not in text and "user pseudo(5)" in text


def test_six_wrong_guesses_the_sixth_refused_with_a_delay_other_users_unaffected():
    """The issue's words: six wrong guesses; the sixth is not even checked but refused with
    a delay, while another user on another client signs in at once."""
    clock = FakeClock()
    g = gate(clock)
    answers = []
    for attempt in range(6):
        answers.append(g.sign_in("merch", f"wrong {attempt}", client="10.0.0.9"))
        clock.now += 1
    assert all(a.message.startswith("Wrong user name or password") for a in answers[:5])
    assert not any(a.retry_after_s for a in answers[:4])  # the fifth failure starts the delay (and says so)
    sixth = answers[5]
    assert not sixth.ok and sixth.token is None and sixth.retry_after_s > 0
    assert "Too many failed sign-ins" in sixth.message
    assert MerchGate(("other", "their secret"), throttle=g.throttle).sign_in("other", "their secret", "10.0.0.8").ok


def test_delay_grows_and_ends():
    clock = FakeClock()
    g = gate(clock)
    for _ in range(5):
        g.sign_in("merch", "wrong", client="c")
    first = g.throttle.state("merch", "c").retry_after_s
    assert first == pytest.approx(30.0)
    clock.now += first + 0.1
    assert g.throttle.state("merch", "c").allowed
    again = g.sign_in("merch", "wrong again", client="c")  # the sixth failure within 5 minutes
    assert again.retry_after_s == pytest.approx(60.0)  # doubled
    clock.now += 61
    assert g.sign_in("merch", "a long secret", client="c").ok  # success clears the count
    assert g.throttle.state("merch", "c").failures == 0


def test_failures_older_than_the_window_do_not_count():
    clock = FakeClock()
    g = gate(clock)
    for _ in range(4):
        g.sign_in("merch", "wrong", client="c")
    clock.now += 301
    assert not g.sign_in("merch", "wrong", client="c").retry_after_s  # only one recent failure
    assert g.sign_in("merch", "a long secret", client="c").ok


def test_sessions_expire_when_idle_and_at_their_maximum_age():
    clock = FakeClock()
    g = gate(clock)
    token = g.sign_in("merch", "a long secret", client="c").token
    assert token and g.check(token).user == "merch"
    clock.now += 59
    assert g.check(token) is not None  # use restarts the idle clock
    clock.now += 59
    assert g.check(token) is not None
    clock.now += 61
    assert g.check(token) is None  # idle too long
    token = g.sign_in("merch", "a long secret", client="c").token
    for _ in range(11):  # kept busy, but 600 s is the most a session lives
        clock.now += 55
        g.check(token)
    assert g.check(token) is None
    token = g.sign_in("merch", "a long secret", client="c").token
    g.sign_out(token)
    assert g.check(token) is None
    assert g.check("forged-token") is None and g.check(None) is None


def test_gate_off_without_credentials():
    g = MerchGate(None)
    assert not g.enabled
    assert not g.sign_in("merch", "a long secret").ok
