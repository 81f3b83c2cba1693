"""Names, organisations and places found by a bertrt NER artifact, as ``Finding``s of PERSON, ORG and LOCATION.

The artifact runs through ``bertrt.Runtime`` (torch-free). Its entity types are mapped by name: PER/PERSON,
ORG/ORGANIZATION and LOC/LOCATION/GPE; other types (MISC, ...) are not personal data and are ignored.
"""

from __future__ import annotations

import os

from ..errors import MaskError
from .findings import Finding

TYPE_NAMES = {"PER": "PERSON", "PERSON": "PERSON", "ORG": "ORG", "ORGANIZATION": "ORG", "ORGANISATION": "ORG",
              "LOC": "LOCATION", "LOCATION": "LOCATION", "GPE": "LOCATION"}


def load_ner(artifact: str | os.PathLike, **runtime_options):
    """A ``Runtime`` for an NER artifact (``runtime_options`` go to ``Runtime``: device, threads, trusted_keys)."""
    from ..runtime import Runtime

    rt = Runtime(artifact, **runtime_options)
    if rt.task != "ner":
        raise MaskError(f"{artifact} is a {rt.task} artifact; --ner needs one exported from an NER model")
    return rt


def ner_findings(runtime, texts: list[str]) -> list[list[Finding]]:
    """Entities of each text as findings, in one batched ``predict`` call."""
    if not texts:
        return []
    results = runtime.predict(list(texts))
    out = []
    for r in results:
        found = []
        for e in r["entities"]:
            kind = TYPE_NAMES.get(e["type"].upper())
            if kind is not None and e["end"] > e["start"]:
                found.append(Finding(int(e["start"]), int(e["end"]), kind))
        out.append(found)
    return out
