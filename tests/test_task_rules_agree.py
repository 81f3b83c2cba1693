"""One set of task rules: for the same logits, checkpoint evaluation, the export gate, the bench gate and
``Runtime`` reach identical answers, decisions and metrics (classify, sentence pairs, multi-label with per-label
thresholds, relation extraction, NER, QA over windows).

The model is a fake with fixed random tables: a row's logits depend only on its own real tokens, so every path
that feeds it the same rows gets the same numbers, whatever the batching and padding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bertrt.artifact import TASK_OUTPUTS  # noqa: E402
from bertrt.bench import gate as G  # noqa: E402
from bertrt.converters import evaldata, parity  # noqa: E402
from bertrt.data.tasks import ClassifyExample, NerExample, QaExample, RelationExample, inputs_and_gold  # noqa: E402
from bertrt.runtime import Runtime  # noqa: E402
from bertrt.tasks import metrics as M  # noqa: E402
from bertrt.tasks.decode import decisions  # noqa: E402
from bertrt.tasks.encode import TextEncoder  # noqa: E402
from bertrt.train.evaluate import predict_examples  # noqa: E402

from .test_export_fixtures import tiny_tokenizer  # noqa: E402

MAX_LENGTH = 32
THRESHOLDS = [0.4, 0.5, 0.6]  # multilabel: per label, as tuned at fine-tuning and stored in the artifact
LABELS = {"classify": ["business", "sport", "tech"], "multilabel": ["food", "mood", "sport"],
          "relation": ["located_in", "no_relation", "works_for"], "ner": ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"],
          "qa": []}
WORDS = ("the meeting is at noon . rain is expected across the north of the country by thursday evening . the "
         "central bank left interest rates unchanged citing slower growth in the second quarter").split()


class FakeModel:
    """Fixed random tables; classify: the mean of the row's token vectors; ner / qa: one value per token."""

    def __init__(self, task: str, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.task = task
        self.table = rng.normal(size=(vocab, max(len(LABELS[task]), 2))).astype(np.float32)  # (V, L)
        self.device, self.providers, self.input_names = "cpu", ["Fake"], ["input_ids", "attention_mask",
                                                                          "token_type_ids"]

    def run(self, feeds: dict) -> dict:
        ids, mask = feeds["input_ids"], feeds["attention_mask"].astype(np.float32)  # (B, T)
        per_token = self.table[ids] * mask[..., None]  # (B, T, L)
        if self.task in ("classify", "multilabel", "relation"):
            return {"logits": per_token.sum(1) / mask.sum(1, keepdims=True)}  # (B, L)
        if self.task == "ner":
            return {"logits": per_token}
        return {"start_logits": per_token[..., 0], "end_logits": per_token[..., 1]}  # (B, T) each


class TorchFake(torch.nn.Module):
    """The same fake behind PyTorch's calling convention, for checkpoint evaluation and the bench reference."""

    def __init__(self, fake: FakeModel, pad_id: int):
        super().__init__()
        self.fake, self.anchor = fake, torch.nn.Parameter(torch.zeros(1))  # a parameter: evaluation reads its device
        self.config = SimpleNamespace(pad_token_id=pad_id)

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.fake.run({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                             "token_type_ids": token_type_ids.numpy()})
        return {k: torch.from_numpy(v) for k, v in out.items()}


def _examples(case: str, n: int = 24):
    rng = np.random.default_rng(1)

    def text(k):
        return " ".join(str(w) for w in rng.choice(WORDS, size=k))

    if case == "relation":  # two disjoint word spans of each text
        out = []
        for _ in range(n):
            body = text(int(rng.integers(3, 40)))
            from bertrt.tasks.encode import word_spans

            spans = word_spans(body)
            i = int(rng.integers(0, len(spans) - 1))
            j = i + int(rng.integers(1, min(6, len(spans) - i)))  # near enough for one window
            head, tail = (spans[i], spans[j]) if rng.random() < 0.5 else (spans[j], spans[i])
            out.append(RelationExample(body, head, tail, str(rng.choice(LABELS[case]))))
        return out
    if case == "multilabel":
        return [ClassifyExample(text(int(rng.integers(2, 40))), None,
                                labels=[x for x in LABELS[case] if rng.random() < 0.4]) for _ in range(n)]
    if case in ("classify", "pair"):
        return [ClassifyExample(text(int(rng.integers(2, 40))), text(5) if case == "pair" else None,
                                str(rng.choice(LABELS["classify"]))) for _ in range(n)]
    if case == "ner":  # punctuation-attached words: a word is what carries a tag, in every path
        out = []
        for _ in range(n):
            tokens = [str(w) for w in rng.choice(WORDS + ["@bank's", "north-east", "(noon)", "#growth"],
                                                 size=int(rng.integers(3, 45)))]
            tags, inside = [], None
            for _t in tokens:
                kind = rng.choice(["O", "O", "ORG", "PER"])
                tags.append("O" if kind == "O" else ("I-" if inside == kind and rng.random() < 0.5 else "B-") + kind)
                inside = None if kind == "O" else kind
            out.append(NerExample(tokens, tags))
        return out
    out = []
    for i in range(n):  # contexts up to 3x the window: answers are found across windows
        context = text(int(rng.integers(5, 90)))
        words = context.split()
        a = int(rng.integers(0, len(words)))
        answer = " ".join(words[a:a + int(rng.integers(1, 3))])
        out.append(QaExample(str(i), text(4), context, [(answer, context.index(answer))]))
    return out


@pytest.mark.parametrize("case", ["classify", "pair", "multilabel", "relation", "ner", "qa"])
def test_every_path_reaches_the_same_answers_and_metrics(case):
    task = "classify" if case == "pair" else case
    tok, labels = tiny_tokenizer(), LABELS[task]
    if task == "relation":  # the entity markers join the vocabulary, as fine-tuning adds them
        from tokenizers import Tokenizer

        from bertrt.tasks.encode import RELATION_MARKERS

        tok = Tokenizer.from_str(tok.to_str())
        tok.add_special_tokens(list(RELATION_MARKERS))
    fake = FakeModel(task, tok.get_vocab_size(), seed=len(case))
    examples = _examples(case)
    pairs, gold = inputs_and_gold(task, examples)

    # 1. Runtime, as predict / serve run it (inputs as users send them)
    options = {"thresholds": THRESHOLDS} if task == "multilabel" else None
    manifest = {"task": task, "labels": labels, "max_length": MAX_LENGTH, "outputs": TASK_OUTPUTS[task],
                **(options or {})}
    encoder = TextEncoder(tok, task, MAX_LENGTH)
    rt = Runtime.from_parts(manifest, encoder, fake, max_batch_tokens=4 * MAX_LENGTH, max_batch_size=4)
    items = [{"question": a, "context": b} if task == "qa" else
             {"text": a, "head": list(b[0]), "tail": list(b[1])} if task == "relation" else
             ({"text": a, "text_pair": b} if b else a) for a, b in pairs]
    runtime_answers = rt.predict(items)
    encs = encoder.encode(pairs)
    if task in ("ner", "qa"):
        assert sum(len(e.windows) > 1 for e in encs) >= 5  # long inputs: several windows, merged by the rules

    # 2. checkpoint evaluation (PyTorch calling convention, its own batch size)
    ckpt_answers, ckpt_encs, ckpt_gold = predict_examples(TorchFake(fake, encoder.pad_id), tok, examples, task,
                                                          labels, MAX_LENGTH, batch_size=7, options=options)
    assert ckpt_answers == runtime_answers and ckpt_gold == gold

    # 3. the export gate (rows in file order, padded to the longest of each batch of 5)
    gate_examples = [evaldata.Example(words=e.tokens, tags=e.tags) if task == "ner" else
                     evaldata.Example(text=a, spans=b, label=g) if task == "relation" else
                     evaldata.Example(text=a, text_pair=b, label=g if task in ("classify", "multilabel") else None,
                                      answers=g if task == "qa" else None)
                     for e, (a, b), g in zip(examples, pairs, gold)]
    batches = evaldata.encode(gate_examples, tok, task, MAX_LENGTH, 5, encoder.pad_id, labels, options=options)
    outs = [fake.run(b.feeds) for b in batches]
    kept, gate_answers = parity.answers(task, outs, batches)
    assert kept == list(range(len(examples))) and gate_answers == runtime_answers
    assert parity.agreement(task, outs, outs, batches) == 1.0

    # decisions and metrics: one rule, one number
    report = M.report(task, runtime_answers, gold, labels, encs)
    name, value = M.main_metric(report)
    assert M.report(task, ckpt_answers, ckpt_gold, labels, ckpt_encs) == report
    assert parity.task_metric(task, outs, batches) == value
    assert [decisions(task, a, e) for a, e in zip(gate_answers, batches[0].data.encs)] == \
        [decisions(task, a, e) for a, e in zip(runtime_answers, encs)]
    assert 0.0 < value < 1.0, (name, value)  # a fake model: neither all right nor all wrong, so equality means much

    # 4. the bench gate: the artifact's answers against the reference's, scored by its own metric
    result = G.check(runtime_answers, ckpt_answers, G.Workload("w", task, items, gold), G.Gate(1.0, 0.5), encs)
    assert result["gate"]["passed"] and result["agreement"] == 1.0 and result["drop"] == 0.0
    assert result["score"] == round(value, 6) and result["metric"] == G.METRICS[task]
