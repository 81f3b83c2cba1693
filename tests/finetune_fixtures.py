"""Synthetic, trivially learnable task data and a tiny random BERT checkpoint for the fine-tuning tests."""

import json
import random

import pytest
import torch

from bertrt.checkpoint import save_checkpoint
from bertrt.model import Bert, BertConfig
from bertrt.tokenizer import SPECIAL_TOKENS, load_tokenizer

FILLER = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota", "lambda", "rho"]
POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]
COLORS = ["red", "blue", "green"]
PEOPLE, CITIES = ["john", "mary", "paul"], ["paris", "rome"]
EXTRA = ["new", "york", "what", "color", "?", ".", "topic", "sport", "food", "ball", "goal", "team", "bread", "soup",
         "rice", "is"]
VOCAB = SPECIAL_TOKENS + FILLER + POSITIVE + NEGATIVE + COLORS + PEOPLE + CITIES + EXTRA


def make_base(path, seed=0, task="base", layers=2, hidden=32):
    """A tiny random BERT checkpoint with a word-level vocabulary (every synthetic word is one token)."""
    vocab = path.parent / f"{path.name}-vocab.txt"
    vocab.write_text("".join(w + "\n" for w in VOCAB))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_heads=[2] * layers, ffn_sizes=[2 * hidden] * layers,
                     head_size=hidden // 2, max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0,
                     task=task)
    save_checkpoint(Bert(cfg), path, tokenizer=load_tokenizer(vocab))
    return path


def cli(monkeypatch, capsys, *args):
    """Run ``bertrt ARGS`` in-process: (exit status, stdout, stderr)."""
    import sys

    from bertrt.cli import main

    monkeypatch.setattr(sys, "argv", ["bertrt", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def filler(rng, n):
    return [rng.choice(FILLER) for _ in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def classify_rows(n, seed):
    """Sentiment by keyword: one positive or negative word among filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = filler(rng, rng.randint(3, 8))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def pair_rows(n, seed):
    """The sentiment of the second text decides; the first holds a random distractor sentiment word. A model blind
    to segments sees one word of each polarity half of the time, so it cannot pass 75%."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        t1, t2 = filler(rng, rng.randint(2, 5)), filler(rng, rng.randint(2, 5))
        t1.insert(rng.randrange(len(t1) + 1), rng.choice(POSITIVE + NEGATIVE))
        t2.insert(rng.randrange(len(t2) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(t1), "text_pair": " ".join(t2), "label": label})
    return rows


def ner_rows(n, seed, punct=False):
    """People (one word) and cities (one word, or 'new york') among filler. ``punct``: as in social-media text,
    some words carry punctuation the tokenizer splits off ('@john', "mary's", '#alpha'; the marks are [UNK] tokens
    of the word-level vocabulary); the whitespace word is what the tag belongs to."""
    rng = random.Random(seed)

    def attach(word, person):
        if not punct or rng.random() < 0.5:
            return word
        return rng.choice(["@" + word, word + "'s"] if person else ["#" + word, word + "'s"])

    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 9)):
            r = rng.random()
            if r < 0.2:
                tokens.append(attach(rng.choice(PEOPLE), True)), tags.append("B-PER")
            elif r < 0.3:
                tokens += ["new", "york"]
                tags += ["B-LOC", "I-LOC"]
            elif r < 0.4:
                tokens.append(rng.choice(CITIES)), tags.append("B-LOC")
            else:
                tokens.append(attach(rng.choice(FILLER + ["new"]), False)), tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def squad(n, seed, long_every=0):
    """'what color ?' -> the one color word of the context (some contexts longer than one window)."""
    rng = random.Random(seed)
    qas_by_para = []
    for i in range(n):
        length = 40 if long_every and i % long_every == 0 else rng.randint(4, 12)
        words = filler(rng, length)
        pos = rng.randrange(len(words) + 1)
        words.insert(pos, rng.choice(COLORS))
        context = " ".join(words)
        start = len(" ".join(words[:pos])) + (1 if pos else 0)
        qas_by_para.append({"context": context, "qas": [{"id": f"q{i}", "question": "what color ?",
                                                           "answers": [{"text": words[pos], "answer_start": start}]}]})
    return json.dumps({"version": "1.1", "data": [{"title": "synthetic", "paragraphs": qas_by_para}]})


def train_tiny(d, task, rows, epochs, lr=2e-3):
    """A fresh tiny base fine-tuned for ``task`` on ``rows(600, 1)`` with ``rows(80, 2)`` held out for evaluation:
    {"dir", "base", "eval", "result"}."""
    from bertrt.train.finetune import FinetuneConfig, finetune

    base = make_base(d / "base")
    train, ev = write_jsonl(d / "train.jsonl", rows(600, 1)), write_jsonl(d / "eval.jsonl", rows(80, 2))
    r = finetune(train, d / "ckpt", base, FinetuneConfig(task, max_length=32, lr=lr, epochs=epochs, progress=False),
                 eval_path=ev)
    return {"dir": d, "base": base, "eval": ev, "result": r}


def export_tiny(trained: dict) -> dict:
    """Export ``train_tiny``'s checkpoint to its dir/art (fp32, unfused) gated on its eval data; the manifest."""
    from bertrt.converters.config import OptimizeConfig, ParityConfig
    from bertrt.converters.pipeline import export_artifact

    pytest.importorskip("onnxruntime")
    d = trained["dir"]
    return export_artifact(d / "ckpt", d / "art", optimize=OptimizeConfig(enabled=False),
                           parity=ParityConfig(eval_path=str(trained["eval"])), log=lambda _: None, progress=False)


def refuses_bad_eval_row(d, task, rows, bad, message):
    """Fine-tuning with one bad row in --eval stops with one DataError matching ``message``, writing nothing."""
    from bertrt.errors import DataError
    from bertrt.train.finetune import FinetuneConfig, finetune

    base = make_base(d / "base")
    train = write_jsonl(d / "train.jsonl", rows(40, 1))
    ev = write_jsonl(d / "eval.jsonl", rows(5, 2) + [bad])
    with pytest.raises(DataError, match=message):
        finetune(train, d / "out", base, FinetuneConfig(task, max_length=32, progress=False), eval_path=ev)
    assert not (d / "out").exists()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one intra-op thread is several times faster than oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
