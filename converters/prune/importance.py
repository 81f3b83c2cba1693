"""Fisher importance of attention heads and FFN neurons, in the style of Kwon et al. 2022 ("A Fast Post-Training
Pruning Framework for Transformers").

Every head and every FFN neuron gets a multiplicative mask variable, fixed at 1, attached with forward pre-hooks
(the model itself is not changed). To second order, removing unit i raises the task loss by about ``I_i / 2``,
where ``I_i`` is the diagonal of the empirical Fisher information: the squared gradient of the loss with respect to
the mask, summed over examples. Masks are given one row per example, so one backward pass yields each example's own
gradient (example b's loss depends only on row b).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from bertrt.errors import PruneError
from bertrt.tasks.encode import IGNORE_INDEX

# The label keys a batch must carry for each task whose loss we can compute.
TASK_LABELS = {"classify": ("labels",), "ner": ("labels",), "qa": ("start_positions", "end_positions")}


def _scale_hook(mask: torch.Tensor, width: int):
    """A pre-hook that multiplies the input of a Linear, unit by unit (``width`` features per unit)."""

    def hook(module, args):
        (x,) = args  # (B, T, units * width)
        m = mask.repeat_interleave(width, dim=-1)  # (units * width,) or (B, units * width)
        return (x * (m[:, None, :] if m.dim() == 2 else m),)

    return hook


@contextlib.contextmanager
def unit_masks(model, head_masks, neuron_masks):
    """Inside the block, scale each head's context vector and each FFN neuron's activation by its mask.

    ``head_masks[l]`` is (nh,) or (B, nh) for layer l, ``neuron_masks[l]`` (ffn,) or (B, ffn); ``None`` leaves a
    layer alone. A mask of 0 is exactly what physical removal of the unit computes.
    """
    hs = model.config.head_size
    handles = []
    try:
        for layer, hm, nm in zip(model.bert.layers, head_masks, neuron_masks):
            if hm is not None and layer.attention.num_heads > 0:
                handles.append(layer.attention.output.register_forward_pre_hook(_scale_hook(hm, hs)))
            if nm is not None and layer.ffn.output.in_features > 0:
                handles.append(layer.ffn.output.register_forward_pre_hook(_scale_hook(nm, 1)))
        yield
    finally:
        for h in handles:
            h.remove()


def check_batches(task: str, batches: list[dict]) -> int:
    """Check that ``batches`` carry labels for ``task``; return the number of examples."""
    if task not in TASK_LABELS:
        raise PruneError(f"pruning needs a task loss, and a {task!r} checkpoint has none; prune a fine-tuned "
                         f"checkpoint (task {', '.join(TASK_LABELS)}) and its labelled data")
    need = TASK_LABELS[task]
    n = 0
    for b in batches:
        missing = [k for k in ("input_ids", *need) if k not in b]
        if missing:
            raise PruneError(f"the pruning data has no {', '.join(missing)} but the checkpoint's task is {task!r}: "
                             "give data of the checkpoint's own task")
        n += b["input_ids"].shape[0]
    return n


def task_loss(task: str, out: dict, batch: dict) -> torch.Tensor:
    """The task loss summed over examples (each example's loss is a mean over its own tokens/positions)."""
    if task == "classify":
        return F.cross_entropy(out["logits"], batch["labels"], reduction="sum")
    if task == "ner":
        labels = batch["labels"]  # (B, T), IGNORE_INDEX where ignored
        tok = F.cross_entropy(out["logits"].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        counts = (labels != IGNORE_INDEX).sum(1).clamp(min=1)  # (B,)
        return (tok.sum(1) / counts).sum()
    start = F.cross_entropy(out["start_logits"], batch["start_positions"], reduction="sum")
    end = F.cross_entropy(out["end_logits"], batch["end_positions"], reduction="sum")
    return (start + end) / 2


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def fisher_importance(model, batches: list[dict], progress: bool = True):
    """Per-layer Fisher importance: (heads, neurons), lists of 1-D tensors of length num_heads[l] / ffn_sizes[l]."""
    from tqdm import tqdm

    cfg = model.config
    heads = [torch.zeros(nh, dtype=torch.float64) for nh in cfg.num_heads]
    neurons = [torch.zeros(f, dtype=torch.float64) for f in cfg.ffn_sizes]
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval()  # no dropout: the gradient of the deterministic model
    for p in model.parameters():
        p.requires_grad_(False)  # only the masks need gradients
    try:
        device = next(model.parameters()).device
        for batch in tqdm(batches, desc="importance", unit="batch", disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            B = batch["input_ids"].shape[0]
            hm = [torch.ones(B, nh, device=device, requires_grad=True) for nh in cfg.num_heads]
            nm = [torch.ones(B, f, device=device, requires_grad=True) for f in cfg.ffn_sizes]
            with torch.enable_grad(), unit_masks(model, hm, nm):
                loss = task_loss(cfg.task, model(**model_inputs(batch)), batch)
                masks = [m for m in hm + nm if m.numel() > 0]
                grads = torch.autograd.grad(loss, masks, allow_unused=True)
            it = iter(grads)
            for acc, m in zip(heads + neurons, hm + nm):
                if m.numel() > 0:
                    g = next(it)
                    if g is not None:
                        acc += g.double().pow(2).sum(0).cpu()
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return heads, neurons
