"""A tiny random BERT learns a trivially learnable synthetic task for each of classify, pair, ner and qa.

Each test measures the untrained model on the same eval data first: the floor must be out of its reach.
"""

import json

import pytest

from bertrt.checkpoint import load_checkpoint
from bertrt.data.tasks import read_task
from bertrt.tokenizer import load_tokenizer
from bertrt.train.evaluate import evaluate, load_task_model
from bertrt.train.finetune import FinetuneConfig, finetune
from bertrt.train.peft import PeftConfig, is_peft_dir
from .finetune_fixtures import one_thread, classify_rows, make_base, ner_rows, pair_rows, squad, write_jsonl  # noqa: F401  (one_thread: autouse)




@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("ft") / "base")


def untrained_score(base, task, data, labels, metric, **kw):
    model = load_checkpoint(base, task=task, labels=labels, init_missing_head=True)
    return evaluate(model, load_tokenizer(base), read_task(data, task), task, labels, **kw)[metric]


def run(base, tmp_path, task, train, ev, **kw):
    cfg = FinetuneConfig(task, batch_size=16, max_length=kw.pop("max_length", 32), lr=kw.pop("lr", 2e-3),
                         epochs=kw.pop("epochs", 4), progress=False, **kw)
    return finetune(train, tmp_path / "out", base, cfg, eval_path=ev)


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_classify_learns(base, tmp_path, kind):
    rows = classify_rows if kind == "single" else pair_rows
    train = write_jsonl(tmp_path / "train.jsonl", rows(240, 1))
    ev = write_jsonl(tmp_path / "eval.jsonl", rows(80, 2))
    before = untrained_score(base, "classify", ev, ["neg", "pos"], "accuracy", max_length=32)
    r = run(base, tmp_path, "classify", train, ev, epochs=5)
    assert before < 0.75 and r.best["accuracy"] >= 0.95, (before, r.evals)
    assert r.labels == ["neg", "pos"]
    # what was written is what was selected: reloading the output gives the best evaluation again
    model, tok = load_task_model(tmp_path / "out")
    again = evaluate(model, tok, read_task(ev, "classify"), "classify", r.labels, max_length=32)
    assert again["accuracy"] == r.best["accuracy"]
    info = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert info["labels"] == ["neg", "pos"] and info["method"] == "full"
    assert (tmp_path / "out" / "run" / "metrics.jsonl").is_file()


def test_ner_learns(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(200, 1))
    ev = write_jsonl(tmp_path / "eval.jsonl", ner_rows(60, 2))
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    before = untrained_score(base, "ner", ev, labels, "f1", max_length=32)
    r = run(base, tmp_path, "ner", train, ev, epochs=5)
    assert r.labels == labels
    assert before < 0.3 and r.best["f1"] >= 0.9, (before, r.evals)


def test_qa_learns_across_windows(base, tmp_path):
    (tmp_path / "train.json").write_text(squad(200, 1, long_every=4))
    (tmp_path / "eval.json").write_text(squad(60, 2, long_every=4))  # every 4th context needs 2+ windows
    ev = tmp_path / "eval.json"
    before = untrained_score(base, "qa", ev, None, "exact_match", max_length=24, doc_stride=6)
    r = run(base, tmp_path, "qa", tmp_path / "train.json", ev, max_length=24, doc_stride=6, epochs=3)
    assert before < 0.3 and r.best["exact_match"] >= 0.9, (before, r.evals)


@pytest.fixture(scope="module")
def warm_base(base, tmp_path_factory):
    """A base that has learned something, as PEFT's bases have: the tiny model fully fine-tuned on the pair task."""
    d = tmp_path_factory.mktemp("warm")
    train = write_jsonl(d / "train.jsonl", pair_rows(240, 7))
    finetune(train, d / "out", base, FinetuneConfig("classify", batch_size=16, max_length=32, lr=2e-3, epochs=5,
                                                    progress=False))
    return d / "out"


def renamed(rows):  # other label names: the warm base's head does not carry over, a fresh one is trained
    return [{**r, "label": {"pos": "positive", "neg": "negative"}[r["label"]]} for r in rows]


@pytest.mark.parametrize("method,lr", [("lora", 5e-3), ("adalora", 5e-3), ("adapter", 3e-3), ("prefix", 1e-2)])
def test_peft_learns_and_saves_only_the_adapter(warm_base, tmp_path, method, lr):
    train = write_jsonl(tmp_path / "train.jsonl", renamed(classify_rows(160, 1)))
    ev = write_jsonl(tmp_path / "eval.jsonl", renamed(classify_rows(60, 2)))
    before = untrained_score(warm_base, "classify", ev, ["negative", "positive"], "accuracy", max_length=32)
    r = run(warm_base, tmp_path, "classify", train, ev, epochs=6, lr=lr, new_head=True,
            peft=PeftConfig(method, r=4, adapter_size=8, prefix_length=4))
    assert before < 0.7 and r.best["accuracy"] >= 0.9, (before, r.evals)
    assert r.trainable_parameters < 0.3 * r.total_parameters
    assert is_peft_dir(tmp_path / "out") and not (tmp_path / "out" / "model.safetensors").exists()
    model, tok = load_task_model(tmp_path / "out")
    again = evaluate(model, tok, read_task(ev, "classify"), "classify", r.labels, max_length=32)
    assert again["accuracy"] == r.best["accuracy"]
