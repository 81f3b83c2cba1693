"""`pretrain --from`: continued pretraining of a transformers-saved BERT starts where that model is, and resumes
exactly after a kill."""

import math

import numpy as np
import pytest
import torch

import bertrt.train.pretrain as pretrain_module
from bertrt.data.pretraining import pretrain_loss
from bertrt.tokenizer import load_tokenizer, save_tokenizer
from bertrt.train.loop import TrainConfig
from bertrt.train.pretrain import PretrainConfig, pretrain

from .pretrain_fixtures import tokenizer_for, write_corpus

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A transformers BertForPreTraining (no dropout) whose MLM bias holds the corpus's unigram log-frequencies:
    its MLM loss is well below a fresh model's ln(V), so "it started from the checkpoint" is visible."""
    root = tmp_path_factory.mktemp("hf")
    files = write_corpus(root / "text", n_docs=14, seed=5)
    tok = tokenizer_for(files)
    V = tok.get_vocab_size()
    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config)
    counts = np.ones(V)
    for f in files:
        for i in tok.encode(f.read_text()).ids:
            counts[i] += 1
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32))
    model.save_pretrained(root / "ckpt")
    save_tokenizer(tok, root / "ckpt")
    return root / "ckpt", root / "text", model.eval(), V


def run(tmp_path, ckpt, text, monkeypatch, name, resume=False, crash_after=None, first=None):
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if crash_after is not None and calls["n"] > crash_after:
            raise RuntimeError("killed")
        if first is not None and not first:
            first.append(batch)
        return pretrain_loss(model, batch)

    monkeypatch.setattr(pretrain_module, "pretrain_loss", loss)
    cfg = PretrainConfig(seq_len=32, batch_size=4, eval_fraction=0.0, cache_dir=str(tmp_path / "cache"),
                         from_checkpoint=str(ckpt))
    tc = TrainConfig(lr=1e-3, max_steps=6, warmup=1, save_every=2, seed=3, progress=False)
    return pretrain([text], tmp_path / name, cfg, tc, resume=resume)


def test_continued_pretraining_starts_at_the_checkpoints_loss(hf_checkpoint, tmp_path, monkeypatch):
    ckpt, text, hf, V = hf_checkpoint
    first = []
    model, result = run(tmp_path, ckpt, text, monkeypatch, "run", first=first)
    assert model.config.task == "pretrain" and "loss_nsp" in result.history[0]  # the checkpoint has an NSP head
    b = first[0]
    with torch.no_grad():
        out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    mlm = torch.nn.functional.cross_entropy(out.prediction_logits[b["mlm_positions"]], b["mlm_labels"])
    nsp = torch.nn.functional.cross_entropy(out.seq_relationship_logits, b["nsp_labels"])
    assert result.history[0]["loss_mlm"] == pytest.approx(float(mlm), abs=1e-4)
    assert result.history[0]["loss_nsp"] == pytest.approx(float(nsp), abs=1e-4)
    assert result.history[0]["loss_mlm"] < math.log(V) - 0.5  # a fresh model starts near ln(V)


def test_continued_pretraining_resumes_exactly_after_a_kill(hf_checkpoint, tmp_path, monkeypatch):
    ckpt, text, _, _ = hf_checkpoint
    _, full = run(tmp_path, ckpt, text, monkeypatch, "full")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, ckpt, text, monkeypatch, "cut", crash_after=5)  # dies in step 6; the last save is step 4's
    _, resumed = run(tmp_path, ckpt, text, monkeypatch, "cut", resume=True)
    assert [h["step"] for h in resumed.history] == [5, 6]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[4:]]  # bit-exact


def test_a_checkpoint_without_heads_continues_with_mlm_only(tmp_path, monkeypatch, hf_checkpoint):
    _, text, hf, _ = hf_checkpoint
    plain = tmp_path / "plain"
    hf.bert.save_pretrained(plain)  # a BertModel: no MLM and no NSP head
    save_tokenizer(load_tokenizer(hf_checkpoint[0]), plain)
    model, result = run(tmp_path, plain, text, monkeypatch, "plain")
    assert model.config.task == "mlm" and "loss_nsp" not in result.history[0]
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())  # kept for classifiers, not trained
    assert torch.equal(model.bert.pooler.weight if hasattr(model.bert.pooler, "weight")
                       else next(model.bert.pooler.parameters()), hf.bert.pooler.dense.weight)
    words = model.bert.embeddings.word_embeddings.weight
    assert 0 < (words - hf.bert.embeddings.word_embeddings.weight).abs().max() < 0.01  # 6 Adam steps of 1e-3 from there


def test_pretrain_command_from_a_checkpoint(hf_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from bertrt.checkpoint import load_checkpoint
    from bertrt.cli import app

    ckpt, text, _, _ = hf_checkpoint
    args = ["pretrain", str(text), "-o", str(tmp_path / "run"), "--from", str(ckpt), "--seq-len", "32",
            "--batch-size", "4", "--eval-fraction", "0", "--cache-dir", str(tmp_path / "cache"), "--max-steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output
    model = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert model.config.task == "pretrain" and model.config.hidden_size == 32  # the checkpoint's shape, not a preset
    bad = CliRunner().invoke(app, args[:-2] + ["--max-steps", "2", "--tokenizer", str(ckpt), "--force"])
    assert bad.exit_code != 0 and "drop --tokenizer" in str(bad.exception)


def test_head_warmup_trains_only_the_fresh_head(tmp_path, monkeypatch, hf_checkpoint):
    """--head-steps: a checkpoint without an MLM head first trains that head alone; the encoder and the tied
    decoder (word embeddings) come out of the warm-up bit-identical, and the held-out MLM loss falls."""
    from bertrt.checkpoint import load_checkpoint

    _, text, hf, _ = hf_checkpoint
    plain = tmp_path / "plain"
    hf.bert.save_pretrained(plain)
    save_tokenizer(load_tokenizer(hf_checkpoint[0]), plain)
    cfg = PretrainConfig(seq_len=32, batch_size=4, eval_fraction=0.2, cache_dir=str(tmp_path / "cache"),
                         from_checkpoint=str(plain), head_steps=30, head_lr=1e-2)
    tc = TrainConfig(lr=1e-3, max_steps=2, warmup=1, seed=3, progress=False)
    model, result = pretrain([text], tmp_path / "run", cfg, tc)
    warm = result.head_warmup
    assert warm is not None and warm.step == 30 and [h["step"] for h in result.history] == [1, 2]
    after = load_checkpoint(tmp_path / "run" / "head-warmup" / "checkpoint")
    source = load_checkpoint(plain)
    theirs = source.state_dict()
    for k, v in after.state_dict().items():
        if k.startswith("bert."):
            assert torch.equal(v, theirs[k]), k  # frozen: encoder, embeddings (the decoder), pooler
    losses = [h["loss"] for h in warm.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1  # 4.79 -> 4.64 here: the random corpus is near ln(V)
    # the main phase trains everything from the warmed head on
    assert not torch.equal(model.bert.embeddings.word_embeddings.weight, source.bert.embeddings.word_embeddings.weight)
    # a checkpoint that already has its heads has nothing to warm up
    cfg2 = PretrainConfig(seq_len=32, batch_size=4, eval_fraction=0.0, cache_dir=str(tmp_path / "cache"),
                          from_checkpoint=str(hf_checkpoint[0]), head_steps=8)
    _, res2 = pretrain([text], tmp_path / "run2", cfg2, tc)
    assert res2.head_warmup is None and not (tmp_path / "run2" / "head-warmup").exists()


def test_head_steps_need_a_checkpoint():
    from bertrt.errors import BertrtError

    with pytest.raises(BertrtError, match="--head-steps"):
        PretrainConfig(head_steps=5)


def test_pretrain_command_warms_a_missing_head(hf_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from bertrt.cli import app

    ckpt, text, hf, _ = hf_checkpoint
    plain = tmp_path / "plain"
    hf.bert.save_pretrained(plain)
    save_tokenizer(load_tokenizer(ckpt), plain)
    args = ["pretrain", str(text), "-o", str(tmp_path / "run"), "--from", str(plain), "--seq-len", "32",
            "--batch-size", "4", "--eval-fraction", "0.2", "--cache-dir", str(tmp_path / "cache"), "--max-steps", "1",
            "--head-steps", "3", "--head-lr", "0.01"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "head warm-up: 3 steps, held-out mlm_loss" in result.output and "step 1" in result.output


def test_an_existing_run_is_refused_before_the_head_warmup(tmp_path, hf_checkpoint):
    from bertrt.errors import OutputExistsError

    _, text, hf, _ = hf_checkpoint
    plain = tmp_path / "plain"
    hf.bert.save_pretrained(plain)
    save_tokenizer(load_tokenizer(hf_checkpoint[0]), plain)
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    cfg = PretrainConfig(seq_len=32, batch_size=4, eval_fraction=0.0, cache_dir=str(tmp_path / "cache"),
                         from_checkpoint=str(plain), head_steps=5)
    with pytest.raises(OutputExistsError, match="already exists"):
        pretrain([text], tmp_path / "run", cfg, TrainConfig(max_steps=1, progress=False))
    assert not (tmp_path / "run" / "head-warmup").exists()  # refused before any warm-up step
