"""Data augmentation for fine-tuning: EDA-style edits and masked-LM substitution, labels kept aligned.

``augment(task, examples, method, per_example=K, seed=S, filler=...)`` returns K new variants of every example
(in input order), drawn from one seeded generator: the same examples, method and seed give the same variants.

A text becomes a list of *units*: its words (``bertrt.tasks.encode.word_spans``, the rule NER and serving use)
and, kept whole, the spans a label points into: an NER entity's tokens (``bertrt.tasks.decode.entity_spans``), a
QA answer (with the words it touches; overlapping answers form one unit), a relation's head and tail. Edits act on
units, so a protected span is moved only as a whole and never edited, deleted or split:

- ``eda`` (after Wei & Zou 2019, without a thesaurus, so that it runs offline): each variant applies one edit,
  chosen uniformly: *swap* (n random pairs of units trade places; entities and answers move with their words),
  *delete* (n free words removed) or *insert* (n copies of free words of the same text put at random places;
  EDA's synonym replacement and synonym insertion need WordNet, so the copies come from the text itself). n is
  ``rate`` (default 0.1) of the free words, at least 1.
- ``mlm``: ``rate`` (default 0.15, at least 1) of the free words are masked, each by one ``[MASK]``, and a
  checkpoint's own masked-LM head fills them (``filler``, see ``bertrt.train.augment``): each gets one of the
  head's top predictions (drawn with the seed) that is a whole word and differs from the word it replaces.

Per task: ``classify``/``multilabel`` edit text and text_pair separately, labels unchanged; ``relation`` keeps
head and tail whole and recomputes their offsets; ``ner`` edits tokens, an inserted word tagged ``O``, and a moved
entity that would run on into an entity of its type is started with ``B-``; ``qa`` edits the context (never the
question) and recomputes every ``answer_start``, so each answer still occurs at its offset. Units are joined by
the whitespace that followed them in the original text (a single space where none did and two words would fuse),
so an unedited text comes back unchanged.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import BertrtError
from ..tasks.decode import entity_spans
from ..tasks.encode import _CJK, word_spans
from .tasks import NerExample, RelationExample

METHODS = ("eda", "mlm")
DEFAULT_RATE = {"eda": 0.1, "mlm": 0.15}
EDA_EDITS = ("swap", "delete", "insert")
_CJK_CHAR = re.compile(f"[{_CJK}]")

# filler(texts, masked) -> candidates: for each text (a list of unit strings) and each index in its ``masked``
# list, the replacement words best first (empty when the model could not see that position)
Filler = Callable[[list[list[str]], list[list[int]]], list[list[list[str]]]]


@dataclass
class Unit:
    """A word, or a protected span kept whole. ``words``: its NER tokens, or its verbatim text as one string."""

    words: list[str]
    fixed: bool = False
    tags: list[str] | None = None  # NER: one per token
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # protected (key, start, end) inside the text
    sep: str = " "  # the whitespace that followed it in the original text

    @property
    def text(self) -> str:
        return " ".join(self.words)


# ------------------------------------------------------------------------------------------------- text <-> units
def text_units(text: str, protected: dict[str, tuple[int, int]]) -> list[Unit]:
    """``text`` as units; each protected [start, end) span, widened to the words it touches, is one fixed unit
    (spans that overlap share one)."""
    words = word_spans(text)
    groups = []  # [lo, hi, keys]
    for key, (a, b) in protected.items():
        lo, hi = a, b
        for s, e in words:
            if s < b and a < e:
                lo, hi = min(lo, s), max(hi, e)
        groups.append([lo, hi, [key]])
    merged = []
    for g in sorted(groups):
        if merged and g[0] < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], g[1])
            merged[-1][2] += g[2]
        else:
            merged.append(g)
    pieces = sorted([(lo, hi, keys) for lo, hi, keys in merged] +
                    [(s, e, None) for s, e in words if not any(lo <= s < hi for lo, hi, _ in merged)])
    units = []
    for i, (lo, hi, keys) in enumerate(pieces):
        nxt = pieces[i + 1][0] if i + 1 < len(pieces) else hi
        spans = [(k, protected[k][0] - lo, protected[k][1] - lo) for k in keys] if keys else []
        units.append(Unit([text[lo:hi]], keys is not None, spans=spans, sep=text[hi:nxt]))
    return units


def _separator(left: Unit, right: Unit) -> str:
    if left.sep:
        return left.sep
    glued = _CJK_CHAR.fullmatch(left.text[-1]) or _CJK_CHAR.fullmatch(right.text[0])
    return "" if glued else " "  # two non-CJK words side by side would become one word


def render_text(units: list[Unit]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The text the units spell and where each protected span now is."""
    out, pos, spans = [], 0, {}
    for i, u in enumerate(units):
        if i:
            sep = _separator(units[i - 1], u)
            out.append(sep)
            pos += len(sep)
        for key, a, b in u.spans:
            spans[key] = (pos + a, pos + b)
        out.append(u.text)
        pos += len(u.text)
    return "".join(out), spans


def ner_units(ex: NerExample) -> list[Unit]:
    units, i = [], 0
    for kind, first, last in entity_spans(ex.tags):
        units += [Unit([ex.tokens[k]], tags=["O"]) for k in range(i, first)]
        units.append(Unit(ex.tokens[first:last + 1], True, ex.tags[first:last + 1]))
        i = last + 1
    return units + [Unit([ex.tokens[k]], tags=["O"]) for k in range(i, len(ex.tokens))]


def render_ner(units: list[Unit]) -> NerExample:
    tokens, tags = [], []
    for u in units:
        t = list(u.tags)
        if u.fixed and t[0][:2] == "I-" and tags and tags[-1] != "O" and tags[-1][2:] == t[0][2:]:
            t[0] = "B-" + t[0][2:]  # it would run on into the entity before it
        tokens += u.words
        tags += t
    return NerExample(tokens, tags)


# ------------------------------------------------------------------------------------------------------- edits
def _free(units: list[Unit]) -> list[int]:
    return [i for i, u in enumerate(units) if not u.fixed]


def _count(units: list[Unit], rate: float) -> int:
    return max(1, round(rate * len(_free(units))))


def eda_edit(units: list[Unit], rng: random.Random, rate: float) -> list[Unit]:
    """One EDA edit (swap, delete or insert, uniformly) of ``n = rate x free words`` (>= 1) on a copy."""
    units, n = list(units), _count(units, rate)
    edit = rng.choice(EDA_EDITS)
    free = _free(units)
    if edit == "swap" and len(units) >= 2:
        for _ in range(n):
            i, j = rng.sample(range(len(units)), 2)
            units[i], units[j] = units[j], units[i]
    elif edit == "delete" and free and len(units) >= 2:
        drop = set(rng.sample(free, min(n, len(free), len(units) - 1)))  # never the whole text
        units = [u for i, u in enumerate(units) if i not in drop]
    elif edit == "insert" and free:
        for _ in range(n):
            src = units[rng.choice(_free(units))]
            units.insert(rng.randrange(len(units) + 1), replace(src, spans=[]))
    return units


def mask_choice(units: list[Unit], rng: random.Random, rate: float) -> list[int]:
    free = _free(units)
    return sorted(rng.sample(free, min(_count(units, rate), len(free))))


def substitute(units: list[Unit], masked: list[int], candidates: list[list[str]], rng: random.Random,
               top_k: int) -> list[Unit]:
    """``units`` with each masked unit's word replaced by one of its first ``top_k`` candidates (kept if none)."""
    units = list(units)
    for i, cands in zip(masked, candidates):
        if cands:
            units[i] = replace(units[i], words=[rng.choice(cands[:top_k])])
    return units


# ------------------------------------------------------------------------------------------------- per task
def _segments(task: str, ex) -> list[list[Unit]]:
    """The editable texts of an example as unit lists (in the order ``_rebuild`` takes them back)."""
    if task in ("classify", "multilabel"):
        return [text_units(t, {}) for t in (ex.text, ex.text_pair) if t is not None]
    if task == "relation":
        return [text_units(ex.text, {"head": ex.head, "tail": ex.tail})]
    if task == "qa":
        return [text_units(ex.context, {str(i): (s, s + len(t)) for i, (t, s) in enumerate(ex.answers)})]
    return [ner_units(ex)]


def _rebuild(task: str, ex, segments: list[list[Unit]], k: int):
    if task == "ner":
        return render_ner(segments[0])
    texts = [render_text(s) for s in segments]
    if task in ("classify", "multilabel"):
        return replace(ex, text=texts[0][0], text_pair=texts[1][0] if len(texts) > 1 else None)
    text, spans = texts[0]
    if task == "relation":
        return replace(ex, text=text, head=spans["head"], tail=spans["tail"])
    answers = [(t, spans[str(i)][0]) for i, (t, _) in enumerate(ex.answers)]
    return replace(ex, id=f"{ex.id}-aug{k}", context=text, answers=answers)


def augment(task: str, examples: list, method: str, per_example: int = 1, seed: int = 0,
            rate: float | None = None, filler: Filler | None = None, top_k: int = 5,
            batch_size: int = 16) -> list:
    """``per_example`` variants of each example, in order (all of the first example's, then the second's, ...).
    ``mlm`` needs ``filler``; it is called with ``batch_size`` texts at a time."""
    if method not in METHODS:
        raise BertrtError(f"augmentation method must be one of {', '.join(METHODS)}, not {method!r}")
    if per_example < 1:
        raise BertrtError(f"--per-example must be >= 1, got {per_example}")
    if method == "mlm" and filler is None:
        raise BertrtError("mlm augmentation fills masks with a checkpoint's masked-LM head: give the checkpoint")
    rate = DEFAULT_RATE[method] if rate is None else rate
    if not 0 < rate <= 1:
        raise BertrtError(f"the augmentation rate must be in (0, 1], got {rate}")
    rng = random.Random(seed)
    jobs = [(ex, k, _segments(task, ex)) for ex in examples for k in range(per_example)]
    if method == "eda":
        return [_rebuild(task, ex, [eda_edit(s, rng, rate) for s in segs], k) for ex, k, segs in jobs]
    masks = [[mask_choice(s, rng, rate) for s in segs] for _, _, segs in jobs]
    flat = [(j, n) for j, (_, _, segs) in enumerate(jobs) for n in range(len(segs))]
    candidates = {}
    for b in range(0, len(flat), batch_size):
        part = flat[b:b + batch_size]
        got = filler([[u.text for u in jobs[j][2][n]] for j, n in part], [masks[j][n] for j, n in part])
        candidates.update(zip(part, got))
    out = []
    for j, (ex, k, segs) in enumerate(jobs):
        new = [substitute(s, masks[j][n], candidates[(j, n)], rng, top_k) for n, s in enumerate(segs)]
        out.append(_rebuild(task, ex, new, k))
    return out


# ------------------------------------------------------------------------------------------------- writing
def task_rows(task: str, examples: list):
    """Examples in the format ``bertrt.data.tasks.read_task`` reads: JSONL rows, or (qa) one SQuAD v1.1 document."""
    if task == "qa":
        paragraphs = [{"context": e.context, "qas": [{"id": e.id, "question": e.question, "answers": [
            {"text": t, "answer_start": s} for t, s in e.answers]}]} for e in examples]
        return {"version": "1.1", "data": [{"title": "augmented", "paragraphs": paragraphs}]}
    rows = []
    for e in examples:
        if isinstance(e, NerExample):
            rows.append({"tokens": e.tokens, "tags": e.tags})
        elif isinstance(e, RelationExample):
            rows.append({"text": e.text, "head": list(e.head), "tail": list(e.tail), "label": e.label})
        else:
            row = {"text": e.text, **({"text_pair": e.text_pair} if e.text_pair is not None else {})}
            rows.append({**row, **({"labels": e.labels} if task == "multilabel" else {"label": e.label})})
    return rows


def check_output_name(task: str, path) -> None:
    """The file name must make ``read_task`` read what ``task_file_text`` writes (it goes by the suffix)."""
    wanted = (".json",) if task == "qa" else (".jsonl", ".json") if task == "ner" else (".jsonl",)
    if Path(path).suffix.lower() not in wanted:
        raise BertrtError(f"{task} data is written as {'SQuAD v1.1 JSON' if task == 'qa' else 'JSONL'}: give the "
                          f"output a {' or '.join(wanted)} name so that bertrt reads it back as such")


def task_file_text(task: str, examples: list) -> str:
    rows = task_rows(task, examples)
    if task == "qa":
        return json.dumps(rows, ensure_ascii=False) + "\n"
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
