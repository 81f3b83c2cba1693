"""Encoded inputs -> answers through any forward function: windows batched by length, padded, run, decoded.

The runtime passes its ONNX Runtime session, checkpoint evaluation and the bench reference a PyTorch model, the
export gates their fixed batches: the rows, the padding and the decoding are the same for all of them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .decode import decode
from .encode import Encoded, pad_rows, padded_length, plan_batches

PER_TOKEN = ("ner", "qa")  # tasks whose outputs have one value per token (cut to each row's length)


def rows_of(encs: list[Encoded]) -> list[tuple[int, int]]:
    """(input index, window index) of every model row, input by input."""
    return [(i, w) for i, e in enumerate(encs) for w in range(len(e.windows))]


def bucketed(encs: list[Encoded], pad_id: int, max_length: int, max_batch_tokens: int,
             max_batch_size: int) -> list[tuple[list[tuple[int, int]], dict]]:
    """Batches of rows of similar length, each with its padded feeds (length a multiple of ``PAD_MULTIPLE``)."""
    rows = rows_of(encs)
    lengths = [len(encs[i].windows[w]) for i, w in rows]
    out = []
    for batch in plan_batches(lengths, max_batch_tokens, max_batch_size, max_length):
        picked = [rows[k] for k in batch]
        T = padded_length(max(lengths[k] for k in batch), max_length)
        out.append((picked, feeds_of(encs, picked, pad_id, T)))
    return out


def in_order(encs: list[Encoded], pad_id: int, batch_size: int) -> list[tuple[list[tuple[int, int]], dict]]:
    """Batches of ``batch_size`` rows in input order, each padded to its longest row (the export gates: every
    batch mixes lengths, so padding is exercised)."""
    rows = rows_of(encs)
    out = []
    for s in range(0, len(rows), batch_size):
        picked = rows[s:s + batch_size]
        out.append((picked, feeds_of(encs, picked, pad_id)))
    return out


def feeds_of(encs: list[Encoded], rows: list[tuple[int, int]], pad_id: int, length: int | None = None) -> dict:
    windows = [encs[i].windows[w] for i, w in rows]
    return pad_rows([w.ids for w in windows], [w.type_ids for w in windows], pad_id, length)


def decode_batches(task: str, encs: list[Encoded], batches: list[tuple[list[tuple[int, int]], dict]],
                   outputs: list[dict], labels: list[str], options: dict | None = None) -> list[dict | None]:
    """Answers for ``encs`` from each batch's outputs (dicts of arrays with one row per batch row); None for an
    input some of whose windows are in none of ``batches``."""
    return [None if rows is None else decode(task, rows, e, labels, options)
            for rows, e in zip(outputs_by_input(task, encs, batches, outputs), encs)]


def outputs_by_input(task: str, encs: list[Encoded], batches: list[tuple[list[tuple[int, int]], dict]],
                     outputs: list[dict]) -> list[list[dict] | None]:
    """Per input, its windows' outputs (per-token ones cut to the window's length); None where a window is
    missing from ``batches``."""
    per_input: list[list] = [[None] * len(e.windows) for e in encs]
    for (rows, _), out in zip(batches, outputs):
        for k, (i, w) in enumerate(rows):
            n = len(encs[i].windows[w])
            per_input[i][w] = {name: (np.asarray(v[k])[:n] if task in PER_TOKEN else np.asarray(v[k]))
                               for name, v in out.items()}
    return [None if any(r is None for r in rows) else rows for rows in per_input]


def predict(task: str, encs: list[Encoded], forward: Callable[[dict], dict], labels: list[str], pad_id: int,
            max_length: int, max_batch_tokens: int = 16384, max_batch_size: int = 64,
            options: dict | None = None) -> list[dict]:
    """Answers for ``encs``, in order; ``forward(feeds) -> {output name: (B, ...) array}``; ``options`` as
    ``decode`` takes them (``decode_options`` of a manifest)."""
    batches = bucketed(encs, pad_id, max_length, max_batch_tokens, max_batch_size)
    return decode_batches(task, encs, batches, [forward(f) for _, f in batches], labels, options)


def decode_options(settings: dict) -> dict:
    """The decoding settings of an artifact manifest or a fine-tuning record (finetune.json)."""
    return {"normalize": bool(settings.get("normalize")), "thresholds": settings.get("thresholds")}
