"""Evaluation and calibration data for the gates: read --eval / --calib files, encode them into padded batches.

Formats are those fine-tuning reads (``bertrt.data.tasks``): classify JSONL/CSV/TSV (text, text_pair, label),
ner CoNLL/JSONL, qa SQuAD v1.1; labels are optional (without them the task metric is not measured). A ``.txt``
file of one text per line serves embed, classify and ner. A file of another task is refused by name.

Inputs are encoded, windowed and decoded by ``bertrt.tasks`` exactly as the runtime does it; batches keep the
file's order and are padded on the right to their longest row, so every gate sees mixed lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertrt.errors import EvalDataError
from bertrt.tasks import LABELLED_TASKS, SEQUENCE_TASKS
from bertrt.tasks.encode import Encoded, TextEncoder, join_words, word_spans
from bertrt.tasks.predict import in_order

from . import sample


@dataclass
class Example:
    text: str | None = None  # the text; the question for qa
    text_pair: str | None = None  # the second segment; the context for qa
    words: list[str] | None = None  # ner input
    label: str | list[str] | None = None  # classify gold label; multilabel the labels that apply
    tags: list[str] | None = None  # ner gold tags, one per word
    answers: list[str] | None = None  # qa gold answers
    spans: tuple | None = None  # relation: (head, tail) character spans of the text

    def pair(self) -> tuple[str, str | None]:
        """What the runtime is given: (text, pair), (words joined by spaces, None) or (question, context)."""
        if self.spans is not None:
            return self.text, self.spans
        return (join_words(self.words)[0], None) if self.words is not None else (self.text, self.text_pair)

    def gold(self):
        if self.words is not None:
            return join_words(self.words, self.tags)[1]
        return self.label if self.answers is None else self.answers


@dataclass
class EvalSet:
    """The encoded inputs every batch of one gate run points into, and their gold answers (None: unlabelled)."""

    task: str
    labels: list[str]
    encs: list[Encoded]
    gold: list | None
    options: dict | None = None  # decoding settings (bertrt.tasks.predict.decode_options)


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: (B, T) int64, right-padded
    rows: list[tuple[int, int]] = field(default_factory=list)  # (input, window) of each row, in ``data.encs``
    data: EvalSet | None = None


def _kind(row) -> str:
    if not isinstance(row, dict):
        return "unknown"
    if "tokens" in row or "words" in row:
        return "ner"
    if "head" in row and "tail" in row:
        return "relation"
    if "question" in row and "context" in row:
        return "qa"
    if "data" in row:
        return "qa"  # SQuAD
    if "text" in row:
        return "classify"
    return "unknown"


def _sniff(path: Path) -> str:
    """Which task a data file holds, from its first example (for a clear wrong-task message)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "classify"
    try:
        with open(path, encoding="utf-8") as f:
            if suffix == ".json":
                return _kind(json.load(f))
            for line in f:
                if line.strip():
                    try:
                        return _kind(json.loads(line))
                    except json.JSONDecodeError:
                        return "ner"  # not JSON lines: CoNLL columns
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalDataError(f"cannot read {path}: {e}") from None
    return "unknown"


def read_examples(path: str | None, task: str, labels: list[str], max_samples: int,
                  prompt: str | None = None) -> list[Example]:
    """Examples for ``task`` from ``path`` (the fine-tuning formats of ``bertrt.data.tasks``, or a ``.txt`` of one
    text per line), or the built-in sample when ``path`` is None (shaped for a cloze ``prompt``)."""
    from bertrt.data.tasks import check_labels, read_task

    if path is None:
        return builtin_examples(task, prompt)[:max_samples]
    p = Path(path)
    if not p.is_file():
        raise EvalDataError(f"evaluation data not found: {p}")
    if p.suffix.lower() == ".txt":
        if task in ("qa", "relation"):
            raise EvalDataError(f"{p}: {task} evaluation data needs its structure (SQuAD v1.1 JSON; JSONL with "
                                "text, head, tail), not text lines")
        lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()][:max_samples]
        if not lines:
            raise EvalDataError(f"{p} holds no text")
        return [Example(words=x.split()) if task == "ner" else Example(text=x) for x in lines]
    want = "classify" if task == "embed" else task
    kind = _sniff(p)
    if kind != want and not (want == "multilabel" and kind == "classify"):
        raise EvalDataError(f"{p} holds {kind} data but the model's task is {task}; pass evaluation data of the "
                            f"{task} task (the formats `bertrt finetune` reads)")
    rows = read_task(p, want, require_labels=False)[:max_samples]
    if task in LABELLED_TASKS:
        check_labels(task, rows, labels, p)
    if want in SEQUENCE_TASKS:
        return [Example(text=r.text, text_pair=r.text_pair,
                        label={"classify": r.label, "multilabel": r.labels}.get(task)) for r in rows]
    if want == "ner":
        return [Example(words=list(r.tokens), tags=r.tags) for r in rows]
    if want == "relation":
        return [Example(text=r.text, spans=(r.head, r.tail), label=r.label) for r in rows]
    return [Example(text=r.question, text_pair=r.context, answers=[a[0] for a in r.answers] or None) for r in rows]


def builtin_examples(task: str, prompt: str | None = None) -> list[Example]:
    """The built-in English sample shaped for ``task``: half single texts, half pairs for classify; for a cloze
    ``prompt``, the single texts or the pairs, whichever it places."""
    if prompt is not None:
        pair = "{text_pair}" in prompt
        return [e for e in builtin_examples(task) if (e.text_pair is not None) == pair]
    if task == "qa":
        return [Example(text=q, text_pair=c, answers=[a]) for q, c, a in sample.QA]
    if task == "ner":
        return [Example(words=t.split()) for t in sample.TEXTS]
    if task == "relation":  # the first and the last word of each text as head and tail
        out = []
        for t in sample.TEXTS:
            spans = word_spans(t)
            if len(spans) > 1:
                out.append(Example(text=t, spans=(spans[0], spans[-1])))
        return out
    if task in SEQUENCE_TASKS:
        pairs = sample.sentence_pairs()
        singles = sample.TEXTS[: len(sample.TEXTS) // 2]
        mixed = []
        for i in range(max(len(pairs), len(singles))):  # interleaved, so most batches hold both kinds
            if i < len(singles):
                mixed.append(Example(text=singles[i]))
            if i < len(pairs):
                mixed.append(Example(text=pairs[i][0], text_pair=pairs[i][1]))
        return mixed
    return [Example(text=t) for t in sample.TEXTS]


def encode(examples: list[Example], tokenizer, task: str, max_length: int, batch_size: int, pad_id: int = 0,
           labels: list[str] | None = None, stride: int | None = None, options: dict | None = None,
           prompt: str | None = None) -> list[Batch]:
    """Encode as the runtime does (qa contexts and ner texts windowed; a prompt artifact's texts filled into its
    cloze ``prompt``) and cut the rows, in order, into batches of ``batch_size`` padded on the right to their
    longest row; every batch points at the shared ``EvalSet``."""
    encs = TextEncoder(tokenizer, task, max_length, stride, prompt=prompt).encode([e.pair() for e in examples])
    gold = [e.gold() for e in examples]
    data = EvalSet(task, list(labels or []), encs, None if any(g is None for g in gold) else gold, options)
    return [Batch(feeds, rows, data) for rows, feeds in in_order(encs, pad_id, batch_size)]
