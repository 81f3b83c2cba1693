"""Fine-tuning losses in the loop's contract ``loss_fn(model, batch) -> (loss_sum, count)``, and FGM.

- classify: cross-entropy per example (optionally class-weighted: then the count is the sum of the weights, so the
  loop's mean is the weighted mean);
- multilabel: binary cross-entropy of each label's sigmoid, summed over labels, per example;
- ner: cross-entropy per labelled token (first sub-tokens only);
- qa: the mean of start and end cross-entropies per feature;
- FGM (Miyato et al. 2017; the "fast gradient method" of adversarial training for text): a second forward pass
  with the word embeddings moved by ``epsilon`` along the normalised gradient of the clean loss; both losses train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tasks.encode import IGNORE_INDEX


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def task_loss(task: str, out: dict, batch: dict, class_weights: torch.Tensor | None = None):
    if task == "qa":
        s = F.cross_entropy(out["start_logits"].float(), batch["start_positions"], reduction="sum")
        e = F.cross_entropy(out["end_logits"].float(), batch["end_positions"], reduction="sum")
        return (s + e) / 2, batch["input_ids"].shape[0]
    if task == "multilabel":  # one sigmoid per label: binary cross-entropy, summed over labels, per example
        loss = F.binary_cross_entropy_with_logits(out["logits"].float(), batch["targets"], reduction="sum")
        return loss, batch["input_ids"].shape[0]
    logits, labels = out["logits"].float(), batch["labels"]
    if task == "ner":
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    w = class_weights.to(logits.device) if class_weights is not None else None
    loss = F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE_INDEX, reduction="sum")
    keep = labels != IGNORE_INDEX
    count = w[labels[keep]].sum() if w is not None else keep.sum()
    return loss, float(count)


def make_loss_fn(task: str, class_weights: torch.Tensor | None = None, adversarial: str | None = None,
                 epsilon: float = 1.0, regularizer=None):
    """The loss for ``task``; ``adversarial="fgm"`` adds FGM's loss; ``regularizer()`` (e.g. AdaLoRA's) is added
    once per example so that the loop's division by the count leaves it unscaled."""

    def loss_fn(model, batch):
        if adversarial != "fgm":
            loss, count = task_loss(task, model(**_inputs(batch)), batch, class_weights)
        else:
            loss, count = _fgm(model, batch, task, class_weights, epsilon)
        if regularizer is not None:
            reg = regularizer()
            if reg is not None:
                loss = loss + reg * count
        return loss, count

    return loss_fn


def _fgm(model, batch, task, class_weights, epsilon):
    bare = getattr(model, "module", model)  # under DDP the loop passes the wrapper
    words = bare.bert.embeddings.word_embeddings
    captured = {}

    def capture(module, inputs, output):
        captured["e"] = output
        return output

    handle = words.register_forward_hook(capture)
    try:
        clean, count = task_loss(task, model(**_inputs(batch)), batch, class_weights)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(clean, captured["e"], retain_graph=True)
    norm = g.norm()
    if not torch.isfinite(norm) or norm == 0:
        return clean, count
    delta = (epsilon * g / norm).detach()  # one step of size epsilon, over the whole batch's embeddings
    handle = words.register_forward_hook(lambda module, inputs, output: output + delta)
    try:
        attacked, _ = task_loss(task, model(**_inputs(batch)), batch, class_weights)
    finally:
        handle.remove()
    return clean + attacked, count


def balanced_class_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """``n / (L * n_c)`` per class (sklearn's "balanced"); classes absent from training get weight 1."""
    counts = torch.bincount(torch.tensor([i for i in label_ids if i != IGNORE_INDEX]), minlength=num_labels).float()
    n = counts.sum()
    return torch.where(counts > 0, n / (num_labels * counts.clamp(min=1)), torch.ones_like(counts))
