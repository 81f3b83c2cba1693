"""Continual fine-tuning: head growth, the replay memory, the L2-SP/EWC anchors, and the before/after report."""

import json
import math
import random

import pytest
import torch

from bertrt.checkpoint import load_checkpoint
from bertrt.data import tasks as T
from bertrt.tokenizer import load_tokenizer
from bertrt.train.continual import Anchor, continual_labels, fisher_diagonal, grow_head, replay_sample
from bertrt.train.finetune import FinetuneConfig, finetune
from bertrt.train.objectives import make_loss_fn

from .finetune_fixtures import one_thread, FILLER, classify_rows, make_base, write_jsonl  # noqa: F401  (one_thread: autouse)

TOPICS = {"sport": ["ball", "goal", "team"], "food": ["bread", "soup", "rice"]}


def topic_rows(n, seed):
    """Stage 2's classes, new to the stage-1 model: a sport or a food word among filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(sorted(TOPICS))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def cfg(**kw):
    return FinetuneConfig("classify", batch_size=16, max_length=32, progress=False,
                          **{"lr": 2e-3, "epochs": 3, **kw})


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A tiny model fine-tuned on sentiment (neg/pos): the previous model of every test here."""
    d = tmp_path_factory.mktemp("stage1")
    base = make_base(d / "base")
    old_train = write_jsonl(d / "old_train.jsonl", classify_rows(160, 1))
    old_test = write_jsonl(d / "old_test.jsonl", classify_rows(60, 2))
    finetune(old_train, d / "prev", base, cfg(epochs=5))
    return d / "prev", old_train, old_test, d


def test_head_growth_keeps_old_rows_bit_identical_at_step_0(stage1):
    prev_dir = stage1[0]
    prev = load_checkpoint(prev_dir)
    labels = continual_labels(prev.config.labels, ["sport", "food", "pos"])
    assert labels == ["neg", "pos", "food", "sport"]
    torch.manual_seed(0)
    grown = load_checkpoint(prev_dir, task="classify", labels=labels, init_missing_head=True)
    assert grow_head(grown, prev.state_dict(), prev.config.labels) == ["classifier.weight", "classifier.bias"]
    assert torch.equal(grown.classifier.weight[:2], prev.classifier.weight)
    assert torch.equal(grown.classifier.bias[:2], prev.classifier.bias)
    assert grown.classifier.weight[2:].abs().max() > 0  # new rows start fresh, not zero
    tok = load_tokenizer(prev_dir)
    b = T.collate(T.encode_classify(T.read_task(stage1[2], "classify"), tok, prev.config.labels, 32))
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert torch.equal(grown(**inputs)["logits"][:, :2], prev(**inputs)["logits"])  # old logits unchanged


def test_replay_memory_is_exactly_the_ratio(stage1, tmp_path):
    picked = replay_sample(160, 0.1, seed=3)
    assert len(picked) == 16 and len(set(picked)) == 16 and picked == replay_sample(160, 0.1, seed=3)
    assert picked != replay_sample(160, 0.1, seed=4) and len(replay_sample(7, 0.5, 0)) == 4  # round(3.5) = 4
    prev_dir, old_train, _, _ = stage1
    new = write_jsonl(tmp_path / "new.jsonl", topic_rows(48, 5))
    r = finetune(new, tmp_path / "out", prev_dir, cfg(epochs=2, replay_ratio=0.1, seed=3), replay_path=old_train)
    assert r.continual["replayed"] == 16 and r.continual["old_examples"] == 160
    assert r.steps == 2 * math.ceil((48 + 16) / 16)  # every epoch holds all new examples plus the whole memory
    assert r.labels == ["neg", "pos", "food", "sport"]
    r = finetune(new, tmp_path / "out3", prev_dir, cfg(epochs=1, replay_ratio=0.1, replay_repeat=3, seed=3),
                 replay_path=old_train)
    assert r.continual["replayed"] == 16 and r.steps == math.ceil((48 + 3 * 16) / 16)  # the memory 3 times an epoch


def test_anchor_penalty_is_zero_at_the_anchor_and_its_gradient_matches_finite_differences(stage1):
    prev_dir, old_train, _, _ = stage1
    prev = load_checkpoint(prev_dir)
    tok = load_tokenizer(prev_dir)
    feats = T.encode_classify(T.read_task(old_train, "classify")[:24], tok, prev.config.labels, 32)
    fisher = fisher_diagonal(prev, [T.collate([f]) for f in feats], make_loss_fn("classify"))
    assert sum(float(f.sum()) for f in fisher.values()) / sum(f.numel() for f in fisher.values()) == \
        pytest.approx(1.0, rel=1e-5)  # scaled to mean 1
    labels = ["neg", "pos", "food", "sport"]
    torch.manual_seed(0)
    model = load_checkpoint(prev_dir, task="classify", labels=labels, init_missing_head=True).double()
    grow_head(model, prev.state_dict(), prev.config.labels)
    rows = torch.tensor([0, 1])
    grown = {"classifier.weight": rows, "classifier.bias": rows}
    for kind, f in (("l2sp", None), ("ewc", {k: v.double() for k, v in fisher.items()})):
        anchor = Anchor.from_model(kind, 3.0, model, model.fresh_weights, grown, f)
        assert float(anchor.penalty(model).detach()) == 0.0  # at the anchor
        assert anchor.add_gradient(model) == 0.0 and all(float(p.grad.abs().max()) == 0 for p in model.parameters())
        moved = model.__class__(model.config).double()
        moved.load_state_dict(model.state_dict())
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2)
        value = anchor.add_gradient(moved)
        assert value == pytest.approx(float(anchor.penalty(moved).detach()), rel=1e-9) and value > 0
        params = dict(moved.named_parameters())
        probes = [("bert.layers.0.attention.query.weight", (1, 2)), ("classifier.weight", (1, 5)),
                  ("classifier.bias", (0,)), ("classifier.weight", (3, 4)), ("bert.embeddings.word_embeddings.weight",
                                                                             (7, 3))]
        for name, idx in probes:
            p, h = params[name], 1e-3  # the penalty is quadratic: central differences are exact up to round-off
            with torch.no_grad():
                p[idx] += h
                up = float(anchor.penalty(moved).detach())
                p[idx] -= 2 * h
                down = float(anchor.penalty(moved).detach())
                p[idx] += h
            fd = (up - down) / (2 * h)
            assert float(p.grad[idx]) == pytest.approx(fd, rel=1e-7, abs=1e-12), (kind, name, idx)
        assert float(params["classifier.weight"].grad[2:].abs().max()) == 0.0  # new labels' rows are free


def test_eval_old_reports_forgetting_beside_the_gain(stage1, tmp_path, monkeypatch, capsys):
    import sys

    from bertrt.cli import main

    prev_dir, old_train, old_test, _ = stage1
    new = write_jsonl(tmp_path / "new.jsonl", topic_rows(96, 5))
    new_test = write_jsonl(tmp_path / "new_test.jsonl", topic_rows(40, 6))
    monkeypatch.setattr(sys, "argv", ["bertrt", "finetune", str(new), "--task", "classify", "--from", str(prev_dir),
                                      "-o", str(tmp_path / "out"), "--eval", str(new_test), "--eval-old",
                                      str(old_test), "--anchor", "ewc", "--anchor-weight", "0.5", "--replay",
                                      str(old_train), "--replay-ratio", "0.1", "--epochs", "15", "--batch-size", "16",
                                      "--max-length", "32", "--lr", "5e-3"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code in (0, None)
    c = json.loads((tmp_path / "out" / "finetune.json").read_text())["continual"]
    assert c["old"]["before"] >= 0.9 and c["new"]["before"] < 0.8  # the previous model knows sentiment, not topics
    assert c["old"]["forgetting"] == pytest.approx(c["old"]["before"] - c["old"]["after"], abs=1e-12)
    assert c["new"]["gain"] == pytest.approx(c["new"]["after"] - c["new"]["before"], abs=1e-12)
    assert c["new"]["after"] >= 0.9 and c["labels_kept"] == 2 and c["labels_added"] == 2
    assert "old task: accuracy" in out and "forgetting" in out and "new task: accuracy" in out
    hist = [json.loads(l) for l in (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["anchor"] == 0.0  # the first step starts at the anchor


def test_ewc_without_old_data_is_refused_before_anything_is_written(stage1, tmp_path):
    from bertrt.errors import BertrtError

    new = write_jsonl(tmp_path / "new.jsonl", topic_rows(16, 5))
    with pytest.raises(BertrtError, match="--replay OLD"):
        finetune(new, tmp_path / "out", stage1[0], cfg(anchor="ewc"))
    assert not (tmp_path / "out").exists()
