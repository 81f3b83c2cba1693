"""Pretraining: corpus -> tokenizer -> MLM (+ NSP) examples -> the training loop -> checkpoint.

From scratch (a preset, a tokenizer trained on the corpus or given), or continued from an existing checkpoint
(``PretrainConfig.from_checkpoint``: any bertrt or Hugging Face BERT directory, with its own tokenizer and
weights - domain-adaptive pretraining). A continued run keeps MLM, and NSP when the checkpoint has an NSP head; a
checkpoint without an MLM head (a plain ``BertModel`` such as sentence-transformers' MiniLM) gets a fresh one, whose
output layer is tied to the pretrained word embeddings as always.

``pretrain(files, out_dir, PretrainConfig(...), TrainConfig(...))`` is what ``bertrt pretrain`` runs, in one
process or under ``torchrun`` (rank 0 trains the tokenizer and tokenizes the corpus into the shared cache while
the others wait; each rank then trains on its own shard of the batches; only rank 0 writes).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.corpus import build_corpus, collect_files, default_cache_dir, iter_documents
from ..data.pretraining import (ExampleConfig, Masker, PretrainBatches, evaluate, pretrain_counts, pretrain_loss,
                                split_documents)
from ..errors import BertrtError
from ..model import PRESETS, Bert, BertConfig
from . import distributed as D
from .loop import TrainConfig, TrainResult, check_run_folder, train

EVAL_SEED = 20250101  # held-out examples and their masks are the same in every run, so curves compare


@dataclass
class PretrainConfig:
    preset: str = "mini"
    tokenizer: str | None = None  # a tokenizer file or folder; None trains one on the corpus
    vocab_size: int = 30522  # when training the tokenizer
    lowercase: bool = True  # when training the tokenizer
    seq_len: int = 128
    batch_size: int = 32  # sequences per micro-batch per process
    nsp: bool = True
    mlm_prob: float = 0.15
    whole_word: bool = False
    short_seq_prob: float = 0.1
    documents: str = "auto"  # "auto", "file" or "blank" (see bertrt.data.corpus)
    eval_fraction: float = 0.01  # share of documents held out for evaluation
    eval_batches: int = 20  # at most this many held-out batches per evaluation
    cache_dir: str | None = None  # corpus cache; must be shared by all ranks (default ~/.cache/bertrt)
    device: str = "auto"
    model_overrides: dict = field(default_factory=dict)  # extra BertConfig fields (hidden sizes, dropout, ...)
    from_checkpoint: str | None = None  # continue from this checkpoint (its tokenizer, weights and heads)
    head_steps: int = 0  # with from_checkpoint: steps that train only the heads it lacks, everything else frozen
    head_lr: float = 1e-3  # peak learning rate of those steps

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise BertrtError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.batch_size < 1:
            raise BertrtError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.from_checkpoint and self.tokenizer:
            raise BertrtError("--from continues with the checkpoint's own tokenizer; drop --tokenizer")
        if self.head_steps < 0 or self.head_lr <= 0:
            raise BertrtError(f"--head-steps must be >= 0 and --head-lr > 0 (got {self.head_steps}, {self.head_lr})")
        if self.head_steps and not self.from_checkpoint:
            raise BertrtError("--head-steps warms up the heads a --from checkpoint lacks; a fresh model has no "
                              "trained encoder to freeze")


def _tokenizer(files: list[Path], cfg: PretrainConfig, out_dir: Path, resume: bool):
    from ..tokenizer import load_tokenizer, train_tokenizer

    if resume:  # the run's own tokenizer, so ids cannot drift
        return load_tokenizer(out_dir / "checkpoint")
    if cfg.tokenizer or cfg.from_checkpoint:
        return load_tokenizer(cfg.tokenizer or cfg.from_checkpoint)
    cache = Path(cfg.cache_dir or default_cache_dir()).parent / "tokenizers"
    from ..digest import sha256_json

    key = sha256_json([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
                      + [cfg.vocab_size, cfg.lowercase, cfg.documents])[:24]
    path = cache / key / "tokenizer.json"
    if D.rank() == 0 and not path.is_file():
        from ..atomic import atomic_dir
        from ..tokenizer import save_tokenizer

        text_files = [f for f in files if f.suffix.lower() not in (".jsonl", ".json")]
        with tempfile.TemporaryDirectory() as tmp:
            jsonl = [f for f in files if f not in text_files]
            if jsonl:  # the trainer reads text files: write the JSONL records' text out once
                extracted = Path(tmp) / "jsonl.txt"
                with open(extracted, "w", encoding="utf-8") as fh:
                    for doc in iter_documents(jsonl):
                        fh.write(doc + "\n")
                text_files.append(extracted)
            tok = train_tokenizer(text_files, vocab_size=cfg.vocab_size, lowercase=cfg.lowercase)
        with atomic_dir(path.parent, force=True) as tmp:
            save_tokenizer(tok, tmp)
    D.barrier()
    return load_tokenizer(path)


def build_model(cfg: PretrainConfig, vocab_size: int) -> Bert:
    task = "pretrain" if cfg.nsp else "mlm"
    overrides = {"max_position_embeddings": max(512, cfg.seq_len), "with_pooler": cfg.nsp,
                 **cfg.model_overrides, "vocab_size": vocab_size, "task": task}
    if "num_heads" in overrides or "hidden_size" in overrides:
        return Bert(BertConfig(**overrides))
    return Bert(BertConfig.preset(cfg.preset, **overrides))


def continued_task(path, nsp: bool = True) -> str:
    """"pretrain" (MLM + NSP) when ``nsp`` is wanted and the checkpoint at ``path`` has an NSP head, else "mlm"."""
    from ..checkpoint import read_config

    src, _ = read_config(Path(path))
    return "pretrain" if nsp and src.task == "pretrain" else "mlm"


def load_continued(path, task: str, seq_len: int) -> Bert:
    """The checkpoint at ``path`` with the heads of ``task`` (a missing MLM head starts fresh). In MLM-only runs a
    pooler the checkpoint carries is kept but frozen: nothing trains it, and a later classifier starts from it."""
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(path, task=task, init_missing_head=True)
    if seq_len > model.config.max_position_embeddings:
        raise BertrtError(f"--seq-len {seq_len} is longer than {path}'s {model.config.max_position_embeddings} "
                          "positions; lower --seq-len")
    if task == "mlm" and model.bert.pooler is not None:
        for p in model.bert.pooler.parameters():
            p.requires_grad_(False)
    return model.train()


def pretrain(files: list[str | os.PathLike], out_dir: str | os.PathLike, cfg: PretrainConfig,
             train_cfg: TrainConfig, resume: bool = False, force: bool = False) -> tuple[Bert, TrainResult]:
    """Pretrain a model from scratch or from ``cfg.from_checkpoint`` (or ``resume`` the run in ``out_dir``); return
    it and the loop's result."""
    out_dir = Path(out_dir)
    if cfg.from_checkpoint:  # the checkpoint decides NSP (its head) and the model; a resume rebuilds the run's own
        source = out_dir / "checkpoint" if resume else Path(cfg.from_checkpoint)
        task = continued_task(cfg.from_checkpoint, cfg.nsp)
        if cfg.nsp and task == "mlm" and D.rank() == 0:
            print(f"{cfg.from_checkpoint} has no NSP head: continuing with MLM only")
        cfg = replace(cfg, nsp=task == "pretrain")
    _, _, device = D.init_distributed(cfg.device)
    files = collect_files(files)
    tok = _tokenizer(files, cfg, out_dir, resume)
    if D.rank() == 0:  # tokenize once; the other ranks open the finished cache
        corpus = build_corpus(files, tok, cfg.cache_dir, cfg.documents, progress=train_cfg.progress)
    D.barrier()
    if D.rank() != 0:
        corpus = build_corpus(files, tok, cfg.cache_dir, cfg.documents, progress=False)
    train_docs, eval_docs = split_documents(corpus.num_documents, cfg.eval_fraction,
                                            min_eval=(2 if cfg.nsp else 1) if cfg.eval_fraction > 0 else 0)
    examples = ExampleConfig(seq_len=cfg.seq_len, short_seq_prob=cfg.short_seq_prob, nsp=cfg.nsp,
                             mlm_prob=cfg.mlm_prob, whole_word=cfg.whole_word)
    masker = Masker(tok, cfg.mlm_prob, cfg.whole_word)
    data = PretrainBatches(corpus, train_docs, masker, examples, cfg.batch_size, seed=train_cfg.seed)
    eval_fn = None
    if len(eval_docs):
        held_out = PretrainBatches(corpus, eval_docs, masker, examples, cfg.batch_size, seed=EVAL_SEED)(0)
        eval_batches = [held_out[i] for i in range(min(cfg.eval_batches, len(held_out)))]
        eval_fn = lambda model: evaluate(model, eval_batches)  # noqa: E731

    torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    warm = None
    if cfg.from_checkpoint:
        model = load_continued(source, task, cfg.seq_len).to(device)
        if tok.get_vocab_size() > model.config.vocab_size:
            raise BertrtError(f"{source}'s tokenizer has {tok.get_vocab_size()} tokens but its model only "
                              f"{model.config.vocab_size} embeddings; the checkpoint is inconsistent")
        if cfg.head_steps and not resume:
            check_run_folder(out_dir, resume, force)  # before the warm-up, not after it
            warm = warm_fresh_heads(model, data, cfg, train_cfg, out_dir, eval_fn, tok)
    else:
        model = build_model(cfg, tok.get_vocab_size()).to(device)
    result = train(model, data, pretrain_loss, train_cfg, out_dir, eval_fn=eval_fn, resume=resume,
                   count_fn=pretrain_counts, tokenizer=tok, force=force)
    result.head_warmup = warm
    return model, result


def warm_fresh_heads(model: Bert, data, cfg: PretrainConfig, train_cfg: TrainConfig, out_dir: Path, eval_fn,
                     tok) -> TrainResult | None:
    """Train only the freshly initialised head weights of a continued model for ``cfg.head_steps`` steps (under
    ``out_dir/head-warmup``), the encoder and embeddings frozen, and return that run's result (None when the
    checkpoint brought every head). A random MLM head sends noise back into the encoder it is meant to adapt: a
    checkpoint without one (a sentence encoder, a classifier) first learns to read its own hidden states. The
    tied decoder (the word embeddings) stays frozen too, so the encoder's vocabulary does not drift. A kill during
    the warm-up restarts it: it is short, and the main run's checkpoints begin after it."""
    fresh = set(getattr(model, "fresh_weights", []))
    if not fresh:
        return None
    frozen = [p for n, p in model.named_parameters() if p.requires_grad and n not in fresh]
    for p in frozen:
        p.requires_grad_(False)
    try:
        warm_cfg = replace(train_cfg, lr=cfg.head_lr, max_steps=cfg.head_steps, epochs=None, budget_s=None,
                           warmup=0.1, eval_every=0, save_every=0, wandb=None)
        if D.rank() == 0:
            print(f"warming up the fresh head ({len(fresh)} tensors) for {cfg.head_steps} steps, the rest frozen")
        return train(model, data, pretrain_loss, warm_cfg, out_dir / "head-warmup", eval_fn=eval_fn,
                     count_fn=pretrain_counts, tokenizer=tok, force=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def parse_duration(text: str) -> float:
    """'90s', '30m', '1.5h', '1h30m' or plain seconds -> seconds."""
    import re

    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", t):
        raise BertrtError(f"cannot read the duration {text!r}; write it like 90s, 30m, 2h or 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
