"""JSONL in, JSONL out for ``bertrt predict`` and ``bertrt mask``: one output object per input line, in order,
streamed in chunks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from ..errors import InputError, OutputExistsError

FIELDS = {"text", "text_pair", "question", "context", "head", "tail"}


def parse_line(line: str, where: str):
    """One JSONL line -> a predict input: a JSON string, or an object with text/text_pair or question/context."""
    return parse_record(line, where)[0]


def parse_record(line: str, where: str) -> tuple:
    """One JSONL line -> (predict input, the line's "id" field or None)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg}); each line must be a JSON object such as "
                         '{"text": "..."}') from None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise InputError(f'{where}: expected an object such as {{"text": "..."}}, got {type(value).__name__}')
    item = {k: v for k, v in value.items() if k in FIELDS}
    if not item:
        raise InputError(f'{where}: the object has none of the fields {sorted(FIELDS)}')
    return item, value.get("id")


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


def check_io(texts: list | None, input: Path | None, output: Path | None, force: bool) -> None:
    """Refuse, before any work, TEXT arguments together with --input, an existing --output without --force, and a
    missing --input file."""
    if texts and input is not None:
        raise InputError("give either TEXT arguments or --input, not both")
    if output is not None and output.exists() and not force:
        raise OutputExistsError(f"{output} exists; pass --force to overwrite it")
    if input is not None and not input.is_file():
        raise InputError(f"input file not found: {input}")


def run_io(texts: list | None, input: Path | None, output: Path | None, parse: Callable, handle: Callable,
           desc: str, unit: str):
    """Feed ``handle(items, out, progress)`` from TEXT arguments, the --input JSONL file (with a progress bar on
    stderr) or stdin, parsed by ``parse(lines, name)``; ``out`` is --output or stdout. Returns what it returns."""
    out = open(output, "w", encoding="utf-8") if output is not None else sys.stdout
    try:
        if texts:
            return handle(iter(texts), out, None)
        if input is None:
            return handle(parse(sys.stdin, "stdin"), out, None)
        from tqdm import tqdm

        with open(input, encoding="utf-8") as f:
            total = sum(1 for line in f if line.strip())
        with open(input, encoding="utf-8") as f, tqdm(total=total, unit=unit, desc=desc, file=sys.stderr) as bar:
            return handle(parse(f, str(input)), out, bar)
    finally:
        if out is not sys.stdout:
            out.close()
