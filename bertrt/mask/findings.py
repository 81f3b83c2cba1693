"""What a detector reports (``Finding``), what masking returns (``MaskResult``), and how overlapping findings are
resolved. A finding holds a type and character offsets only, never the value, so that logging one leaks nothing."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Higher wins when two findings overlap: the most specific, checksum-validated kinds first, model guesses last.
PRIORITY = {"URL_CREDENTIALS": 90, "EMAIL": 80, "CN_ID": 70, "IBAN": 70, "CARD": 60, "IP": 50, "PHONE": 40,
            "PERSON": 10, "ORG": 10, "LOCATION": 10}
PATTERN_TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "CN_ID", "URL_CREDENTIALS")
NER_TYPES = ("PERSON", "ORG", "LOCATION")
ALL_TYPES = PATTERN_TYPES + NER_TYPES


@dataclass(frozen=True, order=True)
class Finding:
    """Personal data of kind ``type`` at ``text[start:end]`` (Python string offsets: code points)."""

    start: int
    end: int
    type: str

    def to_dict(self) -> dict:
        return {"type": self.type, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class MaskResult:
    """The masked text and the findings, with offsets into the *original* text, in text order."""

    text: str
    found: list[Finding]

    def to_dict(self) -> dict:
        return {"text": self.text, "found": [f.to_dict() for f in self.found]}


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep a set of non-overlapping findings, deterministically: higher priority first, then the longer span,
    then the earlier one; a finding that overlaps one already kept is dropped. Returned in text order."""
    ranked = sorted(set(findings), key=lambda f: (-PRIORITY.get(f.type, 0), f.start - f.end, f.start, f.type))
    starts: list[int] = []  # the kept spans, disjoint, sorted by start (so their ends are sorted too)
    kept: list[Finding] = []
    for f in ranked:
        i = bisect.bisect_left(starts, f.start)
        if (i < len(kept) and kept[i].start < f.end) or (i > 0 and kept[i - 1].end > f.start):
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept
