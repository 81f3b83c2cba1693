"""Long inputs in the runtime: qa answers past the first window, ner entities in every window (exact offsets, no
duplicates at overlaps), classify / embed truncation flagged or pooled with --long chunks. The logits come from a
fake session that knows which token ids are answers and names, so the windowing and merging is what is tested."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertrt.artifact import TASK_OUTPUTS
from bertrt.runtime import Runtime
from bertrt.runtime.runtime import encoder_for
from bertrt.tasks.encode import TextEncoder

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


class KeywordSession:
    """classify: logits from the share of 'paris' tokens; ner: B-PER on 'alice' / 'bob', B-LOC on 'london';
    qa: start and end on 'paris' (score 9) and 'london' (score 5), in the context only."""

    device, providers = "cpu", ["Fake"]
    input_names = ["input_ids", "attention_mask", "token_type_ids"]

    def __init__(self, task: str, tok_path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
        self.task, self.id = task, {w: tok.token_to_id(w) for w in ("alice", "bob", "london", "paris")}
        self.rows = 0

    def run(self, feeds):
        ids, types, mask = feeds["input_ids"], feeds["token_type_ids"], feeds["attention_mask"]
        self.rows += len(ids)
        if self.task == "qa":
            ctx = (types == 1) & (mask == 1)
            score = np.where(ctx & (ids == self.id["paris"]), 9.0, np.where(ctx & (ids == self.id["london"]), 5.0, 0))
            return {"start_logits": score.astype(np.float32), "end_logits": score.astype(np.float32)}
        if self.task == "ner":
            logits = np.zeros(ids.shape + (5,), dtype=np.float32)
            logits[..., 0] = 1.0
            for word, label in (("alice", 1), ("bob", 1), ("london", 3)):
                logits[ids == self.id[word], label] = 5.0
            return {"logits": logits}
        share = ((ids == self.id["paris"]) & (mask == 1)).sum(1) / mask.sum(1)
        return {"logits": np.stack([np.zeros_like(share), 10 * share, -np.ones_like(share)], 1).astype(np.float32)}


def runtime(tiny_artifact, task: str, long: str = "truncate", **kw) -> Runtime:
    art = tiny_artifact(task if task != "embed" else "classify")
    manifest = json.loads((art / "bertrt.json").read_text()) | {"task": task, "outputs": TASK_OUTPUTS[task],
                                                                 "labels": NER_LABELS if task == "ner" else
                                                                 ["business", "sport", "tech"]}
    return Runtime.from_parts(manifest, encoder_for(manifest, art / "tokenizer.json", long),
                              KeywordSession(task, art / "tokenizer.json"), **kw)


def test_qa_answer_in_the_last_of_several_windows_is_found_exactly(tiny_artifact):
    rt = runtime(tiny_artifact, "qa")
    filler = "the old town is next to the cathedral . "
    context = "london " + filler * 18 + "the museum is in paris near the river ."
    item = {"question": "where is the museum ?", "context": context}
    (enc,) = rt.encode([item])
    assert len(enc) > 3 * rt.max_length and len(enc.windows) >= 4  # > 3x the window: several windows
    ctx_last = [t for t, s in enumerate(enc.windows[-1].sequence_ids) if s == 1]
    assert any(enc.windows[-1].offsets[t] == (context.index("paris"), context.index("paris") + 5) for t in ctx_last)
    out = rt.predict(item)
    start = context.index("paris")
    assert out == {"answer": "paris", "start": start, "end": start + 5, "score": out["score"]}
    assert "truncated" not in out and 0 < out["score"] <= 1
    # 'london' in the first window scores lower (5 + 5 < 9 + 9): the best span over all windows wins
    assert rt.predict({"question": "where ?", "context": context[:200]})["answer"] == "london"


def test_ner_entities_in_every_window_with_exact_offsets_and_no_duplicates(tiny_artifact):
    rt = runtime(tiny_artifact, "ner")
    words = []
    for i in range(150):  # a name every few words: many fall where windows overlap
        words.append(["alice", "met", "bob", "in", "london", "today", "and", "the", "team", "won"][i % 10])
    text = " ".join(words)
    (enc,) = rt.encode([text])
    assert len(enc.windows) >= 3 and not enc.truncated
    overlap = set()
    for a, b in zip(enc.windows, enc.windows[1:]):
        overlap |= {o for o in a.offsets if o != (0, 0)} & {o for o in b.offsets if o != (0, 0)}
    out = rt.predict(text)
    got = [(e["type"], e["start"], e["end"], e["text"]) for e in out["entities"]]
    want, pos = [], 0
    for w in words:
        if w in ("alice", "bob", "london"):
            want.append(("LOC" if w == "london" else "PER", pos, pos + len(w), w))
        pos += len(w) + 1
    assert got == want  # every window's entities, in order, each once
    assert len({(s, e) for _, s, e, _ in got} & overlap) >= 2  # some of them sat in two windows
    assert "truncated" not in out


def test_classify_truncates_and_says_so_or_pools_chunks(tiny_artifact):
    head = "paris " * 10
    text = head + "the team won the match . " * 40  # 'paris' only in the first window
    cut = runtime(tiny_artifact, "classify")
    pooled = runtime(tiny_artifact, "classify", long="chunks")
    a, b = cut.predict(text), pooled.predict(text)
    assert a["truncated"] is True and "truncated" not in b
    (enc,) = pooled.encode([text])
    assert len(enc.windows) >= 3
    # chunks: the mean of each window's probabilities, computed here from the same fake logits
    session = pooled.session
    probs = []
    for w in enc.windows:
        z = session.run({"input_ids": np.array([w.ids]), "token_type_ids": np.array([w.type_ids]),
                         "attention_mask": np.ones((1, len(w)), dtype=np.int64)})["logits"][0].astype(np.float64)
        probs.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
    np.testing.assert_allclose(list(b["scores"].values()), np.mean(probs, 0), atol=1e-12, rtol=0)
    assert b["scores"]["sport"] < a["scores"]["sport"]  # the later windows hold no 'paris'
    assert pooled.predict("paris is nice") == cut.predict("paris is nice")  # short texts: one window either way


def test_long_mode_is_checked(tiny_artifact):
    from bertrt.errors import InputError

    with pytest.raises(InputError, match="long must be one of truncate, chunks"):
        TextEncoder(tiny_artifact("classify") / "tokenizer.json", "classify", 64, long="pool")
