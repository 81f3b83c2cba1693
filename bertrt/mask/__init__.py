"""Personal-data detection and masking (数据脱敏). Torch-free; the server calls the same functions.

    from bertrt.mask import Masker, find, mask
    mask("call 138 1234 5678").text                     # 'call <PHONE>'
    mask("call 138 1234 5678", style="partial").text    # 'call 138 **** 5678'
    Masker(style="hash", hash_key=key).mask(text)        # '<PHONE:5c1e...>': same number, same token
    find("mail a@b.org")                                  # [Finding(start=5, end=12, type='EMAIL')]

Pattern types (validated, see ``patterns.py`` and ``phone.py``): EMAIL, PHONE, CARD, IBAN, IP, CN_ID,
URL_CREDENTIALS. With an NER artifact (``ner=load_ner(path)``): PERSON, ORG, LOCATION. Offsets are Python string
offsets (code points) into the original text. Overlaps are resolved by ``findings.resolve_overlaps``.
"""

from __future__ import annotations

import re

from ..errors import MaskError
from .findings import ALL_TYPES, NER_TYPES, PATTERN_TYPES, Finding, MaskResult, resolve_overlaps
from .ner import load_ner, ner_findings
from .patterns import detect_card, detect_cn_id, detect_email, detect_iban, detect_ip, detect_url_credentials
from .phone import DEFAULT_REGIONS, detect_phone
from .render import HASH_KEY_ENV, STYLES, load_hash_key, partial, token

__all__ = ["Masker", "find", "mask", "Finding", "MaskResult", "load_ner", "load_hash_key", "ALL_TYPES",
           "PATTERN_TYPES", "NER_TYPES", "STYLES", "HASH_KEY_ENV"]

_DETECTORS = {"EMAIL": detect_email, "CARD": detect_card, "IBAN": detect_iban, "IP": detect_ip,
              "CN_ID": detect_cn_id, "URL_CREDENTIALS": detect_url_credentials}
_DIGITS = re.compile(r"\d{2}")
_HINTS = {  # a cheap test that a text can hold the type at all: most log lines skip most regular expressions
    "EMAIL": lambda t: "@" in t, "URL_CREDENTIALS": lambda t: "@" in t and "://" in t,
    "IP": lambda t: "." in t or ":" in t, "IBAN": lambda t: _DIGITS.search(t) is not None,
    "CARD": lambda t: _DIGITS.search(t) is not None, "CN_ID": lambda t: _DIGITS.search(t) is not None,
    "PHONE": lambda t: _DIGITS.search(t) is not None,
}


class Masker:
    """Find and mask personal data with one configuration (build it once, call it for every text).

    ``types``: what to look for (default: every pattern type, plus the NER types when ``ner`` is given).
    ``style``: tag, partial or hash (hash needs ``hash_key``, at least 16 bytes; see ``load_hash_key``).
    ``ner``: a ``Runtime`` of an NER artifact (``load_ner``). ``regions``: where numbers written without a country
    code are read as phone numbers (ISO 3166 codes, tried in order).
    """

    def __init__(self, types=None, style: str = "tag", hash_key: bytes | None = None, ner=None,
                 regions=DEFAULT_REGIONS):
        if style not in STYLES:
            raise MaskError(f"unknown masking style {style!r}; choose one of {', '.join(STYLES)}")
        if style == "hash" and not hash_key:
            raise MaskError("the hash style needs a secret key (hash_key, --hash-key-file or "
                            f"${HASH_KEY_ENV}); without one, tokens could be recomputed by anyone")
        types = tuple(types) if types else PATTERN_TYPES + (NER_TYPES if ner is not None else ())
        unknown = [t for t in types if t not in ALL_TYPES]
        if unknown:
            raise MaskError(f"unknown personal-data types {unknown}; known: {', '.join(ALL_TYPES)}")
        wants_ner = [t for t in types if t in NER_TYPES]
        if wants_ner and ner is None:
            raise MaskError(f"{', '.join(wants_ner)} are found by an NER model: give one with --ner ARTIFACT")
        self.types, self.style, self.ner = types, style, ner
        self.hash_key, self.regions = hash_key, tuple(regions)

    def _patterns(self, text: str) -> list[Finding]:
        """Pattern findings, overlaps resolved, in text order."""
        found = []
        for kind in self.types:
            if kind in _DETECTORS and _HINTS[kind](text):
                found += _DETECTORS[kind](text)
        found = resolve_overlaps(found)
        if "PHONE" in self.types and _HINTS["PHONE"](text):  # last: it skips what the others already hold,
            found = sorted(found + detect_phone(text, self.regions, taken=found))  # so nothing overlaps
        return found

    def find_many(self, texts: list[str]) -> list[list[Finding]]:
        """Findings of each text, overlaps resolved, in text order (NER runs once over all texts)."""
        texts = list(texts)
        if self.ner is None:
            return [self._patterns(t) for t in texts]
        entities = ner_findings(self.ner, texts)
        return [resolve_overlaps(self._patterns(t) + [e for e in ents if e.type in self.types])
                for t, ents in zip(texts, entities)]

    def find(self, text: str) -> list[Finding]:
        return self.find_many([text])[0]

    def replacement(self, kind: str, value: str) -> str:
        if self.style == "tag":
            return f"<{kind}>"
        if self.style == "partial":
            return partial(kind, value, self.regions)
        return token(kind, value, self.hash_key, self.regions)

    def apply(self, text: str, found: list[Finding]) -> MaskResult:
        """Replace ``found`` (disjoint, in text order) in ``text``."""
        parts, pos = [], 0
        for f in found:
            parts += [text[pos:f.start], self.replacement(f.type, text[f.start:f.end])]
            pos = f.end
        parts.append(text[pos:])
        return MaskResult("".join(parts), found)

    def mask_many(self, texts: list[str]) -> list[MaskResult]:
        texts = list(texts)
        return [self.apply(t, f) for t, f in zip(texts, self.find_many(texts))]

    def mask(self, text: str) -> MaskResult:
        return self.mask_many([text])[0]


def find(text: str, types=None, regions=DEFAULT_REGIONS) -> list[Finding]:
    """Personal data found by the pattern detectors in ``text`` (no NER), overlaps resolved, in text order."""
    return Masker(types, regions=regions).find(text)


def mask(text: str, style: str = "tag", types=None, hash_key: bytes | None = None, ner=None,
         regions=DEFAULT_REGIONS) -> MaskResult:
    """``text`` with its personal data replaced (see ``Masker``)."""
    return Masker(types, style, hash_key, ner, regions).mask(text)
