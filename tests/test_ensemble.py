"""bertrt ensemble: one artifact whose graph averages its members' probabilities (or vectors), gated against them."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from bertrt.converters import sample  # noqa: E402
from bertrt.converters.config import ExportConfig, OptimizeConfig, ParityConfig, QuantizeConfig  # noqa: E402
from bertrt.converters.ensemble import build_ensemble  # noqa: E402
from bertrt.converters.pipeline import export_artifact  # noqa: E402
from bertrt.errors import ExportError, ParityError  # noqa: E402
from bertrt.runtime import Runtime  # noqa: E402

from .test_export_fixtures import make_checkpoint  # noqa: E402

QUIET = dict(log=lambda m: None, progress=False)
TEXTS = sample.TEXTS[:60]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three classifiers of one tokenizer and label set that differ in seed, size and precision (fp32 fused, INT8,
    fp32 unfused with one layer), and labelled data: the first member's predictions, every 5th changed."""
    root = tmp_path_factory.mktemp("ensemble")
    ckpts = [make_checkpoint(root, "classify", "c0", seed=0, std=0.3),
             make_checkpoint(root, "classify", "c1", seed=1),
             make_checkpoint(root, "classify", "c2", seed=2, std=0.3, layers=1)]
    arts = [root / "a0", root / "a1", root / "a2"]
    export_artifact(ckpts[0], arts[0], **QUIET)
    export_artifact(ckpts[1], arts[1], quantize=QuantizeConfig(mode="dynamic"), **QUIET)
    export_artifact(ckpts[2], arts[2], optimize=OptimizeConfig(enabled=False), **QUIET)
    first = Runtime(arts[0], device="cpu")
    preds = [a["label"] for a in first.predict(TEXTS)]
    labels = first.labels
    gold = [p if i % 5 else labels[(labels.index(p) + 1) % 3] for i, p in enumerate(preds)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(TEXTS, gold)))
    return {"root": root, "ckpts": ckpts, "arts": arts, "data": data}


def test_ensemble_output_is_the_mean_of_its_members(members):
    arts, root = members["arts"], members["root"]
    m = build_ensemble(arts, root / "ens", ParityConfig(eval_path=str(members["data"]), max_drop=100.0), **QUIET)
    assert m["task"] == "classify" and m["precision"] == "mixed" and len(m["ensemble"]["members"]) == 3
    gates = m["parity"]["final"]["gates"]
    assert m["parity"]["final"]["passed"] and gates["tensor"]["value"] <= 1e-4 and gates["decision"]["value"] == 1.0
    assert gates["members"]["members"][0] == pytest.approx(0.8)  # each member's metric is reported beside it
    assert [x["score"] for x in m["ensemble"]["members"]] == gates["members"]["members"]
    ens = Runtime(root / "ens", device="cpu").predict(TEXTS)
    parts = [Runtime(a, device="cpu").predict(TEXTS) for a in arts]
    labels = list(ens[0]["scores"])
    got = np.array([[r["scores"][k] for k in labels] for r in ens])
    mean = np.mean([[[r["scores"][k] for k in labels] for r in p] for p in parts], axis=0)
    np.testing.assert_allclose(got, mean, atol=1e-6, rtol=0)
    assert [r["label"] for r in ens] == [labels[i] for i in mean.argmax(1)]
    assert len({tuple(r["label"] for r in p) for p in parts}) > 1  # the members disagree somewhere: a real mean


def test_ensemble_of_embedders_averages_vectors(members):
    root = members["root"]
    arts = []
    for seed in (3, 4):
        ckpt = make_checkpoint(root, "base", f"e{seed}", seed=seed, std=0.3)
        export_artifact(ckpt, root / f"emb{seed}", **QUIET)
        arts.append(root / f"emb{seed}")
    build_ensemble(arts, root / "emb-ens", **QUIET)
    got = np.array([r["embedding"] for r in Runtime(root / "emb-ens", device="cpu").predict(TEXTS[:20])])
    mean = np.mean([[r["embedding"] for r in Runtime(a, device="cpu").predict(TEXTS[:20])] for a in arts], axis=0)
    np.testing.assert_allclose(got, mean, atol=1e-6, rtol=0)


def test_ensemble_refuses_members_it_cannot_average(members, tmp_path):
    from bertrt.checkpoint import save_checkpoint
    from tests.artifacts import build_artifact

    from .test_export_fixtures import tiny_model, tiny_tokenizer

    arts = members["arts"]
    other = tiny_model("classify", seed=5, std=0.3)
    other.config.labels = ["business", "sport", "science"]
    save_checkpoint(other, tmp_path / "c-labels", tokenizer=tiny_tokenizer())
    export_artifact(tmp_path / "c-labels", tmp_path / "a-labels", **QUIET)
    with pytest.raises(ExportError, match="differ in labels"):
        build_ensemble([arts[0], tmp_path / "a-labels"], tmp_path / "x", **QUIET)
    foreign = build_artifact("classify", tmp_path / "a-tok")  # same labels, its own tokenizer
    with pytest.raises(ExportError, match="another tokenizer"):
        build_ensemble([arts[0], foreign], tmp_path / "x", **QUIET)
    export_artifact(members["ckpts"][1], tmp_path / "a-len", ExportConfig(max_length=64), **QUIET)
    with pytest.raises(ExportError, match="max_length"):
        build_ensemble([arts[0], tmp_path / "a-len"], tmp_path / "x", **QUIET)
    with pytest.raises(ExportError, match="at least 2"):
        build_ensemble([arts[0]], tmp_path / "x", **QUIET)
    assert not (tmp_path / "x").exists()


def test_ensemble_worse_than_its_best_member_is_refused(members, tmp_path):
    """Labels that are exactly the first member's predictions: the ensemble trails that member, so the gate refuses
    it (with the numbers) and writes nothing."""
    first = Runtime(members["arts"][0], device="cpu")
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": a["label"]}) + "\n"
                            for t, a in zip(TEXTS, first.predict(TEXTS))))
    with pytest.raises(ParityError, match="members") as e:
        build_ensemble(members["arts"], tmp_path / "ens", ParityConfig(eval_path=str(data)), **QUIET)
    gate = e.value.report["gates"]["members"]
    assert gate["members"][0] == 1.0 and gate["ensemble"] < 1.0 and not gate["passed"]
    assert not (tmp_path / "ens").exists()


def test_cli_ensemble_then_bench_and_evaluate(members, tmp_path, monkeypatch, capsys):
    from bertrt.bench.run import BenchConfig, run_bench
    from bertrt.runtime.evaluate import evaluate_artifact

    from .finetune_fixtures import cli

    arts = members["arts"]
    code, out, err = cli(monkeypatch, capsys, "ensemble", *arts, "-o", tmp_path / "ens", "--eval", members["data"],
                         "--max-drop", "100")
    assert code == 0, err
    assert out.count("member ") == 3 and "ensemble   accuracy" in out
    code, out, err = cli(monkeypatch, capsys, "ensemble", arts[0], "-o", tmp_path / "one")
    assert code == 1 and err.startswith("error: an ensemble needs at least 2")
    report = evaluate_artifact(tmp_path / "ens", members["data"], device="cpu", progress=False)
    shown = json.loads((tmp_path / "ens/bertrt.json").read_text())["parity"]["final"]["gates"]["members"]
    assert report["accuracy"] == pytest.approx(shown["ensemble"])
    doc = run_bench([tmp_path / "ens"], [members["data"]], tmp_path / "bench",
                    BenchConfig(batch_sizes=[1, 4], repeats=1, latency_n=4, progress=False, peers=[]),
                    log=lambda m: None)
    (row,) = doc["rows"]  # gated against its members' PyTorch checkpoints, combined as the graph combines them
    assert row["status"] == "timed" and row["agreement"] >= 0.99
