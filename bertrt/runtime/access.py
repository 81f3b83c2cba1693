"""Who may call the server, and how often: API keys that can be reloaded, and per-caller token buckets.

Plain Python without HTTP glue, so any front end (the starlette app, a Ray Serve replica) makes the same checks:
``KeyRing.identify(authorization_header)`` -> key id or ``None``; ``RateLimiter.acquire(caller)`` -> 0 or the seconds
until the caller's next token.

A key file holds one key per line, ``key`` or ``name:key`` (split at the first colon; give a key that contains a
colon a name), with blank lines and ``#`` comments allowed. A key is at least 16 characters of visible ASCII (no
spaces): HTTP headers are latin-1, so anything else could never be typed reliably by a client. Logs and metrics name
a key by its id: its name, or the first 8 hex digits of its sha256; never the key.
"""

from __future__ import annotations

import hmac
import math
import re
import threading
import time

from ..errors import InputError
from .payload import key_id

MIN_KEY_CHARS = 16
_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_keys(text: str, source: str) -> dict[bytes, str]:
    """{key bytes: key id} from a key file's text; ``InputError`` naming the line for any bad entry."""
    keys: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = line.partition(":")
        if not colon:
            name, key = None, line
        elif not _NAME.fullmatch(name):
            raise InputError(f"{source} line {number}: the key name must be 1-64 letters, digits, '.', '_' or '-' "
                             "(name:key)")
        where = f"{source} line {number}" + (f" (key {name!r})" if name else "")
        if len(key) < MIN_KEY_CHARS:
            raise InputError(f"{where}: the key has {len(key)} characters; use at least {MIN_KEY_CHARS} "
                             "(e.g. `openssl rand -hex 24`)")
        if not _KEY.fullmatch(key):
            raise InputError(f"{where}: the key must be visible ASCII without spaces (HTTP headers cannot carry "
                             "anything else reliably)")
        secret = key.encode("ascii")
        ident = name or key_id(secret)
        if secret in keys:
            raise InputError(f"{where}: the same key appears twice")
        if ident in keys.values():
            raise InputError(f"{where}: the key id {ident!r} is used twice; give each key its own name")
        keys[secret] = ident
    if not keys:
        raise InputError(f"{source} holds no key; put one key per line (or name:key)")
    return keys


def read_key_file(path: str) -> dict[bytes, str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot read the API key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"the API key file {path} is not text (UTF-8)") from None
    return parse_keys(text, f"the API key file {path}")


class KeyRing:
    """The keys a server accepts: from ``path`` (reloadable) or one ``key``; none at all means the API is open."""

    def __init__(self, path: str | None = None, key: str | None = None):
        if path and key:
            raise InputError("give the API key either as a file or as one key, not both")
        self.path = path
        self._keys = read_key_file(path) if path else parse_keys(key, "the API key") if key else {}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys.values())

    def reload(self) -> bool:
        """Re-read the key file; whether the keys changed. On any error (``InputError``) the old keys stay."""
        if not self.path:
            raise InputError("no API key file to reload (the key was given directly)")
        keys = read_key_file(self.path)
        changed = keys != self._keys
        self._keys = keys  # one reference swap: a request sees the old set or the new one, never a mix
        return changed

    def identify(self, authorization: str | None) -> str | None:
        """The id of the key in an ``Authorization: Bearer <key>`` header value, or ``None`` when it matches no key.

        Every key is compared, in constant time for its length, so timing says neither which key nor how much of one
        matched. The header is taken as latin-1 bytes, as it arrived."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            given = token.strip().encode("latin-1")
        except UnicodeEncodeError:
            return None
        found = None
        for secret, ident in self._keys.items():
            if hmac.compare_digest(given, secret):
                found = ident
        return found


def parse_rate(text: str) -> float:
    """'N/s' or 'N/m' (N > 0, may be fractional) -> tokens per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"--rate-limit {text!r}: expected N/s or N/m with N > 0, e.g. 20/s or 600/m")
    return float(m.group(1)) / (60.0 if m.group(2) == "m" else 1.0)


class RateLimiter:
    """A token bucket per caller: ``rate`` tokens a second, holding at most ``burst`` (default: one second's worth,
    at least 1). ``clock`` is injectable so tests step time instead of sleeping.

    Buckets of callers that have refilled completely are dropped whenever more than ``max_callers`` are held (a full
    bucket and a new one are the same), so many one-off clients cannot grow the table without bound."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic, max_callers: int = 10_000):
        if not rate > 0:
            raise InputError(f"the rate limit must be > 0 per second (got {rate})")
        self.rate, self.burst = rate, float(burst) if burst is not None else max(1.0, rate)
        if self.burst < 1:
            raise InputError(f"--rate-burst must be >= 1 (got {burst})")
        self.clock, self.max_callers = clock, max_callers
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, caller: str, now: float) -> float:
        tokens, at = self._buckets.get(caller, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def acquire(self, caller: str) -> float:
        """Take a token for ``caller``: 0.0 when one was there, else the seconds until one will be (nothing taken)."""
        with self._lock:
            now = self.clock()
            tokens = self._level(caller, now)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                if len(self._buckets) > self.max_callers:
                    self._buckets = {c: b for c, b in self._buckets.items() if self._level(c, now) < self.burst}
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def check_access(keys: KeyRing, limiter: RateLimiter | None, authorization: str | None,
                 client: str | None) -> tuple[str | None, tuple[int, str, dict] | None]:
    """(the caller's key id, ``None`` or the refusal ``(status, reason, headers)``) for one request: 401 for a
    missing or unknown key, 429 + Retry-After when the caller's bucket is empty. The caller of a rate limit is the
    key when keys are on, else the client address."""
    ident = keys.identify(authorization) if keys.enabled else None
    if keys.enabled and ident is None:
        return None, (401, "unauthorized", {"WWW-Authenticate": "Bearer"})
    if limiter is not None:
        wait = limiter.acquire(ident if keys.enabled else f"address {client}")
        if wait:
            return ident, (429, "rate_limited", {"Retry-After": retry_after(wait)})
    return ident, None
