"""Fine-tune a BERT checkpoint on classify / ner / qa data, fully or with a PEFT method, on the one training loop.

``finetune(train, out, from_path, FinetuneConfig(...), eval_path=...)``:

1. validates everything before writing anything: the output path, both data files (format, labels unseen in
   training), the ``from`` checkpoint and its tokenizer, the PEFT/merge combination;
2. builds the task model (a fresh head when the checkpoint has none for these labels), applies PEFT if asked;
3. trains with ``bertrt.train.loop.train`` under ``OUT/run/`` (resumable ``checkpoint/``, ``metrics.jsonl``);
   with eval data it evaluates every ``eval_every`` steps (default: every epoch), keeps the best weights by the
   task's metric (accuracy; entity F1; SQuAD F1) and stops after ``patience`` evaluations without improvement;
   ``resume`` continues an interrupted run from its last ``save_every`` checkpoint (the best-so-far tracking
   starts again from there: evaluations before the interruption are not remembered);
4. writes ``OUT`` atomically: a plain checkpoint (full fine-tuning, or PEFT with ``merge``) or a PEFT directory
   (adapter + head, ``peft.json``), plus ``finetune.json`` (config, labels, parameter counts, evaluations, the best
   report). ``OUT/run/`` moves inside it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import tasks as T
from ..errors import BertrtError, PeftError
from .callbacks import Callback, EarlyStopping
from .peft import PeftConfig

DEFAULT_LR = {None: 5e-5, "lora": 5e-4, "adalora": 1e-3, "adapter": 5e-4, "prefix": 1e-2}


@dataclass
class FinetuneConfig:
    task: str
    max_length: int = 128
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float | None = None  # None: 5e-5 for full fine-tuning, higher for PEFT (DEFAULT_LR)
    weight_decay: float = 0.01
    warmup: float = 0.1
    dropout: float | None = None  # None keeps the checkpoint's
    eval_every: int = 0  # optimizer steps; 0 = once per epoch
    save_every: int = 0  # optimizer steps between resumable checkpoints in OUT/run/checkpoint; 0 = at the end only
    patience: int | None = None  # evaluations without improvement before stopping; None = never stop early
    class_weights: bool = False
    adversarial: str | None = None  # "fgm"
    adv_epsilon: float = 1.0
    doc_stride: int | None = None  # QA window overlap; None: max_length // 4
    seed: int = 0
    precision: str = "fp32"
    peft: PeftConfig | None = None
    merge: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.task not in T.TASK_FORMATS:
            raise BertrtError(f"--task must be one of {', '.join(T.TASK_FORMATS)}, not {self.task!r}")
        if self.adversarial not in (None, "fgm"):
            raise BertrtError(f"--adversarial supports 'fgm', not {self.adversarial!r}")
        if self.class_weights and self.task == "qa":
            raise BertrtError("--class-weights applies to classify and ner; QA spans have no classes")
        if self.merge and self.peft is None:
            raise PeftError("--merge folds a PEFT adapter into the weights; it needs --peft lora or adalora")
        if self.merge and self.peft.method not in ("lora", "adalora"):
            raise PeftError(f"--merge cannot fold {self.peft.method}: it adds computation that plain BERT weights "
                            "cannot hold; use --peft lora or adalora, or drop --merge")
        if self.batch_size < 1 or self.max_length < 8:
            raise BertrtError("--batch-size must be >= 1 and --max-length >= 8")
        if self.patience is not None and self.patience < 1:
            raise BertrtError(f"--patience must be >= 1, got {self.patience}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise BertrtError(f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    path: Path
    labels: list[str]
    trainable_parameters: int
    total_parameters: int
    steps: int
    evals: list[dict] = field(default_factory=list)
    best: dict | None = None  # the best evaluation report (eval data given)
    stopped_early: bool = False


def finetune(train_path, out, from_path, config: FinetuneConfig, eval_path=None, force: bool = False,
             resume: bool = False, device: str = "auto") -> FinetuneResult:
    """Fine-tune; see the module docstring. Single process (``device``: auto, cpu or cuda)."""
    from ..atomic import atomic_dir, check_writable
    from ..checkpoint import load_checkpoint, read_config, write_checkpoint_files
    from ..tokenizer import load_tokenizer
    from .evaluate import evaluate
    from .loop import EpochBatches, TrainConfig, train
    from .metrics import main_metric
    from .objectives import balanced_class_weights, make_loss_fn
    from .peft import apply_peft

    out, from_path, task = Path(out), Path(from_path), config.task
    if not resume:
        check_writable(out, force)
    # ---- 1. everything a user can get wrong, before anything is written
    train_ex = T.read_task(train_path, task)
    labels = T.infer_labels(task, train_ex)
    eval_ex = None
    if eval_path is not None:
        eval_ex = T.read_task(eval_path, task)
        T.check_labels(task, eval_ex, labels, eval_path)
    src_cfg, _ = read_config(from_path)  # CheckpointError when it is not a BERT directory
    tok = load_tokenizer(from_path)
    max_length = min(config.max_length, src_cfg.max_position_embeddings)
    torch.manual_seed(config.seed)
    model = load_checkpoint(from_path, task=task, labels=labels or None, init_missing_head=True)
    if src_cfg.task == task and src_cfg.labels != labels:  # same head shape, other classes: start it afresh
        head = model.classifier if task in ("classify", "ner") else model.qa_outputs
        model._init_weights(head)
        model.fresh_weights = sorted(set(model.fresh_weights) | {n for n, _ in model.named_parameters()
                                                                  if n.startswith(("classifier.", "qa_outputs."))})
    if config.dropout is not None:
        _set_dropout(model, config.dropout)

    encode = {"classify": lambda ex: T.encode_classify(ex, tok, labels, max_length),
              "ner": lambda ex: T.encode_ner(ex, tok, labels, max_length),
              "qa": lambda ex: T.encode_qa(ex, tok, max_length, config.doc_stride)}[task]
    train_feats = encode(train_ex)
    eval_feats = encode(eval_ex) if eval_ex is not None else None
    steps_per_epoch = math.ceil(len(train_feats) / config.batch_size)
    total_steps = math.ceil(config.epochs * steps_per_epoch)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    # ---- 2. the method
    peft = None
    if config.peft is not None:
        pc = config.peft
        if pc.method == "adalora" and pc.total_steps is None:
            pc = PeftConfig(**{**pc.to_dict(), "total_steps": total_steps})
        peft = apply_peft(model, pc)
    model.to(_device(device))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    weights = None
    if config.class_weights:
        ids = [f["labels"] for f in train_feats]
        flat = [i for x in ids for i in (x if isinstance(x, list) else [x])]
        weights = balanced_class_weights(flat, len(labels))
    loss_fn = make_loss_fn(task, weights, config.adversarial, config.adv_epsilon,
                           peft.regularizer if peft is not None else None)

    # ---- 3. train, evaluating and keeping the best
    pad_id = tok.token_to_id("[PAD]") or 0
    reports = []

    def eval_fn(m):
        report = evaluate(m, tok, eval_ex, task, labels, max_length, config.doc_stride, features=eval_feats)
        reports.append(report)
        name, score = main_metric(report)
        return {name: score}

    run_dir = out / "run"
    eval_every = config.eval_every or steps_per_epoch
    loop_cfg = TrainConfig(lr=config.lr or DEFAULT_LR[config.peft.method if config.peft else None],
                           weight_decay=config.weight_decay, warmup=config.warmup, max_steps=total_steps,
                           seed=config.seed, precision=config.precision, progress=config.progress,
                           eval_every=eval_every if eval_ex is not None else 0, save_every=config.save_every)
    batches = EpochBatches(train_feats, config.batch_size, lambda fs: T.collate(fs, pad_id), seed=config.seed)
    save_fn = (lambda m, d: peft.write_files(d, from_path, tok)) if peft is not None else None
    keep_best = EarlyStopping(config.patience, params=_kept)
    callbacks = [keep_best] + ([_PeftSteps(peft)] if peft is not None else [])
    result = train(model, batches, loss_fn, loop_cfg, run_dir, eval_fn=eval_fn if eval_ex is not None else None,
                   resume=resume, tokenizer=tok, save_fn=save_fn, force=force, callbacks=callbacks)
    evals = keep_best.history
    best_report = reports[[e["step"] for e in evals].index(keep_best.best_step)] if evals else None
    keep_best.restore(model)
    model.eval().cpu()

    # ---- 4. write OUT atomically, the run folder inside
    info = {"task": task, "labels": labels, "from": str(from_path.resolve()), "config": config.to_dict(),
            "method": config.peft.method if config.peft else "full", "merged": config.merge,
            "trainable_parameters": trainable, "total_parameters": total, "steps": result.step,
            "stopped_early": result.stopped_early, "evals": evals, "best": best_report}
    info["config"]["max_length"] = max_length
    with atomic_dir(out, force=True) as tmp:
        if peft is None:
            write_checkpoint_files(model, tmp, tok)
        elif config.merge:
            write_checkpoint_files(peft.merge(), tmp, tok)
        else:
            peft.write_files(tmp, from_path, tok)
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
        if run_dir.exists():
            os.rename(run_dir, tmp / "run")
    return FinetuneResult(out, labels, trainable, total, result.step, evals, best_report, result.stopped_early)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertrtError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise BertrtError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def _kept(model) -> dict:
    """The parameters best-checkpoint selection keeps: the trainable ones (all of them in full fine-tuning)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _set_dropout(model, p: float) -> None:
    model.config.hidden_dropout = model.config.attention_dropout = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


class _PeftSteps(Callback):
    """AdaLoRA's rank budget update after every optimizer step, while the gradients are still there."""

    def __init__(self, peft):
        self.peft = peft

    def on_optimizer_step(self, loop) -> None:
        self.peft.after_step(loop.step - 1)
