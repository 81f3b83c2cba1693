"""Multi-label classification end to end: a tiny model learns a synthetic task an untrained one misses, per-label
thresholds tuned on --eval travel into the artifact, fp32 export parity, and bad data refused before anything is
written."""

import json
import random

import pytest

from bertrt.data.tasks import read_task
from bertrt.tasks.metrics import tune_thresholds
from bertrt.tokenizer import load_tokenizer
from bertrt.checkpoint import load_checkpoint
from bertrt.train.evaluate import evaluate, evaluate_dir

from .finetune_fixtures import (  # noqa: F401  (one_thread: autouse)
    FILLER, export_tiny, one_thread, refuses_bad_eval_row, train_tiny)

TOPICS = {"food": ["bread", "soup", "rice"], "sport": ["ball", "goal", "team"], "mood": ["good", "great", "fine"]}
LABELS = sorted(TOPICS)


def rows(n, seed):
    """Each text holds a keyword of every label that applies (none, one, two or all three) among filler."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        labels = sorted(name for name in LABELS if rng.random() < 0.4)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        for name in labels:
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[name]))
        out.append({"text": " ".join(words), "labels": labels})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("multilabel"), "multilabel", rows, epochs=12)


def test_a_tiny_model_learns_what_an_untrained_one_misses(trained):
    base, ev = trained["base"], trained["eval"]
    untrained = load_checkpoint(base, task="multilabel", labels=LABELS, init_missing_head=True)
    before = evaluate(untrained, load_tokenizer(base), read_task(ev, "multilabel"), "multilabel", LABELS,
                      max_length=32)
    r = trained["result"]
    assert before["f1"] < 0.6 and r.best["f1"] >= 0.9, (before["f1"], r.evals)
    assert r.labels == LABELS and r.best["task"] == "multilabel"
    info = json.loads((trained["dir"] / "ckpt" / "finetune.json").read_text())
    assert len(info["thresholds"]) == 3 and all(0.05 <= t <= 0.95 for t in info["thresholds"])
    again = evaluate_dir(trained["dir"] / "ckpt", ev, progress=False)  # thresholds read back from the checkpoint
    assert again["f1"] == r.best["f1"] and again["macro"]["f1"] >= 0.9


def test_export_parity_and_the_artifact_reports_what_the_checkpoint_does(trained):
    m = export_tiny(trained)
    from bertrt.runtime import Runtime
    from bertrt.runtime.evaluate import evaluate_artifact

    d, ev = trained["dir"], trained["eval"]
    final = m["parity"]["final"]
    assert m["task"] == "multilabel" and m["labels"] == LABELS
    assert m["thresholds"] == json.loads((d / "ckpt" / "finetune.json").read_text())["thresholds"]
    assert final["gates"]["tensor"]["value"] <= 1e-4 and final["agreement"] == 1.0
    assert final["gates"]["task"]["metric"] == "micro F1" and final["gates"]["task"]["reference"] >= 0.9
    ours = evaluate_dir(d / "ckpt", ev, progress=False)
    theirs = evaluate_artifact(d / "art", ev, device="cpu", progress=False)
    assert theirs["f1"] == ours["f1"] and theirs["macro"] == ours["macro"]
    out = Runtime(d / "art", device="cpu", threads=1).predict("alpha bread beta goal")
    assert set(out) == {"labels", "scores"} and out["labels"] == ["food", "sport"]
    assert set(out["scores"]) == set(LABELS) and all(0 <= v <= 1 for v in out["scores"].values())


def test_thresholds_are_tuned_per_label():
    scores = [{"a": 0.3, "b": 0.9}, {"a": 0.35, "b": 0.2}, {"a": 0.1, "b": 0.8}, {"a": 0.2, "b": 0.6}]
    gold = [["a", "b"], ["a"], ["b"], []]
    # a: positives at 0.3 and 0.35, negatives at 0.1 and 0.2 -> any threshold in (0.2, 0.3]; nearest 0.5 is 0.3
    # b: positives at 0.9 and 0.8, negatives 0.2 and 0.6 -> (0.6, 0.8]: 0.65; c never occurs -> 0.5
    assert tune_thresholds(scores, gold, ["a", "b", "c"]) == [0.3, 0.65, 0.5]


@pytest.mark.parametrize("bad,message", [
    ({"text": "alpha bread", "labels": ["food", "drink"]}, "'drink' do not occur in the training data"),
    ({"text": "alpha bread", "labels": "food"}, '"labels" must be a list of label names'),
    ({"text": "alpha bread", "labels": ["food", "food"]}, "occurs twice"),
    ({"text": "alpha bread"}, 'missing "labels"'),
])
def test_bad_eval_data_is_one_clear_error_and_nothing_is_written(tmp_path, bad, message):
    refuses_bad_eval_row(tmp_path, "multilabel", rows, bad, message)
