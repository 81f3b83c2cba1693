"""bertrt bench for every task: each artifact gated by its own metric against the reference checkpoint (entity F1,
SQuAD F1, micro F1, cosine), then timed; a perturbed NER artifact is refused by its entity decisions."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bertrt.bench.gate import Workload, read_workload, reference_answers  # noqa: E402
from bertrt.bench.run import BenchConfig, run_bench  # noqa: E402
from bertrt.errors import BenchGateError  # noqa: E402

from .test_export_fixtures import make_checkpoint, perturbed_model, tiny_model, tiny_tokenizer  # noqa: E402

QUIET = dict(log=lambda m: None, progress=False)
FAST = dict(batch_sizes=[1, 4], repeats=1, latency_n=4, progress=False, peers=[])
METRIC = {"ner": "entity F1", "qa": "SQuAD F1", "embed": "cosine", "multilabel": "micro F1"}


def _checkpoint(root, task):
    from bertrt.checkpoint import save_checkpoint

    if task != "multilabel":
        return make_checkpoint(root, task, std=0.3)
    model = tiny_model("classify", std=0.3)  # the same weights as a classifier; sigmoid heads over 3 labels
    model.config.task = "multilabel"
    return save_checkpoint(model, root / "ckpt-multilabel", tokenizer=tiny_tokenizer())


def _data(root, task, ckpt):
    """Labelled data whose gold answers are mostly the reference's own (so the metric means something)."""
    from bertrt.converters import sample

    texts = sample.TEXTS[:40]
    if task == "embed":
        (root / "texts.txt").write_text("\n".join(texts) + "\n")
        return root / "texts.txt"
    if task == "qa":
        data = {"data": [{"paragraphs": [{"context": c, "qas": [{"id": str(i), "question": q, "answers": [
            {"text": a, "answer_start": c.index(a)}]}]} for i, (q, c, a) in enumerate(sample.QA)]}]}
        (root / "squad.json").write_text(json.dumps(data))
        return root / "squad.json"
    if task == "ner":
        from bertrt.tasks.decode import word_tags

        w = Workload("x", "ner", [" ".join(t.split()) for t in texts], None)
        answers, encs, _ = reference_answers(ckpt, w, {"task": "ner", "max_length": 128})
        rows = []
        for i, (a, e) in enumerate(zip(answers, encs)):
            tags = word_tags(e.spans, a["entities"])
            if i % 5 == 0:  # some gold tags differ from the reference's: entity F1 below 1
                tags = ["O"] * len(tags)
            rows.append({"tokens": e.source.split(), "tags": tags})
        (root / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return root / "ner.jsonl"
    w = Workload("x", "multilabel", texts, None)
    answers, _, _ = reference_answers(ckpt, w, {"task": "multilabel", "max_length": 128})
    rows = [{"text": t, "labels": [] if i % 6 == 0 else a["labels"]} for i, (t, a) in enumerate(zip(texts, answers))]
    (root / "ml.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "ml.jsonl"


@pytest.mark.parametrize("task", ["ner", "qa", "embed", "multilabel"])
def test_every_task_is_gated_by_its_own_metric_then_timed(tmp_path, task):
    from bertrt.converters.config import ParityConfig
    from bertrt.converters.pipeline import export_artifact

    ckpt = _checkpoint(tmp_path, task)
    data = _data(tmp_path, task, ckpt)
    art = tmp_path / "art"
    export_artifact(ckpt, art, parity=ParityConfig(eval_path=str(data)), **QUIET)
    doc = run_bench([art], [data], tmp_path / "out", BenchConfig(**FAST), reference=str(ckpt), **{"log": lambda m: None})
    (row,) = doc["rows"]
    assert doc["task"] == task and row["status"] == "timed" and row["metric"] == METRIC[task]
    assert row["agreement"] == 1.0 and row["gate"]["passed"]  # fp32: every decision (every vector) agrees
    w = read_workload(data, task)
    assert row["examples"] == len(w.texts) and row["latency_ms"]["n"] == 4
    if task == "embed":
        assert row["score"] >= 0.9999 and row["drop"] is None
    else:
        assert row["drop"] == 0.0 and 0.0 < row["score"] < 1.0  # gold differs from the reference here and there
    assert f"| {METRIC[task]} % |" in (tmp_path / "out" / "bench.md").read_text()


def test_a_perturbed_ner_artifact_is_refused_by_its_entity_decisions(tmp_path):
    from bertrt.checkpoint import save_checkpoint
    from bertrt.converters.config import ParityConfig
    from bertrt.converters.pipeline import export_artifact

    ckpt = _checkpoint(tmp_path, "ner")
    data = _data(tmp_path, "ner", ckpt)
    bad = save_checkpoint(perturbed_model("ner"), tmp_path / "bad-ckpt", tokenizer=tiny_tokenizer())
    export_artifact(bad, tmp_path / "bad", parity=ParityConfig(eval_path=str(data)), **QUIET)
    with pytest.raises(BenchGateError, match="agreement") as e:
        run_bench([tmp_path / "bad"], [data], tmp_path / "out", BenchConfig(**FAST), reference=str(ckpt),
                  log=lambda m: None)
    (refusal,) = e.value.refusals
    assert refusal["metric"] == "entity F1" and 0.0 < refusal["agreement"] < 1.0
    assert not (tmp_path / "out").exists()


def test_long_chunks_bench_pools_windows_on_both_sides(tmp_path):
    """Texts longer than a 16-token artifact: with --long chunks the artifact and the reference both pool windows,
    so the fp32 gate still sees identical decisions, and the runtime flags no truncation."""
    from bertrt.converters.config import ExportConfig, ParityConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.runtime import Runtime

    ckpt = _checkpoint(tmp_path, "classify")
    data = tmp_path / "news.jsonl"
    from bertrt.converters import sample

    data.write_text("".join(json.dumps({"text": t, "label": "sport"}) + "\n" for t in sample.TEXTS[:30]))
    art = tmp_path / "art"
    export_artifact(ckpt, art, ExportConfig(max_length=16), parity=ParityConfig(eval_path=str(data)), **QUIET)
    texts = read_workload(data, "classify").texts
    rt = Runtime(art, device="cpu", threads=1, long="chunks")
    assert sum(len(e.windows) > 1 for e in rt.encode(texts)) >= 10  # long enough to need windows
    assert not any(r.get("truncated") for r in rt.predict(texts))
    doc = run_bench([art], [data], tmp_path / "out", BenchConfig(long="chunks", **FAST), reference=str(ckpt),
                    log=lambda m: None)
    (row,) = doc["rows"]
    assert doc["settings"]["long"] == "chunks" and row["status"] == "timed" and row["agreement"] == 1.0
