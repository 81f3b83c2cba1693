"""Model outputs -> the result objects ``predict`` returns, one function per task.

classify {"label", "score", "scores"}; ner {"entities": [{"type", "start", "end", "text", "score"}]} with character
offsets into the input; qa {"answer", "start", "end", "score"} with offsets into the context; embed {"embedding"}.
Each adds "truncated": true when its input was cut to the artifact's max length.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from .encode import Encoded

MAX_ANSWER_TOKENS = 30  # longest qa answer considered, in tokens (SQuAD practice)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)  # fp16 artifacts: compute probabilities in double, then report as Python floats
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _extend_over_marks(text: str, end: int) -> int:
    """Move a span end past combining marks (e.g. U+0301), which the tokenizer's offsets leave outside the word."""
    while end < len(text) and unicodedata.combining(text[end]):
        end += 1
    return end


def _finish(result: dict, enc: Encoded) -> dict:
    if enc.truncated:
        result["truncated"] = True
    return result


def classify(outputs: dict, encs: list[Encoded], labels: list[str]) -> list[dict]:
    probs = softmax(outputs["logits"])  # (B, L)
    results = []
    for p, enc in zip(probs, encs):
        best = int(p.argmax())
        results.append(_finish({"label": labels[best], "score": float(p[best]),
                                "scores": {name: float(v) for name, v in zip(labels, p)}}, enc))
    return results


def _split_tag(label: str) -> tuple[str, str | None]:
    """'B-PER' -> ('B', 'PER'); 'I-PER' -> ('I', 'PER'); 'O' -> ('O', None); 'PER' (no scheme) -> ('I', 'PER')."""
    if label == "O":
        return "O", None
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        return ("B" if label[0] in "BS" else "I"), label[2:]
    return "I", label


def _words(enc: Encoded) -> list[tuple[int, int, int]]:
    """(first token index, start char, end char) for each word of the first text, in order."""
    words: list[list[int]] = []
    last_word = None
    for t, (w, s) in enumerate(zip(enc.word_ids, enc.sequence_ids)):
        if w is None or s != 0:
            continue
        start, end = enc.offsets[t]
        if w == last_word:
            words[-1][2] = max(words[-1][2], end)
        else:
            words.append([t, start, end])
            last_word = w
    return [tuple(w) for w in words]


def ner(outputs: dict, encs: list[Encoded], labels: list[str]) -> list[dict]:
    """BIO tags -> entities. A word's tag is its first token's (the usual 'first' aggregation); an entity's score
    is the mean probability of its words' tags. I- continuing another type, or without a B-, starts an entity."""
    probs = softmax(outputs["logits"])  # (B, T, L)
    tags = [_split_tag(name) for name in labels]
    results = []
    for p, enc in zip(probs, encs):
        entities, current = [], None
        for t, start, end in _words(enc):
            best = int(p[t].argmax())
            prefix, kind = tags[best]
            if prefix == "O":
                current = None
                continue
            if current is not None and prefix == "I" and kind == current["type"]:
                current["end"], current["_scores"] = end, current["_scores"] + [float(p[t, best])]
                continue
            current = {"type": kind, "start": start, "end": end, "_scores": [float(p[t, best])]}
            entities.append(current)
        for e in entities:
            e["end"] = _extend_over_marks(enc.source, e["end"])
            e["text"] = enc.source[e["start"]:e["end"]]
            e["score"] = float(np.mean(e.pop("_scores")))
        results.append(_finish({"entities": entities}, enc))
    return results


def qa(outputs: dict, encs: list[Encoded], max_answer_tokens: int = MAX_ANSWER_TOKENS) -> list[dict]:
    """The best valid span in the context: start <= end, at most ``max_answer_tokens`` long; score is
    p(start) * p(end) with each softmax taken over the context tokens."""
    results = []
    for start_logits, end_logits, enc in zip(outputs["start_logits"], outputs["end_logits"], encs):
        ctx = np.array([t for t, s in enumerate(enc.sequence_ids) if s == 1], dtype=np.int64)
        if ctx.size == 0:  # empty context (or truncated away entirely): no answer
            results.append(_finish({"answer": "", "start": 0, "end": 0, "score": 0.0}, enc))
            continue
        ps, pe = softmax(start_logits[ctx]), softmax(end_logits[ctx])  # (C,), (C,)
        scores = np.outer(ps, pe)  # (C, C): [i, j] = p(start=i) p(end=j)
        i, j = np.indices(scores.shape)
        scores[(j < i) | (j - i >= max_answer_tokens)] = -1.0
        a, b = np.unravel_index(int(scores.argmax()), scores.shape)
        start = enc.offsets[ctx[a]][0]
        end = _extend_over_marks(enc.source, enc.offsets[ctx[b]][1])
        results.append(_finish({"answer": enc.source[start:end], "start": int(start), "end": int(end),
                                "score": float(scores[a, b])}, enc))
    return results


def embed(outputs: dict, encs: list[Encoded]) -> list[dict]:
    vectors = outputs["embedding"].astype(np.float32)  # (B, H)
    return [_finish({"embedding": v.tolist()}, enc) for v, enc in zip(vectors, encs)]


def postprocess(task: str, outputs: dict, encs: list[Encoded], labels: list[str]) -> list[dict]:
    if task == "classify":
        return classify(outputs, encs, labels)
    if task == "ner":
        return ner(outputs, encs, labels)
    if task == "qa":
        return qa(outputs, encs)
    return embed(outputs, encs)
