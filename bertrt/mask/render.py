"""How a finding is replaced: ``tag`` (``<EMAIL>``), ``partial`` (a few characters kept, the usual form in Chinese
services: ``138****5678``) or ``hash`` (``<EMAIL:1f0e...>``, a keyed HMAC-SHA256 of the normalised value, so one
value maps to one token across records and services sharing the key, and cannot be reversed without the key)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

from ..errors import MaskError
from .phone import DEFAULT_REGIONS, parse_phone

STYLES = ("tag", "partial", "hash")
HASH_KEY_ENV = "BERTRT_MASK_KEY"
MIN_KEY_BYTES = 16
TOKEN_HEX = 16  # 64 bits of the HMAC: collisions stay negligible for billions of distinct values


def load_hash_key(path: str | os.PathLike | None = None, env: str = HASH_KEY_ENV) -> bytes:
    """The HMAC key of the ``hash`` style: the bytes of ``path`` (a trailing newline dropped) or else of the
    environment variable ``env``; at least 16 bytes. ``MaskError`` when there is none."""
    if path is not None:
        try:
            key = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise MaskError(f"cannot read the hash key file {path}: {e.strerror or e}") from None
        where = str(path)
    else:
        key, where = os.environ.get(env, "").encode(), f"${env}"
        if not key:
            raise MaskError(f"the hash style needs a secret key: pass --hash-key-file or set ${env}")
    if len(key) < MIN_KEY_BYTES:
        raise MaskError(f"the hash key in {where} has {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                        "(e.g. `head -c 32 /dev/urandom | base64`)")
    return key


def normalise(kind: str, value: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    """The form two writings of one value share: E.164 phones, lower-case emails, compact card/IBAN/ID numbers,
    canonical IP addresses."""
    if kind == "PHONE":
        parsed = parse_phone(value, regions)
        return parsed[0] if parsed else value
    if kind == "EMAIL":
        return value.lower()
    if kind in ("CARD", "IBAN", "CN_ID"):
        return value.replace(" ", "").replace("-", "").upper()
    if kind == "IP":
        return ipaddress.ip_address(value).compressed
    return value


def _star(s: str, head: int, tail: int, counted=str.isdigit) -> str:
    """Replace every ``counted`` character of ``s`` but the first ``head`` and the last ``tail`` of them by '*';
    the others (separators) stay."""
    n = sum(map(counted, s))
    out, seen = [], 0
    for c in s:
        if counted(c):
            out.append(c if seen < head or seen >= n - tail else "*")
            seen += 1
        else:
            out.append(c)
    return "".join(out)


def partial(kind: str, value: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    """``value`` with most of it hidden; what is kept is documented per type in the README's Security section."""
    if kind == "PHONE":
        parsed = parse_phone(value, regions)
        digits = sum(map(str.isdigit, value))
        nsn = parsed[1] if parsed else digits
        head = min(3, max(0, nsn - 7))
        return _star(value, max(0, digits - nsn) + head, min(4, nsn - head - 3))
    if kind == "EMAIL":
        local, _, domain = value.rpartition("@")
        return f"{local[0]}***@{domain}"
    if kind == "CARD":
        return _star(value, 0, 4)
    if kind == "IBAN":
        return _star(value, 2, 4, str.isalnum)
    if kind == "CN_ID":
        return _star(value, 3, 4, str.isalnum)
    if kind == "IP":
        ip = ipaddress.ip_address(value)
        if ip.version == 4:
            return ".".join(value.split(".")[:2]) + ".*.*"
        groups = ip.exploded.split(":")
        return f"{int(groups[0], 16):x}:{int(groups[1], 16):x}:*:*:*:*:*:*"
    if kind == "URL_CREDENTIALS":
        return "***:***" if ":" in value else "***"
    # names, organisations, places: the first character, then one '*' per other non-space character
    return value[0] + "".join(c if c.isspace() else "*" for c in value[1:])


def token(kind: str, value: str, key: bytes, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    digest = hmac.new(key, f"{kind}\0{normalise(kind, value, regions)}".encode(), hashlib.sha256).hexdigest()
    return f"<{kind}:{digest[:TOKEN_HEX]}>"
