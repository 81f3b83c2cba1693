"""Runtime: batch invariance on real ONNX artifacts, bucketing against a fake session, devices, torch-freedom."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bertrt.errors import DeviceError, InputError
from bertrt.runtime import Runtime
from bertrt.tasks.encode import PAD_MULTIPLE, PREFIX_CHARS_PER_TOKEN, TextEncoder, padded_length, plan_batches

TEXTS = [
    "hello",
    "Alice met Bob in Paris on Monday to talk about the new bank in London.",
    "",
    "北京 上海 中文 测试 😀 🚀",
    "A café in Zürich serves crème brûlée; cafe\u0301 with a combining accent.",
    "the quick brown fox " * 40,  # longer than max_length (64 tokens): truncated
    "Markets fell",
    "The team won the final match after a late goal by their captain.",
]
QA = [
    {"question": "Who wrote the report?", "context": "The report was written by the finance committee last year."},
    {"question": "Where is the museum?", "context": "The museum is in the old town, next to the cathedral. " * 10},
    {"question": "empty", "context": ""},
    {"question": "où?", "context": "北京 上海 cafe\u0301 😀 in the old town"},
    {"question": "the museum " * 50, "context": "short context"},  # the question alone is longer than max_length
]


def assert_same(a: dict, b: dict, tol: float = 1e-5):
    """Identical labels, spans, texts and flags; scores and vectors within ``tol``."""
    assert a.keys() == b.keys()
    for k in a:
        if k == "entities":
            assert len(a[k]) == len(b[k])
            for x, y in zip(a[k], b[k]):
                assert_same(x, y, tol)
        elif k == "embedding":
            np.testing.assert_allclose(a[k], b[k], atol=tol, rtol=0)
        elif k == "scores":
            assert a[k].keys() == b[k].keys()
            np.testing.assert_allclose(list(a[k].values()), list(b[k].values()), atol=tol, rtol=0)
        elif k == "score":
            assert abs(a[k] - b[k]) <= tol
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("task", ["classify", "ner", "qa", "embed"])
def test_batch_invariance(tiny_artifact, task):
    inputs = QA if task == "qa" else TEXTS + ([{"text": "Markets fell", "text_pair": "sharply today"}]
                                              if task == "classify" else [])
    rt = Runtime(tiny_artifact(task), device="cpu", threads=1)
    alone = [rt.predict(x) for x in inputs]
    together = rt.predict(inputs)
    small = Runtime(tiny_artifact(task), device="cpu", threads=1, max_batch_tokens=64, max_batch_size=3)
    bucketed = small.predict(inputs[::-1])[::-1]  # several buckets, another order
    for a, b, c in zip(alone, together, bucketed):
        assert_same(a, b)
        assert_same(a, c)
    # truncation is flagged on exactly the inputs that were cut: ner texts and qa contexts are windowed instead
    long_ones = {"classify": {5}, "embed": {5}, "ner": set(), "qa": {4}}[task]
    assert {i for i, r in enumerate(together) if r.get("truncated")} == long_ones
    if task == "classify":
        assert set(together[0]) == {"label", "score", "scores"}
        assert abs(sum(together[0]["scores"].values()) - 1) < 1e-9
        assert len({r["label"] for r in together}) > 1  # the tiny model does not answer one label for all
    if task == "qa":
        assert together[2] == {"answer": "", "start": 0, "end": 0, "score": 0.0}
        for item, r in zip(QA, together):
            assert item["context"][r["start"]:r["end"]] == r["answer"]
    if task == "ner":
        assert sum(len(r["entities"]) for r in together) > 0
        for text, r in zip(inputs, together):
            for e in r["entities"]:
                assert text[e["start"]:e["end"]] == e["text"] and e["text"].strip() == e["text"]
    if task == "embed":
        assert len(together[0]["embedding"]) == 32


class FakeSession:
    """Stands in for ONNX Runtime: a row's logits depend only on its unpadded tokens, and every batch is recorded."""

    device, providers = "cpu", ["FakeProvider"]
    input_names = ["input_ids", "attention_mask", "token_type_ids"]

    def __init__(self):
        self.batches = []

    def run(self, feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        self.batches.append(ids.shape)
        total = (ids * mask).sum(1).astype(np.float64)  # (B,)
        count = mask.sum(1).astype(np.float64)
        return {"logits": np.stack([total / 100.0, count, -count], axis=1)}  # (B, 3)


def test_bucketing_with_fake_session(tiny_artifact):
    art = tiny_artifact("classify")
    manifest = json.loads((art / "bertrt.json").read_text())
    encoder = TextEncoder(art / "tokenizer.json", "classify", manifest["max_length"])
    session = FakeSession()
    rt = Runtime.from_parts(manifest, encoder, session, max_batch_tokens=128, max_batch_size=4)
    inputs = [("word " * n).strip() for n in [1, 40, 2, 30, 3, 60, 4, 5, 50, 6]]
    lengths = [len(e) for e in rt.encode(inputs)]
    results = rt.predict(inputs)
    # the fake's logits encode each row's token count: log(p_sport / p_tech) = 2 * count, so order is checked exactly
    counts = [int(round(np.log(r["scores"]["sport"] / r["scores"]["tech"]) / 2)) for r in results]
    assert counts == lengths
    assert results == [rt.predict(x) for x in inputs]  # and alone == inside a batch, exactly
    session.batches = session.batches[:len(session.batches) - len(inputs)]  # keep the batched run's shapes
    # every batch keeps within the budget, padding counted, lengths padded to the multiple
    for B, T in session.batches:
        assert B * T <= 128 and B <= 4 and (T % PAD_MULTIPLE == 0 or T == manifest["max_length"])
    assert sum(B for B, _ in session.batches) == len(inputs)
    # bucketing by length pads less than batching in arrival order would
    padded = sum(B * T for B, T in session.batches)
    in_order = sum(len(c) * padded_length(max(c), 64) for c in (lengths[i:i + 2] for i in range(0, 10, 2)))
    assert padded < in_order


def test_plan_batches_exact():
    # sorted by length, filled while rows x padded length (multiple of 8) <= 64
    assert plan_batches([5, 60, 3, 9, 17, 4], max_batch_tokens=64, max_batch_size=8, max_length=64) == \
        [[2, 5, 0, 3], [4], [1]]  # 4 x 16 = 64 fits; 17 pads to 24 and 5 x 24 does not
    assert plan_batches([3, 3, 3], max_batch_tokens=1000, max_batch_size=2, max_length=64) == [[0, 1], [2]]
    assert plan_batches([], 64, 8, 64) == []


def test_truncation_flag_at_the_boundary(tiny_artifact):
    rt = Runtime(tiny_artifact("embed"), device="cpu", threads=1)
    tok = rt.encoder._tok
    assert len(tok.encode("fox").ids) == 3  # [CLS] fox [SEP]: one token per word
    fits, over = rt.encode(["fox " * 62, "fox " * 63])
    assert (len(fits), fits.truncated) == (64, False)
    assert (len(over), over.truncated) == (64, True)


def test_prefix_tokenization_is_exact(tiny_artifact):
    """Long single texts are tokenized from a whitespace-cut prefix; every field must equal the full encoding."""
    path = tiny_artifact("ner") / "tokenizer.json"
    fast, full = TextEncoder(path, "classify", 16), TextEncoder(path, "classify", 16)
    full._prefix_chars = None
    assert fast._prefix_chars == 16 * PREFIX_CHARS_PER_TOKEN
    rng = np.random.default_rng(0)
    words = " ".join(TEXTS + [q["context"] for q in QA]).split()
    seps = [" ", "  ", "\t", "\n", " \u3000 "]
    texts = ["".join(str(rng.choice(words)) + str(rng.choice(seps)) for _ in range(int(rng.integers(1, 80))))
             for _ in range(300)]
    texts += ["a" + " " * 200 + "b c d " * 10,  # the prefix is mostly blank: too few tokens, retried longer
              "a " + " " * 2000 + "b c d " * 10,  # still too few after one retry: a second, then the whole text
              "x" * 400,  # no whitespace near the cut: the whole text
              "北京上海" * 60,  # CJK without spaces
              "fox " * 31 + "fox"]  # exactly at the character limit
    assert sum(len(t) > 16 * 8 for t in texts) > 150
    got, want = fast.encode([(t, None) for t in texts]), full.encode([(t, None) for t in texts])
    for t, a, b in zip(texts, got, want):
        (x,), (y,) = a.windows, b.windows
        assert (x.ids, x.type_ids, x.offsets, x.sequence_ids, a.truncated, a.source) == \
            (y.ids, y.type_ids, y.offsets, y.sequence_ids, b.truncated, b.source), t[:60]


def test_prefix_tokenization_only_for_bert_pre_tokenizers(tiny_artifact, tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_file(str(tiny_artifact("ner") / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.save(str(tmp_path / "tokenizer.json"))
    assert TextEncoder(tmp_path / "tokenizer.json", "ner", 16)._prefix_chars is None


def test_encoding_offsets_are_character_offsets(tiny_artifact):
    rt = Runtime(tiny_artifact("ner"), device="cpu", threads=1)
    text = "北京 😀 Zürich"
    e = rt.encode([text])[0].windows[0]
    pieces = [text[a:b] for (a, b), s in zip(e.offsets, e.sequence_ids) if s == 0]
    assert pieces[:3] == ["北", "京", "😀"]  # one code point each, in Python string indices
    assert "".join(pieces[3:]) == "Zürich"  # word pieces map back to the original (cased, accented) characters


def test_inputs_that_do_not_fit_the_task(tiny_artifact):
    qa = Runtime(tiny_artifact("qa"), device="cpu", threads=1)
    with pytest.raises(InputError, match="question"):
        qa.predict(["just a string"])
    ner = Runtime(tiny_artifact("ner"), device="cpu", threads=1)
    with pytest.raises(InputError, match="text_pair"):
        ner.predict([{"text": "a", "text_pair": "b"}])
    with pytest.raises(InputError, match="must be a string"):
        ner.predict([{"text": 3}])


def test_threads_are_set_explicitly(tiny_artifact):
    rt = Runtime(tiny_artifact("classify"), device="cpu", threads=1)
    opts = rt.session.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert rt.device == "cpu" and rt.session.providers == ["CPUExecutionProvider"]


def test_cuda_requested_but_not_available_is_an_error(tiny_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA onnxruntime; bench/gpu_check.sh covers it")
    with pytest.raises(DeviceError, match="bertrt\\[gpu\\]"):
        Runtime(tiny_artifact("classify"), device="cuda")
    assert Runtime(tiny_artifact("classify"), device="auto", threads=1).device == "cpu"
    with pytest.raises(DeviceError, match="unknown device"):
        Runtime(tiny_artifact("classify"), device="gpu")


def test_silent_cpu_fallback_is_refused(tiny_artifact, monkeypatch):
    """onnxruntime claims CUDA but the session ends up on the CPU (libraries missing): loading must fail."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA build would really start CUDA")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="could not start its CUDA provider"):
        Runtime(tiny_artifact("classify"), device="cuda")


def test_runtime_path_is_torch_free(tiny_artifact):
    code = f"""
import sys
import bertrt
from bertrt import Runtime
import bertrt.runtime.server, bertrt.runtime.batcher, bertrt.runtime.launch
for task, path in {{'classify': {str(tiny_artifact('classify'))!r}, 'qa': {str(tiny_artifact('qa'))!r}}}.items():
    rt = Runtime(path, device='cpu', threads=1)
    x = {{'question': 'who', 'context': 'Alice met Bob'}} if task == 'qa' else 'Alice met Bob'
    out = rt.predict([x, x])
    assert len(out) == 2, out
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx', 'ray'))
print(heavy)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
