"""Phone numbers, validated by the ``phonenumbers`` package (Google's libphonenumber metadata).

A regular expression only finds candidates: runs of digits with spaces, dashes, parentheses and a leading ``+``.
Each candidate is split into digit groups and tried as a whole, then as shorter runs of whole groups (longest first),
so "in 2 13812345678" still finds the number. A run is a phone number when ``phonenumbers`` says it is valid and it
carries some evidence of being written as one, because libphonenumber accepts many bare digit strings (a
timestamp's 2026120123 is a valid Guangzhou number): an international prefix (+86, 0086), the region's trunk prefix
(0755-...), a mobile number (138...), or digit groups exactly as the region writes its numbers ((415) 555-2671).
"""

from __future__ import annotations

import bisect
import functools
import re

from .findings import Finding
from .patterns import named_as_reference

DEFAULT_REGIONS = ("CN", "US")
MIN_DIGITS, MAX_DIGITS = 7, 17  # the shortest local numbers; E.164's 15 digits plus an international prefix
# not inside a word, a decimal, a date, a time (12:30) or an amount (¥, $, ...); "tel:138..." is fine
CANDIDATE_RE = re.compile(r"(?<![0-9A-Za-z_+\-/.$¥￥€£])(?<!\d:)"
                          r"(?!(?:19|20)\d\d[-/](?:0?[1-9]|1[0-2])[-/](?:0?[1-9]|[12]\d|3[01])(?!\d))"  # a date
                          r"(?:\+|\()?\d[\d \-()]{5,28}\d\)?(?![0-9A-Za-z_]|[.:/]\d)")
TOKEN_RE = re.compile(r"\+?\(?(\d+)\)?")
DATE_RE = re.compile(r"^\(?(?:19|20)\d\d[-/ ](?:0?[1-9]|1[0-2])[-/ ](?:0?[1-9]|[12]\d|3[01])(?!\d)")
GROUPS_RE = re.compile(r"\d+")


def _pn():
    try:
        import phonenumbers
    except ImportError:
        from ..errors import MaskError

        raise MaskError("phone detection needs the phonenumbers package: pip install 'bertrt[mask]'") from None
    return phonenumbers


def _groups(s: str) -> list[int]:
    return [len(g) for g in GROUPS_RE.findall(s)]


@functools.lru_cache(maxsize=65536)
def parse_phone(candidate: str, regions: tuple[str, ...]) -> tuple[str, int] | None:
    """(E.164 form, length of the national significant number) when ``candidate`` is a phone number written as
    one, else None. Cached: logs repeat the same numbers."""
    pn = _pn()
    digits = "".join(GROUPS_RE.findall(candidate))
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or DATE_RE.match(candidate):
        return None
    international = candidate.startswith("+") or (candidate.startswith("00") and len(digits) > 10)
    for region in regions[:1] if candidate.startswith("+") else regions:  # "+CC": the region does not matter
        try:
            number = pn.parse(candidate, None if candidate.startswith("+") else region)
        except pn.NumberParseException:
            continue
        if not pn.is_valid_number(number):
            continue
        nsn = pn.national_significant_number(number)
        if not international:
            # a trunk prefix is evidence when it is a 0 (010-..., 01062345678) or set apart (1 212-555-0123);
            # a bare run of digits that merely starts with 1 is not
            prefix = pn.PhoneMetadata.metadata_for_region(region).national_prefix or ""
            trunk = bool(prefix) and len(digits) > len(nsn) and digits.startswith(prefix) \
                and (prefix.startswith("0") or len(_groups(candidate)) > 1)
            mobile = pn.number_type(number) == pn.PhoneNumberType.MOBILE
            as_written = _groups(candidate) == _groups(pn.format_number(number, pn.PhoneNumberFormat.NATIONAL))
            if not (trunk or mobile or as_written):
                continue
        return pn.format_number(number, pn.PhoneNumberFormat.E164), len(nsn)
    return None


def detect_phone(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS, taken: list[Finding] = ()) -> list[Finding]:
    """Phone numbers in ``text``. ``taken``: disjoint findings of higher priority, in text order; runs that
    overlap one are not parsed (they would lose to it anyway), which saves most of the time on card numbers."""
    found = []
    starts = [f.start for f in taken]
    for m in CANDIDATE_RE.finditer(text):
        if named_as_reference(text, m.start()):
            continue
        cand = m.group()
        tokens = [(t.start(), t.end(), t.end(1) - t.start(1)) for t in TOKEN_RE.finditer(cand)]
        i = 0
        while i < len(tokens):  # leftmost, then longest run of whole groups that is a phone number
            digits = sum(t[2] for t in tokens[i:])
            for j in range(len(tokens), i, -1):
                if j < len(tokens):
                    digits -= tokens[j][2]
                if not MIN_DIGITS <= digits <= MAX_DIGITS:
                    continue  # decided without parsing: most runs in logs are dates and short numbers
                a, b = tokens[i][0], tokens[j - 1][1]
                s = cand[a:b].lstrip(")")
                a += b - a - len(s)
                if s.endswith(")") and "(" not in s:
                    s, b = s[:-1], b - 1
                if _overlaps(taken, starts, m.start() + a, m.start() + b):
                    continue
                if parse_phone(s, regions):
                    found.append(Finding(m.start() + a, m.start() + b, "PHONE"))
                    i = j
                    break
            else:
                i += 1
    return found


def _overlaps(taken: list[Finding], starts: list[int], start: int, end: int) -> bool:
    i = bisect.bisect_left(starts, end)  # taken[i - 1] is the last one starting before ``end``
    return i > 0 and taken[i - 1].end > start
