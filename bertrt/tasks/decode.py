"""Model outputs -> the answers ``predict`` returns, one function per task; and the decisions they make.

classify {"label", "score", "scores"}; relation {"relation", "score", "scores"}; multilabel {"labels", "scores"};
ner {"entities": [{"type", "start", "end", "text", "score"}]} with character offsets into the input; qa {"answer",
"start", "end", "score"} with offsets into the context; embed {"embedding"}.
Each adds "truncated": true when its input was cut to the artifact's max length. ``rows`` are the outputs of one
input's windows, each cut to its window's length. ``options``: the artifact's decoding settings, ``normalize``
(embed) and ``thresholds`` (multilabel, one per label; 0.5 when absent).
"""

from __future__ import annotations

import unicodedata

import numpy as np

from .encode import Encoded

MAX_ANSWER_TOKENS = 30  # longest qa answer considered, in tokens (SQuAD practice)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)  # fp16 artifacts: probabilities in double, then reported as Python floats
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _finish(result: dict, enc: Encoded) -> dict:
    if enc.truncated:
        result["truncated"] = True
    return result


# --------------------------------------------------------------------------------------------------- classify
def classify(rows: list[dict], enc: Encoded, labels: list[str]) -> dict:
    """The label of the highest probability; windows of a long text (``--long chunks``) average probabilities."""
    p = np.mean([softmax(r["logits"]) for r in rows], axis=0)  # (L,)
    best = int(p.argmax())
    return _finish({"label": labels[best], "score": float(p[best]),
                    "scores": {name: float(v) for name, v in zip(labels, p)}}, enc)


def relation(rows: list[dict], enc: Encoded, labels: list[str]) -> dict:
    """The relation of the highest probability between the marked head and tail."""
    out = classify(rows, enc, labels)
    return {"relation": out.pop("label"), **out}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def multilabel(rows: list[dict], enc: Encoded, labels: list[str], thresholds: list[float] | None = None) -> dict:
    """Every label whose sigmoid probability reaches its threshold, in label order; windows average probabilities."""
    p = np.mean([sigmoid(r["logits"]) for r in rows], axis=0)  # (L,)
    cut = thresholds if thresholds is not None else [0.5] * len(labels)
    return _finish({"labels": [name for name, v, t in zip(labels, p, cut) if v >= t],
                    "scores": {name: float(v) for name, v in zip(labels, p)}}, enc)


def embed(rows: list[dict], enc: Encoded, normalize: bool = False) -> dict:
    """The sentence vector; windows average theirs (re-normalised when the artifact normalises)."""
    v = np.mean([np.asarray(r["embedding"], dtype=np.float64) for r in rows], axis=0)
    if normalize and len(rows) > 1:
        v = v / max(np.linalg.norm(v), 1e-12)
    return _finish({"embedding": v.astype(np.float32).tolist()}, enc)


# --------------------------------------------------------------------------------------------------------- NER
def split_tag(label: str) -> tuple[str, str | None]:
    """'B-PER' -> ('B', 'PER'); 'I-PER' -> ('I', 'PER'); 'E-PER', 'S-PER' likewise; 'O' -> ('O', None);
    'PER' (no scheme) -> ('I', 'PER')."""
    if label == "O":
        return "O", None
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        return label[0], label[2:]
    return "I", label


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities ``(type, first, last)`` (inclusive word indices, in order) from BIO / IOB2 / BIES tags.

    As conlleval reads BIO: ``B-X`` starts an entity; ``I-X`` continues an entity of type X and otherwise (after
    ``O`` or another type) starts one. BIES: ``S-X`` is an entity alone; ``E-X`` continues like ``I-X`` and ends it.
    """
    spans, kind, start = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, t = split_tag(tag)
        continues = prefix in ("I", "E") and t == kind
        if kind is not None and not continues:
            spans.append((kind, start, i - 1))
            kind = None
        if prefix != "O" and not continues:
            kind, start = t, i
        if prefix in ("E", "S") and kind is not None:
            spans.append((kind, start, i))
            kind = None
    return spans


def word_predictions(rows: list[dict], enc: Encoded) -> list[tuple[int, np.ndarray] | None]:
    """Per word: (row index, token index) of the token whose prediction the word takes, or None (no token).

    A word takes its first token's prediction (the token its training label sat on). Where windows overlap, the
    window in which that token has the most context on both sides wins, so each word is decided once."""
    best: list = [None] * len(enc.spans)
    for r, window in enumerate(enc.windows):
        last = len(window) - 1
        for t, w in enumerate(window.word_starts):
            if w is None:
                continue
            context = min(t, last - t)
            if best[w] is None or context > best[w][2]:
                best[w] = (r, t, context)
    return [None if b is None else b[:2] for b in best]


def ner_tags(rows: list[dict], enc: Encoded, labels: list[str]) -> tuple[list[str], list[float]]:
    """Each word's tag and its probability ('O' and 1.0 for a word without tokens)."""
    probs = [softmax(r["logits"]) for r in rows]  # (T, L) each
    tags, scores = [], []
    for pick in word_predictions(rows, enc):
        if pick is None:
            tags.append("O")
            scores.append(1.0)
            continue
        p = probs[pick[0]][pick[1]]
        best = int(p.argmax())
        tags.append(labels[best])
        scores.append(float(p[best]))
    return tags, scores


def ner(rows: list[dict], enc: Encoded, labels: list[str]) -> dict:
    """Entities with character offsets; an entity's score is the mean probability of its words' tags."""
    tags, scores = ner_tags(rows, enc, labels)
    entities = []
    for kind, first, last in entity_spans(tags):
        start, end = enc.spans[first][0], enc.spans[last][1]
        entities.append({"type": kind, "start": start, "end": end, "text": enc.source[start:end],
                         "score": float(np.mean(scores[first:last + 1]))})
    return _finish({"entities": entities}, enc)


def word_tags(spans: list[tuple[int, int]], entities: list[dict]) -> list[str]:
    """BIO tags of the words at ``spans`` from entities with character offsets (the inverse of ``ner``)."""
    tags = ["O"] * len(spans)
    for e in entities:
        inside = [i for i, (s, t) in enumerate(spans) if s < e["end"] and t > e["start"]]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + e["type"]
    return tags


# ---------------------------------------------------------------------------------------------------------- QA
def _extend_over_marks(text: str, end: int) -> int:
    """Move a span end past combining marks (e.g. U+0301), which the tokenizer's offsets leave outside the word."""
    while end < len(text) and unicodedata.combining(text[end]):
        end += 1
    return end


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray,
              max_answer_tokens: int = MAX_ANSWER_TOKENS) -> tuple[int, int, float] | None:
    """The context span (first token, last token, start + end logit) of highest logit sum with start <= end and at
    most ``max_answer_tokens`` tokens; None without context. ``context``: the context's token positions."""
    if context.size == 0:
        return None
    s, e = np.asarray(start_logits, np.float64)[context], np.asarray(end_logits, np.float64)[context]
    score = s[:, None] + e[None, :]  # (C, C): [i, j] = start at i, end at j
    i, j = np.indices(score.shape)
    score[(j < i) | (j - i >= max_answer_tokens)] = -np.inf
    a, b = np.unravel_index(int(score.argmax()), score.shape)
    return int(context[a]), int(context[b]), float(score[a, b])


def qa(rows: list[dict], enc: Encoded, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> dict:
    """The best span over all windows of the context by start + end logit (the rule fine-tuning's evaluation
    uses); its score is p(start) * p(end), each softmax over the context tokens of the window it came from."""
    best = None  # (logit sum, window index, start token, end token)
    for w, (r, window) in enumerate(zip(rows, enc.windows)):
        ctx = np.array([t for t, s in enumerate(window.sequence_ids) if s == 1], dtype=np.int64)
        span = best_span(r["start_logits"], r["end_logits"], ctx, max_answer_tokens)
        if span is not None and (best is None or span[2] > best[0]):
            best = (span[2], w, span[0], span[1])
    if best is None:  # empty context: no answer
        return _finish({"answer": "", "start": 0, "end": 0, "score": 0.0}, enc)
    _, w, a, b = best
    window, r = enc.windows[w], rows[w]
    ctx = np.array([t for t, s in enumerate(window.sequence_ids) if s == 1], dtype=np.int64)
    ps, pe = softmax(r["start_logits"][ctx]), softmax(r["end_logits"][ctx])
    start = window.offsets[a][0]
    end = _extend_over_marks(enc.source, window.offsets[b][1])
    return _finish({"answer": enc.source[start:end], "start": int(start), "end": int(end),
                    "score": float(ps[np.searchsorted(ctx, a)] * pe[np.searchsorted(ctx, b)])}, enc)


# ----------------------------------------------------------------------------------------------------- ensembles
ENSEMBLE_TASKS = ("classify", "multilabel", "relation", "ner", "embed")  # qa's logit sums do not average
PROB_FLOOR = 1e-30  # probabilities are floored here before the log: a finite logit, 0 after softmax
SIGMOID_FLOOR = 1e-7  # multilabel: probabilities kept in [1e-7, 1 - 1e-7] (float32 cannot hold 1 - 1e-30)


def ensemble_outputs(task: str, outputs: list[dict]) -> dict:
    """Members' raw outputs on the same rows -> the ensemble's, in the same form, so decoding stays one rule: the
    mean of the members' probabilities as the logits whose softmax (multilabel: sigmoid) gives it back; embeddings
    averaged. An ensemble artifact's graph computes exactly this (``bertrt.converters.ensemble``)."""
    if task not in ENSEMBLE_TASKS:
        raise ValueError(f"{task} outputs do not average into an ensemble")
    if task == "embed":
        return {"embedding": np.mean([np.asarray(o["embedding"], np.float64) for o in outputs], axis=0)}
    if task == "multilabel":
        p = np.clip(np.mean([sigmoid(o["logits"]) for o in outputs], axis=0), SIGMOID_FLOOR, 1 - SIGMOID_FLOOR)
        return {"logits": np.log(p) - np.log1p(-p)}
    p = np.mean([softmax(o["logits"]) for o in outputs], axis=0)
    return {"logits": np.log(np.maximum(p, PROB_FLOOR))}


# ------------------------------------------------------------------------------------------------------ any task
def decode(task: str, rows: list[dict], enc: Encoded, labels: list[str], options: dict | None = None) -> dict:
    options = options or {}
    if task == "classify":
        return classify(rows, enc, labels)
    if task == "multilabel":
        return multilabel(rows, enc, labels, options.get("thresholds"))
    if task == "relation":
        return relation(rows, enc, labels)
    if task == "ner":
        return ner(rows, enc, labels)
    if task == "qa":
        return qa(rows, enc)
    return embed(rows, enc, bool(options.get("normalize")))


def decisions(task: str, output: dict, enc: Encoded) -> list:
    """What an answer decides, as comparable units: the label; whether each label applies; each word's tag; the
    answer's character span."""
    if task == "classify":
        return [output["label"]]
    if task == "multilabel":
        return [name in output["labels"] for name in output["scores"]]
    if task == "relation":
        return [output["relation"]]
    if task == "ner":
        return word_tags(enc.spans, output["entities"])
    if task == "qa":
        return [(output["start"], output["end"])]
    raise ValueError("embeddings make no discrete decision; compare them by cosine")
