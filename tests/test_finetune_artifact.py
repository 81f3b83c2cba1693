"""`bertrt evaluate` on an exported artifact reports what it reports on the checkpoint the artifact came from."""

import json
import sys

import pytest

from bertrt.cli import main
from bertrt.train.evaluate import evaluate_dir
from bertrt.runtime.evaluate import evaluate_artifact
from bertrt.tasks.decode import word_tags
from bertrt.tasks.encode import word_spans
from bertrt.train.finetune import FinetuneConfig, finetune

from .finetune_fixtures import one_thread, classify_rows, make_base, ner_rows, squad, write_jsonl  # noqa: F401  (one_thread: autouse)

pytest.importorskip("onnxruntime")




def test_word_tags_from_character_entities():
    words = ["john", "lives", "in", "new", "york"]  # "john lives in new york": new york = chars 14..22
    entities = [{"type": "PER", "start": 0, "end": 4}, {"type": "LOC", "start": 14, "end": 22}]
    assert word_tags(word_spans(" ".join(words)), entities) == ["B-PER", "O", "O", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("task", ["classify", "ner", "ner-punct", "qa"])
def test_artifact_and_checkpoint_reports_agree(tmp_path, monkeypatch, capsys, task):
    from bertrt.converters.config import OptimizeConfig
    from bertrt.converters.pipeline import export_artifact

    base = make_base(tmp_path / "base")
    if task == "qa":
        (tmp_path / "train.json").write_text(squad(120, 1))
        (tmp_path / "eval.json").write_text(squad(40, 2))
        train, ev = tmp_path / "train.json", tmp_path / "eval.json"
    else:
        rows = {"classify": classify_rows, "ner": ner_rows, "ner-punct": lambda n, s: ner_rows(n, s, punct=True)}[task]
        train = write_jsonl(tmp_path / "train.jsonl", rows(240, 1))
        ev = write_jsonl(tmp_path / "eval.jsonl", rows(40, 2))
    if task == "ner-punct":  # '@john' is two tokens but one word, in training and in serving alike
        assert sum("@" in t or "'" in t for r in rows(40, 2) for t in r["tokens"]) > 20
        task = "ner"
    finetune(train, tmp_path / "ckpt", base, FinetuneConfig(task, batch_size=16, max_length=32, lr=2e-3, epochs=5,
                                                            progress=False))
    export_artifact(tmp_path / "ckpt", tmp_path / "art", optimize=OptimizeConfig(enabled=False), log=lambda m: None,
                    progress=False)
    ours = evaluate_dir(tmp_path / "ckpt", ev, max_length=32, progress=False)
    theirs = evaluate_artifact(tmp_path / "art", ev, device="cpu", progress=False)
    metric = {"classify": "accuracy", "ner": "f1", "qa": "exact_match"}[task]
    assert theirs[metric] == pytest.approx(ours[metric], abs=1e-9), (ours[metric], theirs[metric])
    assert ours[metric] >= {"classify": 0.9, "ner": 0.8, "qa": 0.9}[task]  # a trained model: agreement means something
    assert theirs["truncated_inputs"] == 0
    monkeypatch.setattr(sys, "argv", ["bertrt", "evaluate", str(tmp_path / "art"), str(ev), "--json",
                                      str(tmp_path / "r.json")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None), capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())[metric] == theirs[metric]
