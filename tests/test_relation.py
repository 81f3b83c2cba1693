"""Relation extraction end to end: typed entity markers around the head and tail spans, a tiny model that learns
from the markers' representations what an untrained one misses, export parity, the runtime's answer objects, and
bad inputs refused with one clear error each, before anything is written."""

import random

import pytest

from bertrt.data.tasks import read_task
from bertrt.errors import InputError
from bertrt.tokenizer import load_tokenizer
from bertrt.train.evaluate import evaluate, evaluate_dir

from .finetune_fixtures import (  # noqa: F401  (one_thread: autouse)
    CITIES, FILLER, PEOPLE, export_tiny, one_thread, refuses_bad_eval_row, train_tiny)

# the relation is decided by what the two marked words are, in which order: only the markers tell which ones
RELATION = {("PER", "LOC"): "lives_in", ("LOC", "PER"): "home_of", ("PER", "PER"): "knows",
            ("LOC", "LOC"): "no_relation"}


def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for w in [rng.choice(PEOPLE), rng.choice(CITIES), rng.choice(PEOPLE), rng.choice(CITIES)]:
            words.insert(rng.randrange(len(words) + 1), w)  # two people and two cities: the markers must choose
        text = " ".join(words)
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        named = [i for i, w in enumerate(words) if w in PEOPLE + CITIES]
        h, t = rng.sample(named, 2)
        kind = lambda i: "PER" if words[i] in PEOPLE else "LOC"  # noqa: E731
        out.append({"text": text, "head": [starts[h], starts[h] + len(words[h])],
                    "tail": [starts[t], starts[t] + len(words[t])], "label": RELATION[(kind(h), kind(t))]})
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("relation"), "relation", rows, epochs=10)


def test_a_tiny_model_learns_relations_an_untrained_one_misses(trained):
    from bertrt.checkpoint import load_checkpoint
    from bertrt.train.relation import add_markers

    base, ev, r = trained["base"], trained["eval"], trained["result"]
    labels = sorted(set(RELATION.values()))
    model = load_checkpoint(base, task="relation", labels=labels, init_missing_head=True)
    tok = load_tokenizer(base)
    add_markers(model, tok)
    before = evaluate(model, tok, read_task(ev, "relation"), "relation", labels, max_length=32)
    assert before["f1"] < 0.6 and r.best["f1"] >= 0.9, (before["f1"], r.evals)
    assert "no_relation" not in r.best["per_class"] or r.best["task"] == "relation"
    assert set(r.best["micro"]) == {"precision", "recall", "f1"} and r.best["f1"] == r.best["micro"]["f1"]
    again = evaluate_dir(trained["dir"] / "ckpt", ev, progress=False)
    assert again["f1"] == r.best["f1"]


def test_export_parity_the_runtime_answer_and_bench(trained):
    m = export_tiny(trained)
    from bertrt.runtime import Runtime
    from bertrt.runtime.evaluate import evaluate_artifact

    d, ev = trained["dir"], trained["eval"]
    final = m["parity"]["final"]
    assert m["task"] == "relation" and final["gates"]["tensor"]["value"] <= 1e-4 and final["agreement"] == 1.0
    assert final["gates"]["task"]["metric"] == "relation F1"
    assert evaluate_artifact(d / "art", ev, device="cpu", progress=False)["f1"] == \
        evaluate_dir(d / "ckpt", ev, progress=False)["f1"]
    rt = Runtime(d / "art", device="cpu", threads=1)
    text = "alpha john beta paris gamma"
    out = rt.predict({"text": text, "head": [6, 10], "tail": [16, 21]})
    assert set(out) == {"relation", "score", "scores"} and out["relation"] == "lives_in"
    assert abs(sum(out["scores"].values()) - 1) < 1e-9 and out["score"] == out["scores"]["lives_in"]
    assert rt.predict({"text": text, "head": [16, 21], "tail": [6, 10]})["relation"] == "home_of"
    # bench: gated by relation F1 against the checkpoint, then timed
    from bertrt.bench.run import BenchConfig, run_bench

    doc = run_bench([d / "art"], [ev], d / "bench", BenchConfig(batch_sizes=[1, 4], repeats=1, latency_n=4,
                                                                 progress=False, peers=[]),
                    reference=str(d / "ckpt"), log=lambda _: None)
    (row,) = doc["rows"]
    assert row["status"] == "timed" and row["metric"] == "relation F1" and row["agreement"] == 1.0
    assert row["score"] == pytest.approx(evaluate_dir(d / "ckpt", ev, progress=False)["f1"], abs=1e-6)
    for bad, message in [({"text": text, "head": [6, 40], "tail": [16, 21]}, "out of range"),
                         ({"text": text, "head": [6, 10], "tail": [8, 21]}, "overlap"),
                         ({"text": text, "head": [6, 10]}, '"tail"')]:
        with pytest.raises(InputError, match=message):
            rt.predict(bad)


@pytest.mark.parametrize("bad,message", [
    ({"text": "john in paris", "head": [0, 4], "tail": [8, 30], "label": "lives_in"}, "out of range"),
    ({"text": "john in paris", "head": [0, 4], "tail": [2, 13], "label": "lives_in"}, "overlap"),
    ({"text": "john in paris", "head": [0, 4], "tail": [8, 13], "label": "works_for"}, "'works_for' do not occur"),
])
def test_bad_data_is_one_clear_error_and_nothing_is_written(tmp_path, bad, message):
    refuses_bad_eval_row(tmp_path, "relation", rows, bad, message)
