"""Evaluation and calibration data for the gates: read --eval / --calib files, encode them into padded batches.

Formats are those fine-tuning reads (``bertrt.data.tasks``): classify JSONL/CSV/TSV (text, text_pair, label),
ner CoNLL/JSONL, qa SQuAD v1.1; labels are optional (without them the task metric is not measured). A ``.txt``
file of one text per line serves embed, classify and ner. A file of another task is refused by name.

Batches keep the file's order and are padded on the right to their longest row, so every gate sees mixed lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertrt.errors import EvalDataError

from . import sample


@dataclass
class Example:
    text: str | None = None  # the text; the question for qa
    text_pair: str | None = None  # the second segment; the context for qa
    words: list[str] | None = None  # ner input
    label: int | None = None  # classify gold id
    tags: list[int] | None = None  # ner gold ids, one per word
    answer: tuple[int, int] | None = None  # qa gold character span in the context


@dataclass
class Batch:
    feeds: dict[str, np.ndarray]  # input_ids, attention_mask, token_type_ids: (B, T) int64, right-padded
    gold: np.ndarray | None = None  # classify (B,), ner (B, T) with -100 where unlabelled, qa (B, 2) with -1
    extra: dict = field(default_factory=dict)


def _kind(row) -> str:
    if not isinstance(row, dict):
        return "unknown"
    if "tokens" in row or "words" in row:
        return "ner"
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


def read_examples(path: str | None, task: str, labels: list[str], max_samples: int) -> list[Example]:
    """Examples for ``task`` from ``path`` (the fine-tuning formats of ``bertrt.data.tasks``, or a ``.txt`` of one
    text per line), or the built-in sample when ``path`` is None."""
    from bertrt.data.tasks import check_labels, read_task

    if path is None:
        return builtin_examples(task)[:max_samples]
    p = Path(path)
    if not p.is_file():
        raise EvalDataError(f"evaluation data not found: {p}")
    if p.suffix.lower() == ".txt":
        if task == "qa":
            raise EvalDataError(f"{p}: qa evaluation data needs questions and contexts (SQuAD v1.1 JSON), not text "
                                "lines")
        lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()][:max_samples]
        if not lines:
            raise EvalDataError(f"{p} holds no text")
        return [Example(words=x.split()) if task == "ner" else Example(text=x) for x in lines]
    want = "classify" if task == "embed" else task
    kind = _sniff(p)
    if kind != want:
        raise EvalDataError(f"{p} holds {kind} data but the model's task is {task}; pass evaluation data of the "
                            f"{task} task (the formats `bertrt finetune` reads)")
    rows = read_task(p, want, require_labels=False)[:max_samples]
    if task in ("classify", "ner"):
        check_labels(task, rows, labels, p)
    if want == "classify":
        index = {name: i for i, name in enumerate(labels)}
        return [Example(text=r.text, text_pair=r.text_pair,
                        label=index[r.label] if task == "classify" and r.label is not None else None) for r in rows]
    if want == "ner":
        index = {name: i for i, name in enumerate(labels)}
        return [Example(words=list(r.tokens), tags=[index[t] for t in r.tags] if r.tags else None) for r in rows]
    return [Example(text=r.question, text_pair=r.context,
                    answer=(r.answers[0][1], r.answers[0][1] + len(r.answers[0][0])) if r.answers else None)
            for r in rows]


def builtin_examples(task: str) -> list[Example]:
    """The built-in English sample shaped for ``task``: half single texts, half pairs for classify."""
    if task == "qa":
        return [Example(text=q, text_pair=c, answer=(c.index(a), c.index(a) + len(a))) for q, c, a in sample.QA]
    if task == "ner":
        return [Example(words=t.split()) for t in sample.TEXTS]
    if task == "classify":
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


def _tokenizer_for(tokenizer, task: str, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="only_second" if task == "qa" else "longest_first")
    return tok


def encode(examples: list[Example], tokenizer, task: str, max_length: int, batch_size: int,
           pad_id: int = 0) -> list[Batch]:
    """Tokenize and pad (right) in batches of ``batch_size``, keeping order; gold labels aligned to tokens."""
    tok = _tokenizer_for(tokenizer, task, max_length)
    batches = []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        if task == "ner":
            encs = tok.encode_batch([e.words for e in chunk], is_pretokenized=True)
        else:
            encs = tok.encode_batch([(e.text, e.text_pair) if e.text_pair else e.text for e in chunk])
        T = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), T), pad_id, dtype=np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, 1, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        batches.append(Batch(feeds, _gold(chunk, encs, task, T)))
    return batches


def _gold(chunk: list[Example], encs, task: str, T: int) -> np.ndarray | None:
    if task == "classify":
        if any(e.label is None for e in chunk):
            return None
        return np.array([e.label for e in chunk], dtype=np.int64)
    if task == "ner":
        if any(e.tags is None for e in chunk):
            return None
        gold = np.full((len(chunk), T), -100, dtype=np.int64)
        for i, (ex, enc) in enumerate(zip(chunk, encs)):
            seen = set()
            for t, w in enumerate(enc.word_ids):
                if w is not None and w not in seen:  # the first piece of each word carries its tag
                    seen.add(w)
                    gold[i, t] = ex.tags[w]
        return gold
    if task == "qa":
        if any(e.answer is None for e in chunk):
            return None
        gold = np.full((len(chunk), 2), -1, dtype=np.int64)
        for i, (ex, enc) in enumerate(zip(chunk, encs)):
            a, b = ex.answer
            toks = [t for t, (sid, (o0, o1)) in enumerate(zip(enc.sequence_ids, enc.offsets))
                    if sid == 1 and o1 > a and o0 < b]
            if toks:  # an answer truncated away stays -1 and is not scored
                gold[i] = toks[0], toks[-1]
        return gold
    return None
