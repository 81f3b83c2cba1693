"""Prompts: the cloze encoder, zero-shot and few-shot (PET) prompt models, and their artifacts in the runtime."""

import json
import random

import numpy as np
import pytest
import torch

from bertrt.checkpoint import load_checkpoint, load_cloze, save_checkpoint
from bertrt.data import tasks as T
from bertrt.errors import BertrtError, DataError, InputError
from bertrt.tasks.encode import TextEncoder
from bertrt.tasks.prompt import fit
from bertrt.tokenizer import load_tokenizer
from bertrt.train.loop import EpochBatches, TrainConfig, train
from bertrt.train.zeroshot import zeroshot

from .finetune_fixtures import FILLER, cli, make_base, one_thread, write_jsonl  # noqa: F401

TOPICS = {"sport": ["ball", "goal", "team"], "food": ["bread", "soup", "rice"]}
PATTERN = "{text} topic [MASK]"
VERBALIZER = {"sport": ["sport"], "food": ["food"]}


def sentence(rng, label):
    words = [rng.choice(FILLER) for _ in range(rng.randint(1, 3))] + rng.choices(TOPICS[label], k=2)
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    """A tiny MLM that saw 'w1 w2 ... topic sport' in pretraining (so the prompt alone classifies), a topic test
    set and a verbalizer file."""
    d = tmp_path_factory.mktemp("prompt")
    rng = random.Random(0)
    base = make_base(d / "mlm-base", task="mlm")
    model, tok = load_checkpoint(base), load_tokenizer(base)
    mask_id = tok.token_to_id("[MASK]")
    items = []
    for _ in range(400):
        label = rng.choice(list(TOPICS))
        ids = tok.encode(f"{sentence(rng, label)} topic {label}").ids
        masked = [i for i in range(1, len(ids) - 1) if rng.random() < 0.15] + [len(ids) - 2] * (rng.random() < 0.6)
        items.append({"input_ids": [mask_id if i in masked else t for i, t in enumerate(ids)],
                      "token_type_ids": [0] * len(ids),
                      "labels": [t if i in masked else -100 for i, t in enumerate(ids)]})

    def loss_fn(m, b):
        positions = b["labels"] != -100
        logits = m(b["input_ids"], b["attention_mask"], b["token_type_ids"], mlm_positions=positions)["mlm_logits"]
        return torch.nn.functional.cross_entropy(logits, b["labels"][positions], reduction="sum"), int(positions.sum())

    train(model, EpochBatches(items, 16, T.collate), loss_fn, TrainConfig(lr=3e-3, epochs=8, progress=False),
          d / "run")
    save_checkpoint(model, d / "mlm", tokenizer=tok)
    rows = [{"text": sentence(rng, label), "label": label} for label in ["sport", "food"] * 30]
    (d / "verbalizer.json").write_text(json.dumps(VERBALIZER))
    return {"dir": d, "ckpt": d / "mlm", "base": base, "data": write_jsonl(d / "zs.jsonl", rows),
            "verbalizer": d / "verbalizer.json", "rows": rows}


def test_zeroshot_beats_chance(mlm):
    """The MLM that saw 'w1 w2 ... topic sport' classifies new texts by the prompt alone; its untrained start does
    not."""
    args = (mlm["data"], PATTERN, mlm["verbalizer"])
    untrained = zeroshot(mlm["base"], *args, progress=False)["report"]["accuracy"]
    trained = zeroshot(mlm["ckpt"], *args, progress=False)
    assert trained["report"]["accuracy"] >= 0.9 and untrained <= 0.7, (trained["report"]["accuracy"], untrained)
    assert len(trained["predictions"]) == 60


# ------------------------------------------------------------------------------------------------------ encoding
def test_prompt_rows_exact_and_the_mask_always_fits(mlm):
    tok = load_tokenizer(mlm["ckpt"])
    ids = tok.token_to_id
    enc = TextEncoder(tok, "classify", 16, prompt=PATTERN)
    short, long, masked = enc.encode([("ball goal", None), (" ".join(["alpha"] * 40), None),
                                      ("ball [MASK] goal", None)])
    assert short.windows[0].ids == [ids("[CLS]"), ids("ball"), ids("goal"), ids("topic"), ids("[MASK]"),
                                    ids("[SEP]")] and not short.truncated
    assert len(long.windows[0]) == 16 and long.truncated  # cut to fit; the pattern kept whole
    assert long.windows[0].ids[-3:] == [ids("topic"), ids("[MASK]"), ids("[SEP]")]
    assert masked.windows[0].ids.count(ids("[MASK]")) == 1 and ids("[UNK]") in masked.windows[0].ids
    pair = TextEncoder(tok, "classify", 16, prompt="{text} [SEP] {text_pair} topic [MASK]")
    (e,) = pair.encode([(" ".join(["alpha"] * 30), "ball goal")])
    assert e.windows[0].ids.count(ids("alpha")) == 16 - 2 - 3 - 2  # the longer text gives way; the pair is whole
    assert fit([30, 2], 9) == [7, 2] and fit([30, 30], 9) == [5, 4] and fit([3, 2], 9) == [3, 2]
    # a long text tokenized from its prefix gives exactly the rows of the whole text
    text = " ".join(random.Random(1).choices(FILLER, k=400))
    fast = TextEncoder(tok, "classify", 16, prompt=PATTERN)
    slow = TextEncoder(tok, "classify", 16, prompt=PATTERN)
    slow._prefix_chars = None
    assert fast.encode([(text, None)])[0].windows[0].ids == slow.encode([(text, None)])[0].windows[0].ids


def test_prompt_refuses_what_it_cannot_read(mlm):
    tok = load_tokenizer(mlm["ckpt"])
    for bad in ("{text} topic", "{text} [MASK] [MASK]", "topic [MASK]", "{text} {text} [MASK]"):
        with pytest.raises(InputError, match="pattern"):
            TextEncoder(tok, "classify", 16, prompt=bad)
    with pytest.raises(InputError, match="classify"):
        TextEncoder(tok, "ner", 16, prompt=PATTERN)
    with pytest.raises(InputError, match="text_pair"):
        TextEncoder(tok, "classify", 16, prompt=PATTERN).encode([("a", "b")])
    with pytest.raises(DataError, match="exactly one known token"):
        load_cloze(mlm["ckpt"], {"sport": ["sportsmanship"], "food": ["food"]})


# -------------------------------------------------------------------------------------------- cloze and export
def vocab_wide_decisions(ckpt, rows, max_length=64):
    """The cloze decision computed the long way: the vocabulary-wide log-softmax at the mask, each label's mass."""
    model, tok = load_checkpoint(ckpt, task="mlm"), load_tokenizer(ckpt)
    encs = TextEncoder(tok, "classify", max_length, prompt=PATTERN).encode([(r["text"], None) for r in rows])
    out = []
    with torch.no_grad():
        for e in encs:
            ids = torch.tensor([e.windows[0].ids])
            logp = model(ids)["mlm_logits"][0, ids[0].tolist().index(tok.token_to_id("[MASK]"))].log_softmax(-1)
            scores = [logp[[tok.token_to_id(w) for w in ws]].logsumexp(-1) for ws in VERBALIZER.values()]
            out.append(list(VERBALIZER)[int(torch.stack(scores).argmax())])
    return out


@pytest.fixture(scope="module")
def zeroshot_artifact(mlm):
    pytest.importorskip("onnxruntime")
    from bertrt.converters.config import ExportConfig, ParityConfig
    from bertrt.converters.pipeline import export_artifact

    art = mlm["dir"] / "zs-art"
    manifest = export_artifact(mlm["ckpt"], art, ExportConfig(max_length=64, prompt=PATTERN, verbalizer=VERBALIZER),
                               parity=ParityConfig(eval_path=str(mlm["data"])), log=lambda _: None, progress=False)
    return art, manifest


def test_zeroshot_artifact_decides_as_the_pytorch_cloze_model(mlm, zeroshot_artifact):
    from bertrt.converters.parity import make_session
    from bertrt.runtime import Runtime

    art, manifest = zeroshot_artifact
    assert manifest["task"] == "classify" and manifest["labels"] == ["sport", "food"]
    assert manifest["prompt"] == {"pattern": PATTERN, "verbalizer": VERBALIZER}
    assert manifest["parity"]["final"]["passed"] and manifest["optimization"]["fusions"]["Attention"] == 2
    rt = Runtime(art, device="cpu")
    got = [a["label"] for a in rt.predict([r["text"] for r in mlm["rows"]])]
    reference = zeroshot(mlm["ckpt"], mlm["data"], PATTERN, mlm["verbalizer"], max_length=64, progress=False)
    assert got == reference["predictions"] == vocab_wide_decisions(mlm["ckpt"], mlm["rows"])
    assert reference["report"]["accuracy"] >= 0.9
    # logits: the graph (one per label) against the PyTorch cloze model, within the fp32 gate's 1e-4
    cloze = load_cloze(mlm["ckpt"], VERBALIZER)
    encs = rt.encode([r["text"] for r in mlm["rows"][:8]])
    feeds = {k: np.array([e.windows[0].__dict__[f] for e in encs[:1]]) for k, f in
             (("input_ids", "ids"), ("token_type_ids", "type_ids"))}
    feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    onnx_logits = make_session(art / "model.onnx").run(["logits"], feeds)[0]
    assert onnx_logits.shape == (1, 2)
    with torch.no_grad():
        torch_logits = cloze(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                                    "token_type_ids")))["logits"].numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


def test_prompt_artifact_int8_evaluate_and_refusals(mlm, zeroshot_artifact):
    from bertrt.converters.config import ExportConfig, ParityConfig, QuantizeConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.runtime import Runtime
    from bertrt.runtime.evaluate import evaluate_artifact

    art = mlm["dir"] / "zs-int8"
    m = export_artifact(mlm["ckpt"], art, ExportConfig(max_length=64, prompt=PATTERN, verbalizer=VERBALIZER),
                        quantize=QuantizeConfig(mode="dynamic"), parity=ParityConfig(eval_path=str(mlm["data"])),
                        log=lambda _: None, progress=False)
    assert m["precision"] == "int8-dynamic" and m["parity"]["final"]["passed"]
    assert set(m["parity"]["final"]["gates"]) == {"tensor", "decision", "task"}
    fp32 = evaluate_artifact(zeroshot_artifact[0], mlm["data"], device="cpu", progress=False)
    int8 = evaluate_artifact(art, mlm["data"], device="cpu", progress=False)
    assert fp32["accuracy"] >= 0.9 and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.05
    with pytest.raises(InputError, match="truncate"):
        Runtime(art, device="cpu", long="chunks")
    with pytest.raises(InputError, match="text_pair"):
        Runtime(art, device="cpu").predict({"text": "ball", "text_pair": "goal"})
    from bertrt.errors import CheckpointError, ExportError

    with pytest.raises(ExportError, match="--verbalizer"):
        ExportConfig(prompt=PATTERN)
    cls = make_base(mlm["dir"] / "cls-base", task="base")
    with pytest.raises(CheckpointError, match="masked-LM"):
        export_artifact(cls, mlm["dir"] / "x", ExportConfig(prompt=PATTERN, verbalizer=VERBALIZER),
                        log=lambda _: None, progress=False)
    assert not (mlm["dir"] / "x").exists()


# ---------------------------------------------------------------------------------------------------- few-shot
def prompt_loss(ckpt, verbalizer, data) -> float:
    """Mean cross-entropy of the cloze classifier of ``ckpt`` over ``verbalizer``'s labels on ``data``."""
    model, tok = load_cloze(ckpt, verbalizer), load_tokenizer(ckpt)
    feats = T.encode_classify(T.read_task(data, "classify"), tok, list(verbalizer), 32, prompt=PATTERN)
    batch = T.collate(feats)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])["logits"]
    return float(torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_fewshot_prompt_training_moves_the_mlm_and_learns(mlm, tmp_path):
    """Verbalizer words the MLM never linked to the topics (red, blue): chance at zero-shot, learnt from 8 labelled
    examples; the encoder and the MLM head move; the checkpoint evaluates and exports as a prompt model."""
    from bertrt.train.evaluate import evaluate_dir
    from bertrt.train.finetune import FinetuneConfig, finetune

    rng = random.Random(5)
    verbalizer = {"sport": ["red"], "food": ["blue"]}
    train_rows = [{"text": sentence(rng, label), "label": label} for label in ["sport", "food"] * 4]
    eval_rows = [{"text": sentence(rng, label), "label": label} for label in ["sport", "food"] * 40]
    tr, ev = write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    (tmp_path / "v.json").write_text(json.dumps(verbalizer))
    before = zeroshot(mlm["ckpt"], ev, PATTERN, tmp_path / "v.json", max_length=32, progress=False)
    cfg = FinetuneConfig("classify", max_length=32, epochs=10, lr=2e-3, batch_size=4, progress=False,
                         prompt=PATTERN, verbalizer=verbalizer)
    r = finetune(tr, tmp_path / "few", mlm["ckpt"], cfg)  # no --eval: the last weights, not the best-by-accuracy
    assert r.labels == ["sport", "food"] and r.steps == 20
    loss_before, loss_after = (prompt_loss(path, verbalizer, tr) for path in (mlm["ckpt"], tmp_path / "few"))
    assert loss_before > 0.5 and loss_after < 0.2 * loss_before, (loss_before, loss_after)
    accuracy = evaluate_dir(tmp_path / "few", ev, progress=False)["accuracy"]
    assert accuracy >= 0.95 and before["report"]["accuracy"] <= 0.7, (accuracy, before["report"])
    old, new = load_checkpoint(mlm["ckpt"]).state_dict(), load_checkpoint(tmp_path / "few").state_dict()
    for name in ("mlm.transform.weight", "bert.layers.1.ffn.output.weight", "bert.embeddings.word_embeddings.weight"):
        assert (old[name] - new[name]).abs().max() > 1e-3, name
    record = json.loads((tmp_path / "few/finetune.json").read_text())["prompt"]
    assert record == {"pattern": PATTERN, "verbalizer": verbalizer}

    pytest.importorskip("onnxruntime")
    from bertrt.converters.config import ParityConfig
    from bertrt.converters.pipeline import export_artifact
    from bertrt.runtime import Runtime

    m = export_artifact(tmp_path / "few", tmp_path / "art", parity=ParityConfig(eval_path=str(ev)),
                        log=lambda _: None, progress=False)
    assert m["prompt"] == record and m["max_length"] == 32 and m["labels"] == ["sport", "food"]
    got = [a["label"] for a in Runtime(tmp_path / "art", device="cpu").predict([x["text"] for x in eval_rows])]
    assert np.mean([g == x["label"] for g, x in zip(got, eval_rows)]) == pytest.approx(accuracy)


def test_fewshot_prompt_refusals(mlm, tmp_path):
    from bertrt.train.finetune import FinetuneConfig, finetune

    with pytest.raises(BertrtError, match="go together"):
        FinetuneConfig("classify", prompt=PATTERN)
    with pytest.raises(BertrtError, match="classify"):
        FinetuneConfig("ner", prompt=PATTERN, verbalizer=VERBALIZER)
    with pytest.raises(InputError, match="MASK"):
        FinetuneConfig("classify", prompt="{text} topic", verbalizer=VERBALIZER)
    tr = write_jsonl(tmp_path / "t.jsonl", [{"text": "ball", "label": "sport"}, {"text": "soup", "label": "drink"}])
    with pytest.raises(DataError, match="drink"):
        finetune(tr, tmp_path / "o", mlm["ckpt"], FinetuneConfig("classify", prompt=PATTERN, verbalizer=VERBALIZER,
                                                                 progress=False))
    assert not (tmp_path / "o").exists()


def test_prompt_artifact_benches_like_a_classifier(mlm, zeroshot_artifact):
    """bench gates the prompt artifact against its masked-LM checkpoint read through the same prompt, then times it."""
    pytest.importorskip("jsonschema")
    from bertrt.bench.run import BenchConfig, run_bench

    art, _ = zeroshot_artifact
    doc = run_bench([art], [mlm["data"]], mlm["dir"] / "bench", BenchConfig(batch_sizes=[1, 4], repeats=1,
                                                                             latency_n=4, progress=False, peers=[]),
                    log=lambda m: None)
    (row,) = doc["rows"]
    assert row["status"] == "timed" and row["agreement"] == 1.0 and row["metric"] == "accuracy"
    assert row["score"] >= 0.9


def test_cli_prompt_options(mlm, tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "finetune", mlm["data"], "-o", tmp_path / "o", "--task", "classify",
                       "--from", mlm["ckpt"], "--prompt", PATTERN)
    assert code == 1 and "error: --prompt and --verbalizer go together" in err and not (tmp_path / "o").exists()
    code, _, err = cli(monkeypatch, capsys, "export", mlm["ckpt"], "-o", tmp_path / "art", "--prompt",
                       "{text} topic", "--verbalizer", mlm["verbalizer"])
    assert code == 1 and "exactly one [MASK]" in err and not (tmp_path / "art").exists()
    code, _, err = cli(monkeypatch, capsys, "finetune", mlm["data"], "-o", tmp_path / "few", "--task", "classify",
                       "--from", mlm["ckpt"], "--prompt", PATTERN, "--verbalizer", mlm["verbalizer"], "--max-steps",
                       "2", "--max-length", "32")
    assert code == 0, err
    assert json.loads((tmp_path / "few/finetune.json").read_text())["prompt"]["verbalizer"] == VERBALIZER
