"""Task datasets for fine-tuning and evaluation: read, validate, encode.

Formats:
- ``classify``: JSONL with ``text``, optional ``text_pair`` and ``label``; or CSV/TSV with a header of those names.
- ``ner``: CoNLL (token first, tag last, the same number of fields on every line, a blank line between sentences,
  ``-DOCSTART-`` lines skipped) or JSONL ``{"tokens": [...], "tags": [...]}``; BIO / IOB2 tags.
- ``qa``: SQuAD v1.1 JSON; every answer must occur in its context at ``answer_start``.

Every reader validates the whole file before returning, so a caller can read all its data before it writes anything;
a bad input raises ``DataError`` naming the file, the line (or question id) and the fix. Encoding turns examples into
features (plain lists) and ``collate`` pads a list of features into tensors.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, InputError
from ..tasks import LABELLED_TASKS, SEQUENCE_TASKS
from ..tasks.encode import IGNORE_INDEX, TextEncoder, check_spans, join_words, pad_to

TASK_FORMATS = {"classify": "JSONL, CSV or TSV", "multilabel": 'JSONL with "text" and a "labels" list',
                "ner": "CoNLL or JSONL", "qa": "SQuAD v1.1 JSON",
                "relation": 'JSONL with "text", "head" and "tail" ([start, end] character spans) and "label"'}


@dataclass
class ClassifyExample:
    text: str
    text_pair: str | None = None
    label: str | None = None
    labels: list[str] | None = None  # multilabel: every label that applies (possibly none)


@dataclass
class RelationExample:
    text: str
    head: tuple[int, int]
    tail: tuple[int, int]
    label: str | None = None


@dataclass
class NerExample:
    tokens: list[str]
    tags: list[str] | None = None


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, character start in context)


# ----------------------------------------------------------------------------------------------------- reading
def read_task(path, task: str, require_labels: bool = True) -> list:
    """Read and validate a whole task file; ``require_labels=False`` accepts unlabelled classify/NER data."""
    path = Path(path)
    if task not in TASK_FORMATS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASK_FORMATS)}")
    if not path.is_file():
        raise DataError(f"{task} data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty; a {task} file needs at least one example ({TASK_FORMATS[task]})")
    reader = {"classify": _read_classify, "multilabel": _read_multilabel, "ner": _read_ner, "qa": _read_squad,
              "relation": _read_relation}[task]
    examples = reader(path, text, require_labels)
    if not examples:
        raise DataError(f"{path} holds no {task} examples; expected {TASK_FORMATS[task]}")
    return examples


def _json_lines(path: Path, text: str):
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); JSONL wants one object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def _read_classify(path: Path, text: str, require_labels: bool) -> list[ClassifyExample]:
    required = ("text", "label") if require_labels else ("text",)
    if path.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV text often holds bare quotes
        rows = csv.DictReader(text.splitlines(), delimiter=delimiter, quoting=quoting)
        header = rows.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: the header has no {' or '.join(repr(c) for c in missing)} column "
                            f"(found {header}); classify data needs columns text, label and optionally text_pair")
        numbered = ((n, row) for n, row in enumerate(rows, 2))
    else:
        numbered = _json_lines(path, text)
    out = []
    for n, row in numbered:
        missing = [c for c in required if row.get(c) in (None, "")]
        if missing:
            raise DataError(f"{path}:{n}: missing {', '.join(missing)}; every classify example needs text and label "
                            "(text_pair is optional)")
        if None in row:  # csv: more fields than the header names
            raise DataError(f"{path}:{n}: more fields than the header has columns (quote text containing the "
                            "delimiter)")
        pair = row.get("text_pair")
        label = row.get("label")
        out.append(ClassifyExample(str(row["text"]), str(pair) if pair not in (None, "") else None,
                                   str(label) if label not in (None, "") else None))
    _check_pairs(path, out)
    return out


def _check_pairs(path: Path, examples: list[ClassifyExample]) -> None:
    if len({e.text_pair is not None for e in examples}) > 1:
        raise DataError(f"{path}: some examples have text_pair and some do not; give every example a text_pair "
                        "(sentence-pair task) or none")


def _read_multilabel(path: Path, text: str, require_labels: bool) -> list[ClassifyExample]:
    out = []
    for n, row in _json_lines(path, text):
        labels, pair = row.get("labels"), row.get("text_pair")
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise DataError(f"{path}:{n}: missing text; every multilabel example needs text and a labels list")
        if labels is None and require_labels:
            raise DataError(f'{path}:{n}: missing "labels"; give the list of labels that apply (or [] for none)')
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels)):
            raise DataError(f'{path}:{n}: "labels" must be a list of label names, got {labels!r}')
        if labels is not None and len(set(labels)) != len(labels):
            raise DataError(f"{path}:{n}: a label occurs twice in {labels}; list each label once")
        out.append(ClassifyExample(row["text"], str(pair) if pair not in (None, "") else None, labels=labels))
    _check_pairs(path, out)
    return out


def _read_relation(path: Path, text: str, require_labels: bool) -> list[RelationExample]:
    out = []
    for n, row in _json_lines(path, text):
        body, label = row.get("text"), row.get("label")
        if not isinstance(body, str) or not body:
            raise DataError(f"{path}:{n}: missing text; every relation example needs text, head, tail and label")
        problem = check_spans(body, row.get("head"), row.get("tail"))
        if problem:
            raise DataError(f"{path}:{n}: {problem}")
        if require_labels and label in (None, ""):
            raise DataError(f'{path}:{n}: missing "label" (the relation of head to tail, e.g. "no_relation")')
        out.append(RelationExample(body, tuple(row["head"]), tuple(row["tail"]),
                                   str(label) if label not in (None, "") else None))
    return out


def _check_tags(path: Path, where, tags: list[str]) -> None:
    for t in tags:
        if t != "O" and not (len(t) > 2 and t[:2] in ("B-", "I-")):
            raise DataError(f"{path}:{where}: tag {t!r} is not BIO/IOB2; tags are O, B-TYPE or I-TYPE")


def _read_ner(path: Path, text: str, require_labels: bool) -> list[NerExample]:
    if path.suffix.lower() in (".jsonl", ".json"):
        out = []
        for n, row in _json_lines(path, text):
            tokens, tags = row.get("tokens"), row.get("tags")
            if not isinstance(tokens, list) or (require_labels and not isinstance(tags, list)):
                raise DataError(f"{path}:{n}: NER JSONL needs a 'tokens' list and a 'tags' list")
            if tags is not None and len(tags) != len(tokens):
                raise DataError(f"{path}:{n}: {len(tokens)} tokens but {len(tags)} tags; they must pair one to one")
            if not tokens:
                raise DataError(f"{path}:{n}: empty 'tokens' list")
            if tags is not None:
                _check_tags(path, n, [str(t) for t in tags])
            out.append(NerExample([str(t) for t in tokens], [str(t) for t in tags] if tags is not None else None))
        return out
    out, tokens, tags, width = [], [], [], None
    for n, line in enumerate(text.splitlines() + [""], 1):
        fields = line.split()
        if not fields:
            if tokens:
                out.append(NerExample(tokens, tags))
            tokens, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if width is None:
            width = len(fields)
            if width < 2 and require_labels:
                raise DataError(f"{path}:{n}: CoNLL lines need a token and a tag separated by whitespace, got "
                                f"{line!r}")
        if len(fields) != width:
            raise DataError(f"{path}:{n}: {len(fields)} fields but the file's first line has {width}; every CoNLL "
                            f"line is 'token ... tag' with the same number of fields (got {line!r})")
        tokens.append(fields[0])
        if width >= 2:
            _check_tags(path, n, fields[-1:])
            tags.append(fields[-1])
    if width is not None and width < 2:  # unlabelled: one token per line
        out = [NerExample(e.tokens, None) for e in out]
    return out


def _read_squad(path: Path, text: str, require_labels: bool) -> list[QaExample]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); expected SQuAD v1.1") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected SQuAD v1.1 JSON, an object with a 'data' list of articles")
    out = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = para.get("context")
            if not isinstance(context, str) or not isinstance(para.get("qas"), list):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] needs a 'context' string and a 'qas' list")
            for q in para["qas"]:
                qid, question = q.get("id"), q.get("question")
                if qid is None or not isinstance(question, str):
                    raise DataError(f"{path}: a question in data[{a}].paragraphs[{p}] lacks 'id' or 'question'")
                if q.get("is_impossible"):
                    raise DataError(f"{path}: question {qid} is unanswerable (SQuAD v2); bertrt reads SQuAD v1.1, "
                                    "where every question has an answer - drop the unanswerable ones")
                answers = []
                for ans in q.get("answers", []):
                    answers.append(_check_answer(path, qid, context, ans))
                if require_labels and not answers:
                    raise DataError(f"{path}: question {qid} has no answers; SQuAD v1.1 training and evaluation "
                                    "data give at least one")
                out.append(QaExample(str(qid), question, context, answers))
    ids = [e.id for e in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: question id {dup!r} occurs more than once; ids must be unique")
    return out


def _check_answer(path: Path, qid, context: str, ans) -> tuple[str, int]:
    if not isinstance(ans, dict) or not isinstance(ans.get("text"), str) or not isinstance(ans.get("answer_start"),
                                                                                          int):
        raise DataError(f"{path}: question {qid}: each answer needs 'text' (string) and 'answer_start' (int)")
    t, s = ans["text"], ans["answer_start"]
    if not t.strip():
        raise DataError(f"{path}: question {qid}: an answer is empty")
    if context[s:s + len(t)] != t:
        found = context.find(t)
        if found < 0:
            raise DataError(f"{path}: question {qid}: the answer {t!r} does not occur in the context; every answer "
                            "must be a span of its context")
        raise DataError(f"{path}: question {qid}: answer_start {s} does not point at the answer {t!r} (it occurs "
                        f"at {found}); answer_start is a character offset into the context")
    return t, s


# ------------------------------------------------------------------------------------------------------ labels
def infer_labels(task: str, examples: list) -> list[str]:
    """Label names from training data: sorted class names (classify) or O then B-/I- of every type (ner)."""
    if task == "multilabel":
        labels = sorted({x for e in examples for x in e.labels or []})
        if len(labels) < 2:
            raise DataError(f"the training data uses {len(labels)} label(s) {labels}; multi-label classification "
                            "needs at least 2")
        return labels
    if task in ("classify", "relation"):
        labels = sorted({e.label for e in examples if e.label is not None})
        if len(labels) < 2:
            raise DataError(f"the training data has {len(labels)} label(s) {labels}; classification needs at least 2")
        return labels
    if task == "ner":
        types = sorted({t[2:] for e in examples for t in (e.tags or []) if t != "O"})
        if not types:
            raise DataError("the training data has no entity tags (only 'O'); NER needs at least one B-TYPE tag")
        return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    return []


def check_labels(task: str, examples: list, labels: list[str], source) -> None:
    """Every label in ``examples`` must be one the model knows (e.g. eval labels must occur in training)."""
    if task not in LABELLED_TASKS:
        return
    seen = ({e.label for e in examples} if task in ("classify", "relation") else
            {x for e in examples for x in e.labels or []} if task == "multilabel" else
            {t for e in examples for t in (e.tags or [])})
    unknown = sorted(seen - set(labels) - {None})
    if unknown:
        raise DataError(f"{source}: label(s) {', '.join(map(repr, unknown))} do not occur in the training data "
                        f"(known: {', '.join(labels)}); add examples of them to the training set or remove them")


# ----------------------------------------------------------------------------------------------------- encoding
def inputs_and_gold(task: str, examples: list) -> tuple[list[tuple[str, str | None]], list | None]:
    """What the runtime is given for ``examples`` ((text, pair), (text, None) or (question, context)) and the gold
    answers ``bertrt.tasks.metrics.report`` scores against (None when any example is unlabelled). NER sentences
    become their words joined by single spaces, with one tag per word of that text (``join_words``)."""
    if task in SEQUENCE_TASKS:
        gold = [e.label if task == "classify" else e.labels for e in examples]
        return [(e.text, e.text_pair) for e in examples], None if None in gold else gold
    if task == "relation":
        gold = [e.label for e in examples]
        return [(e.text, (e.head, e.tail)) for e in examples], None if None in gold else gold
    if task == "ner":
        joined = [join_words(e.tokens, e.tags) for e in examples]
        gold = [tags for _, tags in joined]
        return [(text, None) for text, _ in joined], None if None in gold else gold
    gold = [[a[0] for a in e.answers] for e in examples]
    return [(e.question, e.context) for e in examples], gold if all(gold) else None


def _encoder(tok, task: str, max_length: int, doc_stride: int | None = None, prompt: str | None = None):
    try:
        return TextEncoder(tok, task, max_length, doc_stride, prompt=prompt)
    except InputError as e:
        raise DataError(str(e)) from None


def encode_classify(examples: list[ClassifyExample], tok, labels: list[str], max_length: int,
                    multilabel: bool = False, prompt: str | None = None) -> list[dict]:
    """One feature per example, truncated to ``max_length`` exactly as the runtime truncates. ``labels`` is the
    class id, or with ``multilabel`` a 0/1 ``targets`` vector over ``labels``. ``prompt``: a cloze pattern each
    text is filled into (few-shot prompt training)."""
    index = {l: i for i, l in enumerate(labels)}
    pairs, _ = inputs_and_gold("classify", examples)
    try:
        encs = _encoder(tok, "classify", max_length, prompt=prompt).encode(pairs)
    except InputError as e:
        raise DataError(str(e)) from None
    out = []
    for e, enc in zip(examples, encs):
        f = {"input_ids": enc.windows[0].ids, "token_type_ids": enc.windows[0].type_ids}
        if multilabel:
            f["targets"] = [float(name in (e.labels or [])) for name in labels]
        else:
            f["labels"] = index[e.label] if e.label is not None else IGNORE_INDEX
        out.append(f)
    return out


def encode_relation(examples: list[RelationExample], tok, labels: list[str], max_length: int) -> list[dict]:
    """One feature per example: the text with its entity markers, in the window the runtime would keep."""
    index = {l: i for i, l in enumerate(labels)}
    pairs, _ = inputs_and_gold("relation", examples)
    encs = _encoder(tok, "relation", max_length).encode(pairs)
    return [{"input_ids": enc.windows[0].ids, "token_type_ids": enc.windows[0].type_ids,
             "labels": index[e.label] if e.label is not None else IGNORE_INDEX} for e, enc in zip(examples, encs)]


def encode_ner(examples: list[NerExample], tok, labels: list[str], max_length: int,
               doc_stride: int | None = None) -> list[dict]:
    """One feature per window of each sentence (as the runtime windows it); a word's label sits on its first
    sub-token, every other position is ignored. Words are the runtime's (``bertrt.tasks.encode.word_spans``)."""
    index = {l: i for i, l in enumerate(labels)}
    pairs, _ = inputs_and_gold("ner", examples)
    encs = _encoder(tok, "ner", max_length, doc_stride).encode(pairs)
    out = []
    for i, (e, enc) in enumerate(zip(examples, encs)):
        tags = join_words(e.tokens, e.tags)[1]
        for w in enc.windows:
            target = [IGNORE_INDEX if k is None or tags is None else index[tags[k]] for k in w.word_starts]
            out.append({"input_ids": w.ids, "token_type_ids": w.type_ids, "labels": target, "example_index": i})
    return out


def encode_qa(examples: list[QaExample], tok, max_length: int, doc_stride: int | None = None) -> list[dict]:
    """``[CLS] question [SEP] context window [SEP]`` features, windowed exactly as the runtime windows contexts.

    ``doc_stride`` is the overlap, in tokens, between consecutive windows (Hugging Face's meaning; default a quarter
    of ``max_length``). The answer's start/end token positions point at [CLS] (0) in a window that does not hold
    the whole answer. ``offsets`` give each context token's character span in the context (None elsewhere).
    """
    pairs, _ = inputs_and_gold("qa", examples)
    encs = _encoder(tok, "qa", max_length, doc_stride).encode(pairs)
    out = []
    for i, (e, enc) in enumerate(zip(examples, encs)):
        for w in enc.windows:
            ctx = [t for t, s in enumerate(w.sequence_ids) if s == 1]
            s_pos = e_pos = 0
            if e.answers and ctx:
                a_start, a_end = e.answers[0][1], e.answers[0][1] + len(e.answers[0][0])
                inside = [t for t in ctx if w.offsets[t][1] > a_start and w.offsets[t][0] < a_end]
                if inside and w.offsets[ctx[0]][0] <= a_start and w.offsets[ctx[-1]][1] >= a_end:
                    s_pos, e_pos = inside[0], inside[-1]
            out.append({"input_ids": w.ids, "token_type_ids": w.type_ids, "start_positions": s_pos,
                        "end_positions": e_pos, "example_index": i,
                        "offsets": [w.offsets[t] if s == 1 else None for t, s in enumerate(w.sequence_ids)]})
    return out


TENSOR_KEYS = ("input_ids", "token_type_ids", "labels", "targets", "start_positions", "end_positions")


def collate(features: list[dict], pad_id: int = 0) -> dict:
    """Pad features to the longest in the batch; adds ``attention_mask``. Non-tensor keys are left out."""
    import torch

    T = max(len(f["input_ids"]) for f in features)
    batch = {"attention_mask": torch.from_numpy(pad_to([[1] * len(f["input_ids"]) for f in features], T, 0))}
    for key in TENSOR_KEYS:
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if key == "targets":  # multilabel: one 0/1 per label, the same length in every row
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], list):
            pad = pad_id if key == "input_ids" else (IGNORE_INDEX if key == "labels" else 0)
            batch[key] = torch.from_numpy(pad_to(values, T, pad))
        else:
            batch[key] = torch.tensor(values)
    return batch
