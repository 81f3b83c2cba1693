"""Recovery after pruning: a short fine-tuning of the pruned model with knowledge distillation from the unpruned one.

The loss per example (classify), per labelled token (ner) or per feature (qa) is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * cross-entropy(student, label)

(Hinton et al. 2015). It runs on ``bertrt.train.loop.train``, the loop fine-tuning uses, so recovery gets the same
optimizer, schedule, clipping and logging.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bertrt.errors import PruneError
from bertrt.tasks.encode import IGNORE_INDEX

from .importance import model_inputs


@dataclass
class RecoverConfig:
    """epochs: passes over the data (fractions allowed). lr: peak learning rate (AdamW, linear warm-up and decay).
    temperature / alpha: distillation softness and weight (alpha = 1 is distillation alone, 0 the task loss alone)."""

    epochs: float
    lr: float = 3e-5
    warmup: float = 0.1
    batch_size: int = 16
    temperature: float = 2.0
    alpha: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            raise PruneError(f"recover epochs must be > 0, got {self.epochs!r} (leave recovery out for none)")
        if not self.lr > 0 or not self.temperature > 0 or not 0 <= self.alpha <= 1 or self.batch_size < 1:
            raise PruneError(f"recovery needs lr > 0, temperature > 0, 0 <= alpha <= 1 and batch_size >= 1 (got lr="
                             f"{self.lr}, temperature={self.temperature}, alpha={self.alpha}, "
                             f"batch_size={self.batch_size})")

    def to_dict(self) -> dict:
        return asdict(self)


def _kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) over the last axis, one value per row: (..., C) -> (...)."""
    log_p_t = F.log_softmax(teacher.float() / T, dim=-1)
    log_p_s = F.log_softmax(student.float() / T, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * T * T


def distillation_loss_fn(task: str, teacher, config: RecoverConfig):
    """``loss_fn(model, batch) -> (loss_sum, count)`` in the training loop's contract."""
    T, a = config.temperature, config.alpha

    def loss_fn(model, batch):
        inputs = model_inputs(batch)
        out = model(**inputs)
        with torch.no_grad():
            ref = teacher(**inputs)
        if task == "classify":
            kd = _kd(out["logits"], ref["logits"], T)  # (B,)
            ce = F.cross_entropy(out["logits"].float(), batch["labels"], reduction="none")
            return (a * kd + (1 - a) * ce).sum(), batch["labels"].shape[0]
        if task == "ner":
            keep = batch["labels"] != IGNORE_INDEX  # (B, T)
            kd = _kd(out["logits"][keep], ref["logits"][keep], T)  # (N,)
            ce = F.cross_entropy(out["logits"][keep].float(), batch["labels"][keep], reduction="none")
            return (a * kd + (1 - a) * ce).sum(), int(keep.sum())
        pad = (1 - batch["attention_mask"]).bool()  # qa: no probability on padding, for either model
        total = 0.0
        for key, pos in (("start_logits", "start_positions"), ("end_logits", "end_positions")):
            s, t = out[key].float().masked_fill(pad, -1e4), ref[key].float().masked_fill(pad, -1e4)
            ce = F.cross_entropy(s, batch[pos], reduction="none")
            total = total + (a * _kd(s, t, T) + (1 - a) * ce) / 2
        return total.sum(), batch["input_ids"].shape[0]

    return loss_fn


def recover(pruned, teacher, features: list[dict], config: RecoverConfig, pad_id: int = 0, progress: bool = True):
    """Fine-tune ``pruned`` in place on ``features`` (encoded examples, as ``bertrt.data.tasks`` makes them) with
    distillation from ``teacher``; return the training history (one record per step)."""
    from bertrt.data.tasks import collate
    from bertrt.train.loop import EpochBatches, TrainConfig, train

    if len(features) < config.batch_size:
        raise PruneError(f"recovery needs at least one batch of {config.batch_size} examples; got {len(features)}")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    data = EpochBatches(features, config.batch_size, lambda fs: collate(fs, pad_id), shuffle=True, seed=config.seed)
    train_cfg = TrainConfig(lr=config.lr, warmup=config.warmup, epochs=config.epochs, seed=config.seed,
                            progress=progress)
    loss_fn = distillation_loss_fn(pruned.config.task, teacher, config)
    with tempfile.TemporaryDirectory(prefix="bertrt-recover-") as tmp:  # the loop's checkpoint and logs: discarded
        result = train(pruned, data, loss_fn, train_cfg, tmp, save_fn=lambda m, d: None)
    pruned.eval()
    return result.history
