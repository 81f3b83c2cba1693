"""Decoding on hand-made logits: words to character spans (BIO and BIES), the best valid qa span over windows,
softmax scores, pooled windows."""

import numpy as np
import pytest

from bertrt.tasks.decode import classify, embed, entity_spans, ner, qa
from bertrt.tasks.encode import Encoded, Window, word_spans

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def window(pieces, second=False, question=0):
    """Tokens as (start, end, word start or None) character spans; [CLS] (question) [SEP] around them."""
    offsets, starts, seqs = [(0, 0)] * (1 + question), [None] * (1 + question), [None] + [0] * question
    if question:
        offsets, starts, seqs = offsets + [(0, 0)], starts + [None], seqs + [None]
    for start, end, word in pieces:
        offsets.append((start, end))
        starts.append(word)
        seqs.append(1 if second else 0)
    offsets.append((0, 0))
    starts.append(None)
    seqs.append(None)
    n = len(offsets)
    return Window(ids=[1] * n, type_ids=[0] * n, offsets=offsets, sequence_ids=seqs, word_starts=starts)


def logits_for(tags, n_tokens):
    out = np.full((n_tokens, len(LABELS)), -5.0)
    out[:, 0] = 5.0  # O by default, [CLS]/[SEP] included
    for t, tag in tags.items():
        out[t, :] = -5.0
        out[t, LABELS.index(tag)] = 5.0
    return out


def test_words_are_whitespace_runs_and_cjk_characters():
    text = "@user's tweet: 北京 is big"
    assert [text[a:b] for a, b in word_spans(text)] == ["@user's", "tweet:", "北", "京", "is", "big"]


def test_ner_words_to_character_spans():
    text = "Angela Merkel visited Neu-Ulm and Zu\u0308rich"
    # tokens: Angela | Mer ##kel | visited | Neu - Ulm (one word: whitespace) | and | Zu ##\u0308 ##rich
    pieces = [(0, 6, 0), (7, 10, 1), (10, 13, None), (14, 21, 2), (22, 25, 3), (25, 26, None), (26, 29, None),
              (30, 33, 4), (34, 36, 5), (36, 37, None), (37, 41, None)]
    enc = Encoded([window(pieces)], text, spans=word_spans(text))
    # token index = piece index + 1; ##kel and the "-" say otherwise, but a word takes its first token's tag
    tags = {1: "B-PER", 2: "I-PER", 3: "O", 5: "B-LOC", 6: "B-PER", 9: "I-LOC"}
    out = ner([{"logits": logits_for(tags, len(enc.windows[0]))}], enc, LABELS)
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in out["entities"]] == [
        ("PER", 0, 13, "Angela Merkel"),
        ("LOC", 22, 29, "Neu-Ulm"),
        ("LOC", 34, 41, "Zu\u0308rich"),  # I- without B- starts an entity; the word's span holds the mark
    ]
    p = np.exp(5) / (np.exp(5) + 4 * np.exp(-5))
    assert all(e["score"] == pytest.approx(p, abs=1e-12) for e in out["entities"])
    assert "truncated" not in out


def test_ner_b_after_b_and_type_change_split_entities():
    text = "Anna Bob Paris"
    enc = Encoded([window([(0, 4, 0), (5, 8, 1), (9, 14, 2)])], text, spans=word_spans(text))
    out = ner([{"logits": logits_for({1: "B-PER", 2: "B-PER", 3: "I-LOC"}, 5)}], enc, LABELS)
    assert [e["text"] for e in out["entities"]] == ["Anna", "Bob", "Paris"]
    assert [e["type"] for e in out["entities"]] == ["PER", "PER", "LOC"]


def test_bies_and_bio_read_alike():
    assert entity_spans(["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]) == \
        [("PER", 0, 1), ("LOC", 2, 2), ("ORG", 4, 6)]
    assert entity_spans(["S-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]  # S ends its entity
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]


def test_ner_overlapping_windows_decide_each_word_once():
    """Word 2 sits in both windows: the window where it has more context on both sides decides it."""
    text = "a b c d"
    spans = word_spans(text)
    w1 = window([(0, 1, 0), (2, 3, 1), (4, 5, 2)])  # c next to [SEP]: context 1
    w2 = window([(4, 5, 2), (6, 7, 3)])  # c next to [CLS]: context 1 too -> the earlier window wins ties
    w3 = window([(2, 3, 1), (4, 5, 2), (6, 7, 3)])  # c in the middle: context 2
    rows = [{"logits": logits_for({3: "B-PER"}, 5)}, {"logits": logits_for({1: "B-LOC"}, 4)}]
    out = ner(rows, Encoded([w1, w2], text, spans=spans), LABELS)
    assert [(e["type"], e["text"]) for e in out["entities"]] == [("PER", "c")]
    rows = [{"logits": logits_for({3: "B-PER"}, 5)}, {"logits": logits_for({2: "B-LOC"}, 5)}]
    out = ner(rows, Encoded([w1, w3], text, spans=spans), LABELS)
    assert [(e["type"], e["text"]) for e in out["entities"]] == [("LOC", "c")]


def _qa_logits(n, start_at, end_at):
    start, end = np.full(n, -10.0), np.full(n, -10.0)
    for t, v in start_at.items():
        start[t] = v
    for t, v in end_at.items():
        end[t] = v
    return {"start_logits": start, "end_logits": end}


def test_qa_best_valid_span():
    context = "Paris is the capital of France."
    w = window([(0, 5, None), (6, 8, None), (9, 12, None), (13, 20, None), (21, 23, None), (24, 30, None),
                (30, 31, None)], second=True)
    # the best start (France, token 6) lies after the best end (Paris, token 1): that span is invalid;
    # [CLS] (token 0) is not context and never an answer
    r = _qa_logits(len(w), {6: 9.0, 3: 8.0, 0: 20.0}, {1: 9.0, 4: 8.0, 0: 20.0})
    out = qa([r], Encoded([w], context))
    assert (out["answer"], out["start"], out["end"]) == ("the capital", 9, 20)
    ctx = np.arange(1, 8)
    ps = np.exp(r["start_logits"][ctx]) / np.exp(r["start_logits"][ctx]).sum()
    pe = np.exp(r["end_logits"][ctx]) / np.exp(r["end_logits"][ctx]).sum()
    assert out["score"] == pytest.approx(ps[2] * pe[3], rel=1e-12)


def test_qa_best_span_over_windows_by_logit_sum():
    """The second window's span has the higher start + end logit, though its probabilities are lower."""
    context = "aa bb cc dd"
    w1 = window([(0, 2, None), (3, 5, None)], second=True)
    w2 = window([(6, 8, None), (9, 11, None)], second=True)
    r1 = _qa_logits(4, {1: 5.0, 2: 4.9}, {1: 5.0})  # sum 10.0, p(start) about 0.5
    r2 = _qa_logits(4, {2: 5.5}, {2: 5.0})  # sum 10.5
    out = qa([r1, r2], Encoded([w1, w2], context))
    assert (out["answer"], out["start"], out["end"]) == ("dd", 9, 11)


def test_qa_answer_length_is_bounded():
    context = " ".join(["w"] * 40)
    w = window([(2 * i, 2 * i + 1, None) for i in range(40)], second=True)
    r = {"start_logits": np.zeros(len(w)), "end_logits": np.zeros(len(w))}
    r["start_logits"][1], r["end_logits"][40] = 10.0, 10.0  # 40 tokens apart: longer than the 30-token limit
    out = qa([r], Encoded([w], context))
    assert out["end"] - out["start"] < 2 * 30


def test_classify_and_embed_objects_and_pooling():
    enc = Encoded([window([(0, 1, None)])], "x", truncated=True)
    out = classify([{"logits": np.array([0.0, np.log(3.0)], dtype=np.float16)}], enc, ["neg", "pos"])
    assert out["label"] == "pos" and out["score"] == pytest.approx(0.75, abs=1e-3)
    assert out["scores"]["neg"] == pytest.approx(0.25, abs=1e-3) and out["truncated"] is True
    vec = embed([{"embedding": np.array([1.5, -2.0], dtype=np.float16)}], enc)
    assert vec == {"embedding": [1.5, -2.0], "truncated": True}
    two = Encoded([window([(0, 1, None)]), window([(2, 3, None)])], "x y")
    out = classify([{"logits": np.array([0.0, np.log(3.0)])}, {"logits": np.array([np.log(3.0), 0.0])}], two,
                   ["neg", "pos"])  # 0.25/0.75 and 0.75/0.25: the mean of probabilities is a tie
    assert out["scores"]["neg"] == pytest.approx(0.5, abs=1e-12) and "truncated" not in out
    vec = embed([{"embedding": np.array([3.0, 0.0])}, {"embedding": np.array([0.0, 4.0])}], two, normalize=True)
    assert vec["embedding"] == pytest.approx([0.6, 0.8], abs=1e-6)  # mean (1.5, 2), re-normalised
