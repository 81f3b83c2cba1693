"""JSONL in, JSONL out for ``bertrt mask``: one ``{"text": <masked>, "found": [...]}`` line per input, in order,
in chunks (so an NER model sees batches). Input lines are JSON strings or objects with a "text" field; an error
names the line, never its content."""

from __future__ import annotations

import json
from collections import Counter
from typing import IO, Iterable, Iterator

from ..errors import InputError
from ..runtime.jsonl import chunks, read_inputs


def texts_of(lines: Iterable[str], name: str) -> Iterator[str]:
    for number, item in enumerate(read_inputs(lines, name), 1):
        text = item if isinstance(item, str) else item.get("text")
        if not isinstance(text, str):
            raise InputError(f'{name} input {number}: masking needs a JSON string or an object with a "text" '
                             "string")
        yield text


def mask_stream(masker, texts: Iterator[str], out: IO[str], chunk_size: int = 256, progress=None) -> Counter:
    """Mask ``texts`` chunk by chunk, writing one JSON line each; returns how many of each type were found (and
    the number of texts, under "texts")."""
    counts: Counter = Counter()
    for chunk in chunks(texts, chunk_size):
        for result in masker.mask_many(chunk):
            out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
            counts.update(f.type for f in result.found)
        counts["texts"] += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    out.flush()
    return counts
