"""Pretraining examples by construction, exact MLM+NSP accumulation, and the pretrain command end to end."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import bertrt.train.pretrain as pretrain_module
from bertrt.checkpoint import load_checkpoint
from bertrt.cli import app
from bertrt.data.corpus import build_corpus
from bertrt.data.pretraining import (IS_NEXT, NOT_NEXT, ExampleConfig, Masker, PretrainBatches, build_packed,
                                     build_pairs, collate, pretrain_counts, pretrain_loss)
from bertrt.model import Bert, BertConfig
from bertrt.train.loop import TrainConfig, train
from bertrt.train.pretrain import PretrainConfig, parse_duration, pretrain

from .pretrain_fixtures import tokenizer_for, write_corpus

TINY = {"hidden_size": 32, "num_heads": [2, 2], "ffn_sizes": [64, 64], "head_size": 16,
        "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def corpus_and_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    files = write_corpus(root / "text", n_docs=12)
    tok = tokenizer_for(files)
    return build_corpus(files, tok, root / "cache", progress=False), tok, files, root


def doc_of(corpus, token):
    return int(np.searchsorted(corpus.sentence_offsets[corpus.document_offsets], token, side="right") - 1)


def test_nsp_pairs_are_correct_by_construction(corpus_and_tok):
    corpus, _, _, _ = corpus_and_tok
    docs = np.arange(corpus.num_documents)
    cfg = ExampleConfig(seq_len=32, short_seq_prob=0.2)
    labels = []
    for epoch in range(8):
        rows = build_pairs(corpus, docs, cfg, np.random.default_rng([0, epoch]))
        for a0, a1, b0, b1, label in rows:
            assert 1 <= a1 - a0 and 1 <= b1 - b0 and (a1 - a0) + (b1 - b0) <= 32 - 3
            if label == IS_NEXT:  # B starts exactly where A ends, at a sentence boundary, in the same document
                assert b0 == a1 and a1 in set(corpus.sentence_offsets.tolist())
                assert doc_of(corpus, a0) == doc_of(corpus, b1 - 1)
            else:
                assert label == NOT_NEXT
                assert doc_of(corpus, a0) == doc_of(corpus, a1 - 1) != doc_of(corpus, b0) == doc_of(corpus, b1 - 1)
        labels += rows[:, 4].tolist()
    assert abs(np.mean(labels) - 0.5) < 0.04, np.mean(labels)
    assert len(labels) > 400


def test_packed_examples_cover_every_token_once(corpus_and_tok):
    corpus, _, _, _ = corpus_and_tok
    docs = np.arange(corpus.num_documents)
    rows = build_packed(corpus, docs, ExampleConfig(seq_len=24, nsp=False), np.random.default_rng(0))
    assert (rows[:, 4] == -1).all() and (rows[:, 1] - rows[:, 0] <= 22).all()
    covered = np.zeros(corpus.num_tokens, dtype=int)
    for a0, a1, *_ in rows:
        covered[a0:a1] += 1
        assert doc_of(corpus, a0) == doc_of(corpus, a1 - 1)
    assert (covered == 1).all()


def test_collate_builds_cls_a_sep_b_sep(corpus_and_tok):
    corpus, tok, _, _ = corpus_and_tok
    masker = Masker(tok)
    rows = np.array([[0, 3, 10, 12, IS_NEXT], [5, 6, 20, 21, NOT_NEXT]])
    batch = collate(corpus, rows, masker, np.random.default_rng(0))
    ids = batch["input_ids"].numpy().copy()
    ids[batch["mlm_positions"].numpy()] = batch["mlm_labels"].numpy()  # undo the corruption
    v = tok.get_vocab()
    c = corpus.ids
    assert ids[0].tolist() == [v["[CLS]"], *c[0:3], v["[SEP]"], *c[10:12], v["[SEP]"]]
    assert ids[1].tolist() == [v["[CLS]"], *c[5:6], v["[SEP]"], *c[20:21], v["[SEP]"], 0, 0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["nsp_labels"].tolist() == [IS_NEXT, NOT_NEXT]


def test_mlm_nsp_accumulation_equals_one_big_batch(corpus_and_tok, tmp_path):
    corpus, tok, _, _ = corpus_and_tok
    masker = Masker(tok)
    rows = build_pairs(corpus, np.arange(corpus.num_documents), ExampleConfig(seq_len=32, short_seq_prob=0.5),
                       np.random.default_rng(1))
    rows = rows[np.argsort(rows[:, 1] - rows[:, 0] + rows[:, 3] - rows[:, 2], kind="stable")]
    big = collate(corpus, np.concatenate([rows[:1], rows[-5:]]), masker, np.random.default_rng(2))  # short + long
    n_first = int(big["mlm_positions"][:1].sum())

    def part(sl, lab):
        return {k: (v[lab] if k == "mlm_labels" else v[sl]) for k, v in big.items()}

    small = [part(slice(0, 1), slice(0, n_first)), part(slice(1, 6), slice(n_first, None))]
    counts = [pretrain_counts(b) for b in small]
    assert counts[0]["mlm"] / counts[0]["nsp"] != counts[1]["mlm"] / counts[1]["nsp"]  # uneven on purpose

    def model():
        torch.manual_seed(0)
        return Bert(BertConfig(**TINY, vocab_size=tok.get_vocab_size(), task="pretrain", hidden_dropout=0.0,
                               attention_dropout=0.0))

    cfg = dict(max_steps=1, clip=None, progress=False)
    a = train(model(), small, pretrain_loss, TrainConfig(grad_accum=2, **cfg), tmp_path / "a", count_fn=pretrain_counts)
    b = train(model(), [big], pretrain_loss, TrainConfig(**cfg), tmp_path / "b", count_fn=pretrain_counts)
    ha, hb = a.history[0], b.history[0]
    for key in ("loss", "loss_mlm", "loss_nsp"):
        assert ha[key] == pytest.approx(hb[key], rel=1e-6)
    assert ha["grad_norm"] == pytest.approx(hb["grad_norm"], rel=1e-5)


def test_epochs_reshuffle_and_remask(corpus_and_tok):
    corpus, tok, _, _ = corpus_and_tok
    data = PretrainBatches(corpus, np.arange(corpus.num_documents), Masker(tok), ExampleConfig(seq_len=32), 4, seed=3)
    e0, e0_again, e1 = data(0), data(0), data(1)
    assert all(torch.equal(e0[2][k], e0_again[2][k]) for k in e0[2])  # deterministic: resume can jump to it
    assert not torch.equal(e0[0]["mlm_positions"], e1[0]["mlm_positions"]) or e0[0]["input_ids"].shape != \
        e1[0]["input_ids"].shape


def cli(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_pretrain_command_end_to_end_and_resume(corpus_and_tok, tmp_path):
    _, _, files, root = corpus_and_tok
    out = tmp_path / "run"
    args = ["pretrain", str(root / "text"), "-o", str(out), "--vocab-size", "120", "--preset", "tiny",
            "--seq-len", "32", "--batch-size", "4", "--eval-fraction", "0.2", "--eval-every", "2",
            "--cache-dir", str(tmp_path / "cache"), "--save-every", "2"]
    text = cli(args + ["--max-steps", "3"])
    assert "step 3" in text and "nsp_accuracy" in text
    model = load_checkpoint(out / "checkpoint")
    assert model.config.task == "pretrain" and model.config.num_layers == 2 and model.config.hidden_size == 128
    state = json.loads((out / "checkpoint/train_state/state.json").read_text())
    assert state["step"] == 3
    cli(args + ["--max-steps", "5", "--resume"])
    assert json.loads((out / "checkpoint/train_state/state.json").read_text())["step"] == 5
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 3, 4, 5]
    result = CliRunner().invoke(app, args + ["--max-steps", "3"])  # an existing run is not overwritten
    assert result.exit_code != 0 and "already exists" in str(result.exception)


def test_pretrain_kill_and_resume_is_exact(corpus_and_tok, tmp_path, monkeypatch):
    _, _, _, root = corpus_and_tok
    cfg = PretrainConfig(vocab_size=120, seq_len=32, batch_size=4, eval_fraction=0.0, whole_word=True,
                         cache_dir=str(tmp_path / "cache"), model_overrides=TINY)

    def run(name, resume=False, crash_after=None):
        calls = {"n": 0}
        def loss(model, batch):
            calls["n"] += 1
            if crash_after is not None and calls["n"] > crash_after:
                raise RuntimeError("killed")  # as if the process died mid-step
            return pretrain_loss(model, batch)

        monkeypatch.setattr(pretrain_module, "pretrain_loss", loss)
        tc = TrainConfig(lr=1e-3, max_steps=8, warmup=2, grad_accum=2, save_every=4, seed=1, progress=False)
        return pretrain([root / "text"], tmp_path / name, cfg, tc, resume=resume)[1]

    full = run("full")
    with pytest.raises(RuntimeError, match="killed"):
        run("killed", crash_after=2 * 6)  # dies in step 7; the last checkpoint is step 4's
    resumed = run("killed", resume=True)
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history[4:]]


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(Exception, match="30m"):
        parse_duration("half an hour")
