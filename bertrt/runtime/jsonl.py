"""JSONL in, JSONL out for ``bertrt predict``: one output object per input line, in order, streamed in chunks."""

from __future__ import annotations

import json
from typing import IO, Iterable, Iterator

from ..errors import InputError

FIELDS = {"text", "text_pair", "question", "context", "head", "tail"}


def parse_line(line: str, where: str):
    """One JSONL line -> a predict input: a JSON string, or an object with text/text_pair or question/context."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg}); each line must be a JSON object such as "
                         '{"text": "..."}') from None
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise InputError(f'{where}: expected an object such as {{"text": "..."}}, got {type(value).__name__}')
    item = {k: v for k, v in value.items() if k in FIELDS}
    if not item:
        raise InputError(f'{where}: the object has none of the fields {sorted(FIELDS)}')
    return item


def read_inputs(lines: Iterable[str], name: str) -> Iterator:
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield parse_line(line, f"{name} line {number}")


def chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_stream(runtime, items: Iterator, out: IO[str], chunk_size: int = 256, progress=None) -> int:
    """Predict ``items`` chunk by chunk, writing one JSON line per input; returns the count."""
    written = 0
    for chunk in chunks(items, chunk_size):
        for result in runtime.predict(chunk):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        written += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    out.flush()
    return written
