"""Postprocessing on hand-made logits: BIO decoding to character spans, the best valid qa span, softmax scores."""

import numpy as np
import pytest

from bertrt.runtime.encode import Encoded
from bertrt.runtime.postprocess import classify, embed, ner, qa

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def encoded(text, pieces, second=None):
    """Tokens as (start, end, word) character spans of ``text``; [CLS]/[SEP] added around them."""
    offsets, words, seqs = [(0, 0)], [None], [None]
    for start, end, word in pieces:
        offsets.append((start, end))
        words.append(word)
        seqs.append(0 if second is None else 1)
    offsets.append((0, 0))
    words.append(None)
    seqs.append(None)
    n = len(offsets)
    return Encoded(ids=[1] * n, type_ids=[0] * n, offsets=offsets, sequence_ids=seqs, word_ids=words,
                   truncated=False, source=text)


def logits_for(tags, n_tokens):
    out = np.full((1, n_tokens, len(LABELS)), -5.0)
    out[0, :, 0] = 5.0  # O by default, [CLS]/[SEP] included
    for t, tag in tags.items():
        out[0, t, :] = -5.0
        out[0, t, LABELS.index(tag)] = 5.0
    return out


def test_ner_bio_to_character_spans():
    text = "Angela Merkel visited Neu-Ulm and Zu\u0308rich"
    # tokens: Angela | Mer ##kel | visited | Neu - Ulm (one word) | and | Zu (word ends before the combining mark)
    pieces = [(0, 6, 0), (7, 10, 1), (10, 13, 1), (14, 21, 2), (22, 25, 3), (25, 26, 3), (26, 29, 3),
              (30, 33, 4), (34, 36, 5)]
    enc = encoded(text, pieces)
    # token index = piece index + 1; ##kel says O but a word takes its first token's tag
    tags = {1: "B-PER", 2: "I-PER", 3: "O", 5: "B-LOC", 6: "B-PER", 9: "I-LOC"}
    out = ner({"logits": logits_for(tags, len(enc.ids))}, [enc], LABELS)[0]
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in out["entities"]] == [
        ("PER", 0, 13, "Angela Merkel"),
        ("LOC", 22, 29, "Neu-Ulm"),
        ("LOC", 34, 37, "Zu\u0308"),  # I- without B- starts an entity; the end covers the combining mark
    ]
    p = np.exp(5) / (np.exp(5) + 4 * np.exp(-5))
    assert all(e["score"] == pytest.approx(p, abs=1e-12) for e in out["entities"])
    assert "truncated" not in out


def test_ner_b_after_b_and_type_change_split_entities():
    text = "Anna Bob Paris"
    enc = encoded(text, [(0, 4, 0), (5, 8, 1), (9, 14, 2)])
    out = ner({"logits": logits_for({1: "B-PER", 2: "B-PER", 3: "I-LOC"}, len(enc.ids))}, [enc], LABELS)[0]
    assert [e["text"] for e in out["entities"]] == ["Anna", "Bob", "Paris"]
    assert [e["type"] for e in out["entities"]] == ["PER", "PER", "LOC"]


def test_qa_best_valid_span():
    context = "Paris is the capital of France."
    enc = encoded(context, [(0, 5, 0), (6, 8, 1), (9, 12, 2), (13, 20, 3), (21, 23, 4), (24, 30, 5), (30, 31, 6)],
                  second=True)
    T = len(enc.ids)
    start, end = np.full((1, T), -10.0), np.full((1, T), -10.0)
    # the best start (France, token 6) lies after the best end (Paris, token 1): that span is invalid
    start[0, 6], end[0, 1] = 9.0, 9.0
    start[0, 3], end[0, 4] = 8.0, 8.0  # "the capital" is the best valid span
    start[0, 0], end[0, 0] = 20.0, 20.0  # [CLS] is not context and never an answer
    out = qa({"start_logits": start, "end_logits": end}, [enc])[0]
    assert (out["answer"], out["start"], out["end"]) == ("the capital", 9, 20)
    ctx = np.arange(1, 8)
    ps = np.exp(start[0, ctx]) / np.exp(start[0, ctx]).sum()
    pe = np.exp(end[0, ctx]) / np.exp(end[0, ctx]).sum()
    assert out["score"] == pytest.approx(ps[2] * pe[3], rel=1e-12)


def test_qa_answer_length_is_bounded():
    context = " ".join(["w"] * 40)
    enc = encoded(context, [(2 * i, 2 * i + 1, i) for i in range(40)], second=True)
    T = len(enc.ids)
    start, end = np.zeros((1, T)), np.zeros((1, T))
    start[0, 1], end[0, 40] = 10.0, 10.0  # 40 tokens apart: longer than the 30-token limit
    out = qa({"start_logits": start, "end_logits": end}, [enc])[0]
    assert out["end"] - out["start"] < 2 * 30


def test_classify_and_embed_objects():
    enc = encoded("x", [(0, 1, 0)])
    enc.truncated = True
    out = classify({"logits": np.array([[0.0, np.log(3.0)]], dtype=np.float16)}, [enc], ["neg", "pos"])[0]
    assert out["label"] == "pos" and out["score"] == pytest.approx(0.75, abs=1e-3)
    assert out["scores"]["neg"] == pytest.approx(0.25, abs=1e-3) and out["truncated"] is True
    vec = embed({"embedding": np.array([[1.5, -2.0]], dtype=np.float16)}, [enc])[0]
    assert vec == {"embedding": [1.5, -2.0], "truncated": True}
