"""The finetune / evaluate commands: merge parity, reports, early stopping, FGM, bad input (prompts: test_prompt)."""

import json

import pytest
import torch

from bertrt.checkpoint import load_checkpoint
from bertrt.data import tasks as T
from bertrt.tokenizer import load_tokenizer
from bertrt.train.evaluate import load_task_model
from bertrt.train.finetune import FinetuneConfig, finetune

from .finetune_fixtures import one_thread, cli, classify_rows, make_base, squad, write_jsonl  # noqa: F401  (one_thread: autouse)




@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("cli") / "base")


def batch_logits(path, rows):
    model, tok = load_task_model(path)
    feats = T.encode_classify(T.read_task(write_jsonl(path.parent / "probe.jsonl", rows), "classify"), tok,
                              model.config.labels, 32)
    b = T.collate(feats)
    with torch.no_grad():
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"])["logits"]


def test_merge_writes_a_plain_checkpoint_with_the_unmerged_logits(base, tmp_path, monkeypatch, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(64, 1))
    common = [train, "--task", "classify", "--from", base, "--peft", "lora", "--epochs", 2, "--batch-size", 16,
              "--max-length", 32, "--lr", 1e-2, "--lora-targets", "query,key,value,output,intermediate"]
    code, out, err = cli(monkeypatch, capsys, "finetune", *common, "-o", tmp_path / "lora")
    assert code in (0, None), err
    assert "trainable parameters:" in out
    code, out, err = cli(monkeypatch, capsys, "finetune", *common, "--merge", "-o", tmp_path / "merged")
    assert code in (0, None), err
    assert (tmp_path / "lora" / "peft.json").is_file() and not (tmp_path / "merged" / "peft.json").exists()
    plain = load_checkpoint(tmp_path / "merged")  # an ordinary checkpoint: no adapter, no base needed
    assert not any("lora" in k for k in plain.state_dict())
    rows = classify_rows(16, 9)
    unmerged, merged = batch_logits(tmp_path / "lora", rows), batch_logits(tmp_path / "merged", rows)
    assert (unmerged - merged).abs().max().item() <= 1e-4
    fresh = batch_logits_fresh(base, rows)
    assert (unmerged - fresh).abs().max().item() > 1e-2  # training moved the logits: the comparison is not vacuous


def batch_logits_fresh(base, rows):
    torch.manual_seed(0)
    model = load_checkpoint(base, task="classify", labels=["neg", "pos"], init_missing_head=True)
    feats = T.encode_classify([T.ClassifyExample(r["text"], None, r["label"]) for r in rows], load_tokenizer(base),
                              ["neg", "pos"], 32)
    b = T.collate(feats)
    with torch.no_grad():
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"])["logits"]


def test_evaluate_prints_and_writes_the_report(base, tmp_path, monkeypatch, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(160, 1))
    ev = write_jsonl(tmp_path / "eval.jsonl", classify_rows(40, 2))
    r = finetune(train, tmp_path / "m", base, FinetuneConfig("classify", batch_size=16, max_length=32, lr=2e-3,
                                                             epochs=4, progress=False, class_weights=True),
                 eval_path=ev)
    assert r.best["accuracy"] >= 0.9, r.evals  # class-weighted, it still learns the task
    code, out, err = cli(monkeypatch, capsys, "evaluate", tmp_path / "m", ev, "--json", tmp_path / "r.json")
    assert code in (0, None), err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"] == r.best["accuracy"] and report["max_length"] == 32
    assert sum(map(sum, report["confusion_matrix"])) == 40
    assert "confusion matrix (rows: true, columns: predicted)" in out and f"accuracy {report['accuracy']:.4f}" in out


def test_fgm_attacks_along_the_gradient(base):
    """FGM's second pass sees embeddings moved by epsilon up the loss: its loss is higher than the clean one."""
    from bertrt.train.objectives import make_loss_fn, task_loss

    torch.manual_seed(0)
    model = load_checkpoint(base, task="classify", labels=["neg", "pos"], init_missing_head=True)
    rows = classify_rows(16, 3)
    feats = T.encode_classify([T.ClassifyExample(r["text"], None, r["label"]) for r in rows], load_tokenizer(base),
                              ["neg", "pos"], 32)
    b = T.collate(feats)
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    clean, n = task_loss("classify", model(**inputs), b)
    both, n2 = make_loss_fn("classify", adversarial="fgm", epsilon=0.5)(model, b)
    assert n == n2 == 16
    attacked = both.item() - clean.item()
    assert attacked > clean.item() + 1e-3, (attacked, clean.item())
    same, _ = make_loss_fn("classify", adversarial="fgm", epsilon=1e-9)(model, b)
    assert abs(same.item() - 2 * clean.item()) < 1e-4  # epsilon -> 0: the attacked pass is the clean one


def test_early_stopping_keeps_the_best_and_stops(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(64, 1))
    # a learning rate too small to change the accuracy: every evaluation ties the first, patience 2 runs out
    cfg = FinetuneConfig("classify", batch_size=16, max_length=32, lr=1e-9, epochs=10, eval_every=2, patience=2,
                         progress=False)
    r = finetune(train, tmp_path / "m", base, cfg, eval_path=train)
    assert r.stopped_early and len(r.evals) == 3 and [e["step"] for e in r.evals] == [2, 4, 6]
    assert json.loads((tmp_path / "m" / "finetune.json").read_text())["stopped_early"] is True


# ------------------------------------------------------------------------------------------------- bad input
def squad_bad_answer():
    doc = json.loads(squad(2, 0))
    doc["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["text"] = "purple"
    return json.dumps(doc)


BAD = {
    "missing column": ("classify", "t.csv", "text,category\nalpha,x\n", None,
                       "no 'label' column"),
    "empty file": ("classify", "t.jsonl", "", None, "is empty"),
    "unseen eval label": ("classify", "t.jsonl", '{"text":"a","label":"x"}\n{"text":"b","label":"y"}\n',
                          '{"text":"a","label":"z"}\n', "label(s) 'z' do not occur in the training data"),
    "conll fields": ("ner", "t.conll", "john B-PER\nlives O\nin O there\n", None, "t.conll:3: 3 fields"),
    "qa answer": ("qa", "t.json", squad_bad_answer(), None, "'purple' does not occur in the context"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_nothing_written(base, tmp_path, monkeypatch, capsys, case):
    task, name, text, eval_text, message = BAD[case]
    (tmp_path / name).write_text(text)
    extra = []
    if eval_text is not None:
        (tmp_path / "e.jsonl").write_text(eval_text)
        extra = ["--eval", tmp_path / "e.jsonl"]
    code, out, err = cli(monkeypatch, capsys, "finetune", tmp_path / name, "-o", tmp_path / "out", "--task", task,
                         "--from", base, *extra)
    assert code == 1 and message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("kind", ["no config", "not bert"])
def test_from_that_is_not_a_bert_model(tmp_path, monkeypatch, capsys, kind):
    src = tmp_path / "src"
    src.mkdir()
    if kind == "not bert":
        (src / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    train = write_jsonl(tmp_path / "t.jsonl", classify_rows(8, 1))
    code, out, err = cli(monkeypatch, capsys, "finetune", train, "-o", tmp_path / "out", "--task", "classify",
                         "--from", src)
    expected = "has no config.json; expected a BERT checkpoint" if kind == "no config" else "holds a gpt2 model"
    assert code == 1 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_merge_of_an_adapter_is_refused_before_training(base, tmp_path, monkeypatch, capsys):
    train = write_jsonl(tmp_path / "t.jsonl", classify_rows(8, 1))
    code, out, err = cli(monkeypatch, capsys, "finetune", train, "-o", tmp_path / "out", "--task", "classify",
                         "--from", base, "--peft", "adapter", "--merge")
    assert code == 1 and "--merge cannot fold adapter" in err
    assert not (tmp_path / "out").exists()


def test_interrupted_run_resumes_to_the_same_model(base, tmp_path, monkeypatch):
    import bertrt.train.objectives as O

    train = write_jsonl(tmp_path / "train.jsonl", classify_rows(64, 1))
    cfg = FinetuneConfig("classify", batch_size=16, max_length=32, lr=2e-3, epochs=3, save_every=4, progress=False)
    finetune(train, tmp_path / "whole", base, cfg)
    original, calls = O.task_loss, []

    def crash_at_step_11(*a, **kw):  # after the checkpoint of step 8
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(O, "task_loss", crash_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        finetune(train, tmp_path / "cut", base, cfg)
    assert not (tmp_path / "cut" / "config.json").exists()  # an interrupted run does not look finished
    monkeypatch.setattr(O, "task_loss", original)
    r = finetune(train, tmp_path / "cut", base, cfg, resume=True)
    assert r.steps == 12 and len(calls) == 11
    a, b = load_checkpoint(tmp_path / "whole").state_dict(), load_checkpoint(tmp_path / "cut").state_dict()
    fresh = load_checkpoint(base, task="classify", labels=["neg", "pos"], init_missing_head=True).state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert max((a[k] - fresh[k]).abs().max().item() for k in a if not k.startswith("classifier")) > 1e-3
