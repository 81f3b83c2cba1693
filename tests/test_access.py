"""API keys and rate limits without a server (``bertrt.runtime.access``): the key file's format and its errors, key
ids, header matching as latin-1 bytes, reloads that keep the old keys on error, and token buckets on a fake clock."""

import hashlib

import pytest

from bertrt.errors import InputError
from bertrt.runtime.access import KeyRing, RateLimiter, check_access, parse_keys, parse_rate, retry_after

A, B = "alpha-0123456789abcdef", "bravo:with:colons-0123"


def test_key_file_format_names_comments_and_ids():
    keys = parse_keys(f"# ops keys\n\n  {A}  \nsvc-b:{B}\n", "f")
    assert keys == {A.encode(): hashlib.sha256(A.encode()).hexdigest()[:8], B.encode(): "svc-b"}


@pytest.mark.parametrize("text, message", [
    ("short-key", "f line 1: the key has 9 characters; use at least 16"),
    ("# c\nname:short", "f line 2 (key 'name'): the key has 5 characters; use at least 16"),
    ("with space 0123456789", "f line 1: the key must be visible ASCII without spaces"),
    ("clé-0123456789abcdef", "f line 1: the key must be visible ASCII without spaces"),
    ("bad name:0123456789abcdef", "f line 1: the key name must be 1-64 letters"),
    (f"{A}\n{A}", "f line 2: the same key appears twice"),
    (f"x:{A}\nx:{B}", "f line 2 (key 'x'): the key id 'x' is used twice"),
    ("# only a comment\n\n", "f holds no key"),
])
def test_key_file_errors_name_the_line(text, message):
    with pytest.raises(InputError) as e:
        parse_keys(text, "f")
    assert str(e.value).startswith(message)


def test_a_single_key_gets_the_same_checks():
    with pytest.raises(InputError, match="at least 16"):
        KeyRing(key="short")
    assert KeyRing(key=A).ids == [hashlib.sha256(A.encode()).hexdigest()[:8]]
    assert not KeyRing().enabled and KeyRing().identify(None) is None


def test_identify_matches_bearer_tokens_as_bytes():
    ring = KeyRing(key=None)
    ring._keys = parse_keys(f"a:{A}\nb:{B}", "f")
    assert ring.identify(f"Bearer {A}") == "a" and ring.identify(f"bearer  {B} ") == "b"
    assert ring.identify(A) is None and ring.identify(f"Basic {A}") is None and ring.identify(None) is None
    assert ring.identify(f"Bearer {A[:-1]}") is None and ring.identify(f"Bearer {A}x") is None
    assert ring.identify("Bearer caf\u00e9-0123456789abcdef") is None  # latin-1 header bytes: no match, no error
    assert ring.identify("Bearer \u2603-0123456789abcdef") is None  # not even latin-1: no match, no error


def test_reload_swaps_keys_and_keeps_them_when_the_file_is_bad(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"a:{A}\nb:{B}\n")
    ring = KeyRing(str(path))
    assert ring.ids == ["a", "b"] and not ring.reload()  # unchanged
    path.write_text(f"a:{A}\n")
    assert ring.reload() and ring.identify(f"Bearer {B}") is None and ring.identify(f"Bearer {A}") == "a"
    path.write_text(f"a:{A}\nc:tooshort\n")
    with pytest.raises(InputError, match="line 2 \\(key 'c'\\)"):
        ring.reload()
    assert ring.ids == ["a"] and ring.identify(f"Bearer {A}") == "a"
    path.unlink()
    with pytest.raises(InputError, match="cannot read the API key file"):
        ring.reload()
    assert ring.ids == ["a"]
    with pytest.raises(InputError, match="no API key file to reload"):
        KeyRing(key=A).reload()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_bucket_empties_then_refills_on_a_fake_clock():
    clock = Clock()
    limiter = RateLimiter(2.0, burst=3, clock=clock)  # 2 tokens/s, bucket of 3
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)  # empty: one token in 1/2 s
    assert limiter.acquire("other") == 0.0  # buckets are per caller
    clock.now += 0.25
    assert limiter.acquire("k") == pytest.approx(0.25)  # half a token: still refused, and nothing taken
    clock.now += 0.25
    assert limiter.acquire("k") == 0.0 and limiter.acquire("k") == pytest.approx(0.5)
    clock.now += 60  # idle: refills to the burst, not beyond
    assert [limiter.acquire("k") == 0.0 for _ in range(4)] == [True, True, True, False]
    assert RateLimiter(0.5, clock=clock).burst == 1 and RateLimiter(20.0).burst == 20


def test_full_buckets_are_forgotten_when_there_are_too_many_callers():
    clock = Clock()
    limiter = RateLimiter(1.0, clock=clock, max_callers=3)
    for caller in "abc":
        limiter.acquire(caller)
    clock.now += 10  # a, b and c have refilled: dropping them changes nothing
    limiter.acquire("d")
    limiter.acquire("e")
    assert sorted(limiter._buckets) == ["d", "e"]


def test_check_access_refuses_401_then_429_with_retry_after():
    clock = Clock()
    ring = KeyRing(key=A)
    limiter = RateLimiter(0.1, clock=clock)
    assert check_access(ring, limiter, "Bearer nope-0123456789abcdef", "1.2.3.4") == (
        None, (401, "unauthorized", {"WWW-Authenticate": "Bearer"}))
    kid = ring.ids[0]
    assert check_access(ring, limiter, f"Bearer {A}", "1.2.3.4") == (kid, None)
    assert check_access(ring, limiter, f"Bearer {A}", "5.6.7.8") == (kid, (429, "rate_limited", {"Retry-After": "10"}))
    open_limiter = RateLimiter(0.1, clock=clock)  # no keys: one bucket per client address
    assert check_access(KeyRing(), open_limiter, None, "1.2.3.4") == (None, None)
    assert check_access(KeyRing(), open_limiter, None, "5.6.7.8") == (None, None)
    assert check_access(KeyRing(), open_limiter, None, "1.2.3.4")[1][0] == 429


def test_rates_and_retry_after():
    assert parse_rate("20/s") == 20 and parse_rate(" 600 / m ") == 10 and parse_rate("0.5/s") == 0.5
    for bad in ("20", "0/s", "-1/s", "5/h", "x/s", ""):
        with pytest.raises(InputError, match="expected N/s or N/m"):
            parse_rate(bad)
    assert [retry_after(x) for x in (0.01, 1.0, 1.2, 9.99)] == ["1", "1", "2", "10"]
