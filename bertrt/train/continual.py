"""Continual fine-tuning: a model learns new data (and new labels) without forgetting what it knew.

Three tools, all used by ``finetune --from PREVIOUS`` (see ``bertrt.train.finetune``):

- **Head growth** (``continual_labels``, ``grow_head``): the new label set is the previous one, in its order, then
  the labels it did not know (sorted). Rows of the head for known labels are copied bit for bit; rows for new labels
  start fresh. At step 0 the grown model's logits for the old labels are exactly the previous model's.
- **Replay** (``replay_sample``): a fixed rehearsal memory - ``round(ratio * n_old)`` old examples drawn once with the
  run's seed - is mixed into every epoch with all the new examples (so ``ratio`` is the share of the old data the
  method needs to keep); ``replay_repeat`` puts it in every epoch that many times, rebalancing old classes against
  plentiful new data without keeping more of the old.
- **Anchors** (``Anchor``, a loop callback): a penalty ``weight/2 * sum_i F_i (theta_i - theta*_i)^2`` that keeps
  the weights near the previous model's ``theta*``. L2-SP (Li et al. 2018): ``F_i = 1``. EWC (Kirkpatrick et al.
  2017): ``F_i`` is the diagonal of the empirical Fisher information of the previous model on old data (the mean of
  squared per-example gradients of the log-likelihood of the true label), scaled so that its mean is 1 - so one
  ``weight`` means the same strength for both. Anchored: every trainable weight that came from the previous model,
  including the old rows of a grown head; fresh weights (new head rows) are free. The penalty's gradient is added
  analytically once per optimizer step, after the task gradient is averaged, so the objective is
  ``mean task loss + penalty`` whatever the batch or accumulation.
"""

from __future__ import annotations

import math
import random

import torch

from ..errors import BertrtError
from .callbacks import Callback

ANCHORS = ("l2sp", "ewc")
HEADS = ("classifier.weight", "classifier.bias")


def continual_labels(previous: list[str], new: list[str]) -> list[str]:
    """The previous labels in their order, then the new ones it did not know (sorted)."""
    known = set(previous)
    return list(previous) + sorted(l for l in set(new) if l not in known)


def head_rows(previous: list[str], labels: list[str]) -> torch.Tensor:
    """For each previous label, its row in the grown head."""
    return torch.tensor([labels.index(l) for l in previous], dtype=torch.long)


@torch.no_grad()
def grow_head(model, previous_state: dict, previous_labels: list[str]) -> list[str]:
    """Copy the previous head's rows (``previous_state``: the previous model's state dict) into ``model``'s grown
    head at their labels' new positions; return the names of the head weights that were grown."""
    rows = head_rows(previous_labels, model.config.labels)
    params = dict(model.named_parameters())
    for name in HEADS:
        params[name][rows] = previous_state[name].to(params[name].dtype)
    return list(HEADS)


def replay_sample(n_old: int, ratio: float, seed: int) -> list[int]:
    """Indices of the rehearsal memory: ``round(ratio * n_old)`` distinct old examples, drawn once with ``seed``."""
    if not 0 < ratio <= 1:
        raise BertrtError(f"--replay-ratio must be in (0, 1], got {ratio}")
    k = round(ratio * n_old)
    if k == 0:
        raise BertrtError(f"--replay-ratio {ratio} of {n_old} old examples replays none; raise it")
    return sorted(random.Random(seed * 7919 + 17).sample(range(n_old), k))


class Anchor(Callback):
    """The L2-SP / EWC penalty as a loop callback: ``on_gradients`` adds its gradient and reports its value.

    ``refs``: name -> (reference tensor, rows or None): the parameter ``name`` (or its ``rows``) is pulled toward
    the reference. ``fisher``: name -> importance of the same shape as the reference (EWC), None for L2-SP."""

    def __init__(self, kind: str, weight: float, refs: dict, fisher: dict | None = None):
        if kind not in ANCHORS:
            raise BertrtError(f"--anchor must be one of {', '.join(ANCHORS)}, not {kind!r}")
        if weight <= 0:
            raise BertrtError(f"--anchor-weight must be > 0, got {weight}")
        if kind == "ewc" and fisher is None:
            raise BertrtError("the EWC anchor needs a Fisher estimate from the old data")
        self.kind, self.weight, self.refs, self.fisher = kind, weight, refs, fisher

    @classmethod
    def from_model(cls, kind: str, weight: float, model, fresh: list[str], grown: dict | None = None,
                   fisher: dict | None = None) -> "Anchor":
        """Anchor ``model``'s current (step-0) trainable weights, except the ``fresh`` ones; ``grown``: head weight
        name -> rows holding the previous labels (only those rows are anchored)."""
        grown, fresh = grown or {}, set(fresh)
        refs = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name in grown:
                refs[name] = (p.detach()[grown[name]].clone(), grown[name])
            elif name not in fresh:
                refs[name] = (p.detach().clone(), None)
        if fisher is not None:
            fisher = {n: f.to(refs[n][0].device) for n, f in fisher.items() if n in refs}
        return cls(kind, weight, refs, fisher)

    def _diffs(self, model):
        params = dict(model.named_parameters())
        for name, (ref, rows) in self.refs.items():
            p = params[name]
            theta = p[rows] if rows is not None else p
            f = self.fisher[name] if self.fisher is not None else None
            yield name, p, rows, theta - ref, f

    def penalty(self, model) -> torch.Tensor:
        """``weight/2 * sum F (theta - theta*)^2``, differentiable (the loop uses the analytic gradient instead)."""
        total = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
        for _, _, _, d, f in self._diffs(model):
            total = total + ((d.double() ** 2) * (f.double() if f is not None else 1.0)).sum()
        return self.weight / 2 * total

    @torch.no_grad()
    def add_gradient(self, model) -> float:
        """Add the penalty's gradient ``weight * F * (theta - theta*)`` to every anchored parameter's ``.grad``;
        return the penalty's value."""
        value = 0.0
        for _, p, rows, d, f in self._diffs(model):
            g = self.weight * d * (f if f is not None else 1.0)
            value += float((d.double() ** 2 * (f.double() if f is not None else 1.0)).sum())
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if rows is not None:
                p.grad.index_add_(0, rows, g.to(p.grad.dtype))
            else:
                p.grad.add_(g.to(p.grad.dtype))
        return self.weight / 2 * value

    def on_gradients(self, loop) -> dict:
        return {"anchor": self.add_gradient(loop.model)}


def fisher_diagonal(model, batches, loss_fn) -> dict:
    """EWC's importance: the mean over examples of the squared gradient of each example's loss (the negative
    log-likelihood of its true label) under ``model`` in eval mode, scaled to mean 1 over all entries.

    ``batches``: one-example batches; ``loss_fn(model, batch) -> (loss_sum, count)``. Keys are ``model``'s parameter
    names; a previous head's entries have its own shape, which is what ``Anchor`` compares with a grown head's rows.
    """
    was_training = model.training
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n = 0
    for batch in batches:
        loss, count = loss_fn(model, batch)
        if float(count) == 0:
            continue
        grads = torch.autograd.grad(loss / float(count), list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
            if g is not None:
                acc[name] += g.float() ** 2
        n += 1
    model.train(was_training)
    if n == 0:
        raise BertrtError("no old examples to estimate the Fisher information from")
    total = sum(float(a.sum()) for a in acc.values())
    size = sum(a.numel() for a in acc.values())
    mean = total / n / size
    if not math.isfinite(mean) or mean <= 0:
        raise BertrtError("the Fisher estimate is zero: the previous model's loss on the old data has no gradient")
    return {name: a / n / mean for name, a in acc.items()}


def format_continual(report: dict) -> str:
    """The run's continual-learning lines: labels kept and added, replay, anchor, old-task forgetting beside the
    new-task gain (in points)."""
    lines = [f"head: {report['labels_kept']} labels kept, {report['labels_added']} added"]
    if report.get("replayed"):
        times = f", {report['replay_repeat']} times" if report.get("replay_repeat", 1) > 1 else ""
        lines.append(f"replay: {report['replayed']} of {report['old_examples']} old examples in every epoch{times}")
    if report.get("anchor"):
        lines.append(f"anchor: {report['anchor']['kind']} (weight {report['anchor']['weight']:g})")
    for part, word, title in (("old", "forgetting", "old task"), ("new", "gain", "new task")):
        r = report.get(part)
        if r:
            lines.append(f"{title}: {r['metric']} {100 * r['before']:.1f}% -> {100 * r['after']:.1f}% "
                         f"({word} {100 * r[word]:+.1f} points)")
    return "\n".join(lines)
