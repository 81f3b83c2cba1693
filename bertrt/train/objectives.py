"""Fine-tuning losses in the loop's contract ``loss_fn(model, batch) -> (loss_sum, count)``, and FGM.

- classify: cross-entropy per example (optionally class-weighted: then the count is the sum of the weights, so the
  loop's mean is the weighted mean);
- multilabel: binary cross-entropy of each label's sigmoid, summed over labels, per example;
- ner: cross-entropy per labelled token (first sub-tokens only);
- qa: the mean of start and end cross-entropies per feature;
- FGM (Miyato et al. 2017; the "fast gradient method" of adversarial training for text): a second forward pass
  with the word embeddings moved by ``epsilon`` along the normalised gradient of the clean loss; both losses train.
  The gradient is normalised over the whole batch (one norm for all examples).
- PGD (Madry et al. 2018, on word embeddings): ``steps`` ascent steps, each of size ``alpha`` along the gradient
  normalised *per example*, each followed by the projection of every example's perturbation (all its positions
  and dimensions) onto its own L2 ball of radius ``epsilon``; the clean loss and the loss at the last perturbation
  train. The default step is Madry's ``alpha = 2.5 * epsilon / steps``: the walk can reach the ball's surface and
  move along it. With one step and ``alpha >= epsilon`` PGD is FGM applied to each example alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BertrtError
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


ADVERSARIAL = ("fgm", "pgd")


def pgd_step_size(epsilon: float, steps: int) -> float:
    """PGD's default step: 2.5 * epsilon / steps (Madry et al. 2018)."""
    return 2.5 * epsilon / steps


def make_loss_fn(task: str, class_weights: torch.Tensor | None = None, adversarial: str | None = None,
                 epsilon: float = 1.0, regularizer=None, steps: int = 3, alpha: float | None = None):
    """The loss for ``task``; ``adversarial`` ("fgm" or "pgd", with ``steps`` and step size ``alpha``, default
    ``pgd_step_size``) adds the attacked loss; ``regularizer()`` (e.g. AdaLoRA's) is added once per example so that
    the loop's division by the count leaves it unscaled."""
    if adversarial not in (None, *ADVERSARIAL):
        raise BertrtError(f"adversarial must be one of {', '.join(ADVERSARIAL)}, not {adversarial!r}")
    if adversarial == "pgd" and (steps < 1 or epsilon <= 0 or (alpha is not None and alpha <= 0)):
        raise BertrtError(f"PGD needs steps >= 1, epsilon > 0 and a step size > 0 (got {steps}, {epsilon}, {alpha})")
    alpha = pgd_step_size(epsilon, steps) if alpha is None else alpha

    def loss_fn(model, batch):
        if adversarial == "fgm":
            loss, count = _fgm(model, batch, task, class_weights, epsilon)
        elif adversarial == "pgd":
            loss, count = _pgd(model, batch, task, class_weights, epsilon, steps, alpha)
        else:
            loss, count = task_loss(task, model(**_inputs(batch)), batch, class_weights)
        if regularizer is not None:
            reg = regularizer()
            if reg is not None:
                loss = loss + reg * count
        return loss, count

    return loss_fn


def _word_embeddings(model):
    return getattr(model, "module", model).bert.embeddings.word_embeddings  # under DDP the loop passes the wrapper


def _clean_pass(model, batch, task, class_weights):
    """The clean loss and the word embeddings' output it was computed from (to take the gradient against)."""
    captured = {}

    def capture(module, inputs, output):
        captured["e"] = output
        return output

    handle = _word_embeddings(model).register_forward_hook(capture)
    try:
        clean, count = task_loss(task, model(**_inputs(batch)), batch, class_weights)
    finally:
        handle.remove()
    return clean, count, captured["e"]


def _attacked_loss(model, batch, task, class_weights, delta):
    """The task loss with ``delta`` (batch, seq, hidden) added to the word embeddings."""
    handle = _word_embeddings(model).register_forward_hook(lambda module, inputs, output: output + delta)
    try:
        return task_loss(task, model(**_inputs(batch)), batch, class_weights)[0]
    finally:
        handle.remove()


def _fgm(model, batch, task, class_weights, epsilon):
    clean, count, e = _clean_pass(model, batch, task, class_weights)
    (g,) = torch.autograd.grad(clean, e, retain_graph=True)
    norm = g.norm()
    if not torch.isfinite(norm) or norm == 0:
        return clean, count
    delta = (epsilon * g / norm).detach()  # one step of size epsilon, over the whole batch's embeddings
    return clean + _attacked_loss(model, batch, task, class_weights, delta), count


def per_example_unit(g: torch.Tensor) -> torch.Tensor:
    """``g`` (batch, ...) divided by each example's L2 norm; an example with a zero or non-finite norm gets 0."""
    norms = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    ok = torch.isfinite(norms) & (norms > 0)
    return torch.where(ok, g / torch.where(ok, norms, torch.ones_like(norms)), torch.zeros_like(g))


def project_l2(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each example's ``delta`` (batch, ...) scaled back onto its L2 ball of radius ``epsilon`` if outside it."""
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (epsilon / norms.clamp(min=epsilon))


def pgd_perturbation(model, batch, task, class_weights, epsilon, steps, alpha, clean=None, embeddings=None):
    """PGD's perturbation of the word embeddings (batch, seq, hidden), detached, each example's inside its ball.
    ``clean``/``embeddings``: the clean pass's loss and embedding output when already computed (graph retained)."""
    if clean is None:
        clean, _, embeddings = _clean_pass(model, batch, task, class_weights)
    (g,) = torch.autograd.grad(clean, embeddings, retain_graph=True)
    delta = project_l2(alpha * per_example_unit(g.detach()), epsilon)
    for _ in range(steps - 1):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(_attacked_loss(model, batch, task, class_weights, delta), delta)
        delta = project_l2(delta.detach() + alpha * per_example_unit(g), epsilon)
    return delta.detach()


def _pgd(model, batch, task, class_weights, epsilon, steps, alpha):
    clean, count, e = _clean_pass(model, batch, task, class_weights)
    delta = pgd_perturbation(model, batch, task, class_weights, epsilon, steps, alpha, clean, e)
    return clean + _attacked_loss(model, batch, task, class_weights, delta), count


def balanced_class_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """``n / (L * n_c)`` per class (sklearn's "balanced"); classes absent from training get weight 1."""
    counts = torch.bincount(torch.tensor([i for i in label_ids if i != IGNORE_INDEX]), minlength=num_labels).float()
    n = counts.sum()
    return torch.where(counts > 0, n / (num_labels * counts.clamp(min=1)), torch.ones_like(counts))
