"""Tokenization for inference: inputs per task, truncation flagged per input, offsets, padding and length buckets.

Only the ``tokenizers`` library and numpy. Tokenizers are configured once and never mutated afterwards, so one
``TextEncoder`` is safe to share between threads (the server tokenizes in a thread pool).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from ..errors import InputError

PAD_MULTIPLE = 8  # sequence lengths are padded to a multiple of this: fewer distinct shapes, tensor-core friendly
PREFIX_CHARS_PER_TOKEN = 8  # a long single text is first tokenized from a prefix of max_length x this many characters
# Where a prefix may be cut: whitespace to the pre-tokeniser in every normaliser setting. Not str.isspace(), which
# also accepts control characters (\x1c-\x1f) that BERT's clean_text deletes, joining the words around them.
_CUT_AT = frozenset(" \t\n\r")


@dataclass
class Encoded:
    """One tokenized input: ids and what postprocessing needs to map tokens back to characters."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]  # character offsets into ``source``
    sequence_ids: list[int | None]  # None for special tokens, else 0 (first text) or 1 (second text)
    word_ids: list[int | None]
    truncated: bool
    source: str  # the text offsets point into: the text (classify/ner/embed) or the context (qa)

    def __len__(self) -> int:
        return len(self.ids)


def parse_input(item, task: str) -> tuple[str, str | None]:
    """Turn one user input into (first text, optional second text) for ``task``, or raise ``InputError``.

    classify: "text" or {"text", optional "text_pair"} or (text, pair); ner / embed: "text" or {"text"};
    qa: {"question", "context"} or (question, context).
    """
    if task == "qa":
        if isinstance(item, dict):
            q, c = item.get("question"), item.get("context")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            q, c = item
        else:
            raise InputError('a qa input is {"question": ..., "context": ...} (or a (question, context) pair)')
        _check_str(q, "question")
        _check_str(c, "context")
        return q, c
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        text, pair = item.get("text"), item.get("text_pair")
    elif isinstance(item, (tuple, list)) and len(item) == 2 and task == "classify":
        text, pair = item
    else:
        raise InputError(f'a {task} input is a string or {{"text": ...}}' +
                         (' with an optional "text_pair"' if task == "classify" else ""))
    _check_str(text, "text")
    if pair is not None:
        if task != "classify":
            raise InputError(f'"text_pair" is only for classify artifacts, not {task}')
        _check_str(pair, "text_pair")
    return text, pair


def _check_str(value, name: str) -> None:
    if not isinstance(value, str):
        raise InputError(f'"{name}" must be a string, not {type(value).__name__}')


class TextEncoder:
    """Encode inputs for one artifact: ``[CLS] A [SEP] (B [SEP])`` truncated to ``max_length`` tokens."""

    def __init__(self, tokenizer_path: str, task: str, max_length: int):
        if max_length < 3:
            raise InputError(f"max_length {max_length} is too short for [CLS] text [SEP]")
        self.task, self.max_length = task, max_length
        base = Tokenizer.from_file(str(tokenizer_path))
        base.no_padding()
        self.pad_id = base.token_to_id("[PAD]") if base.token_to_id("[PAD]") is not None else 0
        # qa truncates only the context; when the question alone is too long, both are cut (longest_first)
        self._tok = self._configured(base, "only_second" if task == "qa" else "longest_first")
        self._fallback = self._configured(base, "longest_first")
        self._prefix_chars = max_length * PREFIX_CHARS_PER_TOKEN if _prefix_safe(base) else None

    def _configured(self, base: Tokenizer, strategy: str) -> Tokenizer:
        tok = Tokenizer.from_str(base.to_str())
        tok.no_padding()
        tok.enable_truncation(self.max_length, strategy=strategy)
        return tok

    def encode(self, items: list) -> list[Encoded]:
        pairs = [parse_input(item, self.task) for item in items]
        if not pairs:
            return []
        batch = [(a, b) if b is not None else self._prefix(a) for a, b in pairs]
        try:
            encs = self._tok.encode_batch(batch)
        except Exception:  # only_second cannot fit a question this long: encode one by one, cutting both
            encs = [self._encode_one(x) for x in batch]
        for i, (e, x, (a, b)) in enumerate(zip(encs, batch, pairs)):
            if b is None and x is not a and not e.overflowing:  # the prefix fell short of max_length: all of it
                encs[i] = self._tok.encode(a)
        return [self._wrap(e, a, b) for e, (a, b) in zip(encs, pairs)]

    def _prefix(self, text: str) -> str:
        """The text up to a whitespace near ``_prefix_chars`` characters (the text itself when short).

        Why it is exact: the BERT normaliser maps each character on its own and the BERT pre-tokeniser splits at
        whitespace, so the tokens of a prefix cut at whitespace are a prefix of the text's tokens. When that
        prefix still overflows ``max_length``, its truncated encoding (ids, offsets, truncation flag) is the full
        text's; ``encode`` re-encodes the whole text otherwise. Tokenizing a 2,000-character article to keep its
        first 128 tokens costs about a quarter as much this way.
        """
        n = self._prefix_chars
        if n is None or len(text) <= n:
            return text
        cut = n
        while cut > n // 2 and text[cut] not in _CUT_AT:
            cut -= 1
        return text[:cut] if text[cut] in _CUT_AT else text

    def _encode_one(self, x):
        try:
            return self._tok.encode(*x) if isinstance(x, tuple) else self._tok.encode(x)
        except Exception:
            return self._fallback.encode(*x) if isinstance(x, tuple) else self._fallback.encode(x)

    def _wrap(self, e, a: str, b: str | None) -> Encoded:
        return Encoded(ids=e.ids, type_ids=e.type_ids, offsets=e.offsets, sequence_ids=e.sequence_ids,
                       word_ids=e.word_ids, truncated=len(e.overflowing) > 0,
                       source=b if self.task == "qa" else a)


def _prefix_safe(tok: Tokenizer) -> bool:
    """Whether tokenizing a whitespace-cut prefix gives a prefix of the tokens: true for BERT's normaliser and
    pre-tokeniser with a WordPiece model (every bertrt and BERT tokenizer), not assumed for anything else."""
    spec = json.loads(tok.to_str())
    normalizer, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (normalizer.get("type") in (None, "BertNormalizer") and pre.get("type") == "BertPreTokenizer"
            and spec.get("model", {}).get("type") == "WordPiece")


def padded_length(n_tokens: int, max_length: int) -> int:
    """The sequence length a batch whose longest input has ``n_tokens`` tokens is padded to."""
    return min(max_length, -(-n_tokens // PAD_MULTIPLE) * PAD_MULTIPLE)


def pad_batch(encs: list[Encoded], pad_id: int, max_length: int) -> dict[str, np.ndarray]:
    """Right-pad a batch to a common length; returns the three int64 BERT inputs."""
    T = padded_length(max(len(e) for e in encs), max_length)
    ids = np.full((len(encs), T), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(encs), T), dtype=np.int64)
    types = np.zeros((len(encs), T), dtype=np.int64)
    for row, e in enumerate(encs):
        n = len(e)
        ids[row, :n] = e.ids
        mask[row, :n] = 1
        types[row, :n] = e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def plan_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int, max_length: int) -> list[list[int]]:
    """Group input indices into batches of similar length so that padding is small.

    Indices are sorted by length and batches filled greedily while (rows x padded length) stays within
    ``max_batch_tokens`` and rows within ``max_batch_size``; an input longer than the budget gets a batch alone.
    Callers restore the original order from the returned indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        T = padded_length(lengths[i], max_length)  # the longest so far, since lengths ascend
        if current and (len(current) + 1 > max_batch_size or (len(current) + 1) * T > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
