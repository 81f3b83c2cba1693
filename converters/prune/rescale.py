"""Per-layer least-squares rescaling of the units a pruning kept (the "mask tuning" step of Kwon et al. 2022).

Going through the sublayers in order (layer 0 attention, layer 0 FFN, layer 1 attention, ...), each kept head or
neuron i gets a scale m_i chosen so that the pruned sublayer's pre-LayerNorm output, on the pruned model's own
input, matches the unpruned sublayer's pre-LayerNorm output on the unpruned model's input:

    min_m  sum_tokens || x_p + b + sum_i m_i c_i(x_p)  -  (x_o + S_o(x_o)) ||^2  +  d ||m - 1||^2

where c_i is unit i's contribution through the output projection. Working in order lets later layers correct the
error earlier ones leave. The sums are accumulated as normal equations (k x k), so memory does not grow with the
data. The scales are folded into the output projection's columns, so the model's shape does not change. A scale
vector is applied only when it lowers the reconstruction error on the data.
"""

from __future__ import annotations

import torch


def _additive_mask(attention_mask, dtype):  # (B, T) -> (B, 1, 1, T), as bertrt.model.Encoder builds it
    m = 1.0 - attention_mask[:, None, None, :].to(dtype)
    return m * torch.finfo(dtype).min


def _capture(module, store: dict, key: str):
    def hook(mod, args):
        store[key] = args[0]

    return module.register_forward_pre_hook(hook)


def _run(sub, x, mask):
    return sub(x, mask) if mask is not None else sub(x)


def _normal_equations(sub, width: int, units, target, x, valid):
    """Accumulable pieces of the least-squares problem for one batch: G (k, k), g (k,), ||r||^2."""
    # One batch's products in float32 (the k x k Gram matrix of FFN neurons is the costly part: fp64 would double
    # it); the sums over batches are kept in float64 by the caller.
    W = sub.output.weight.float()  # (H, k * width)
    u = units[valid].float()  # (N, k * width): each unit's input to the output projection
    r = (target[valid] - x[valid]).float() - sub.output.bias.float()  # (N, H): what the units must produce
    k = W.shape[1] // width
    if width == 1:  # FFN neurons: c_i = u_i W_i, so G = (u^T u) * (W^T W) elementwise
        G = (u.T @ u) * (W.T @ W)  # (k, k)
        g = (u * (r @ W)).sum(0)  # (k,)
    else:  # heads: c_i = W_i u_i with W_i the head's (H, hs) block
        c = torch.einsum("niw,hiw->nih", u.view(-1, k, width), W.view(-1, k, width))  # (N, k, H)
        G = torch.einsum("nih,njh->ij", c, c)
        g = torch.einsum("nih,nh->i", c, r)
    return G.double().cpu(), g.double().cpu(), (r.double() ** 2).sum().cpu()


def spread_subset(batches: list[dict], max_examples: int) -> list[dict]:
    """Batches holding about ``max_examples`` examples, evenly spread over the list (which may be length-sorted)."""
    sizes = [b["input_ids"].shape[0] for b in batches]
    if sum(sizes) <= max_examples:
        return batches
    n = max(1, round(len(batches) * max_examples / sum(sizes)))
    return [batches[round(i * (len(batches) - 1) / max(n - 1, 1))] for i in range(n)]


def rescale(pruned, original, batches: list[dict], damping: float = 1e-2, max_examples: int | None = None,
            progress: bool = True) -> list[dict]:
    """Rescale the kept units of ``pruned`` in place to match ``original`` layer by layer; return a report row per
    sublayer: layer, part, units, relative error before and after, and whether the scales were applied.

    ``max_examples`` bounds the memory (the inputs of both models at one layer are kept for every example)."""
    from tqdm import tqdm

    report = []
    hs = pruned.config.head_size
    if max_examples is not None:
        batches = spread_subset(batches, max_examples)
    with torch.no_grad():
        states = []  # per batch: pruned-model input, original-model input, additive mask, valid tokens
        device = next(pruned.parameters()).device
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            ids, am = b["input_ids"], b.get("attention_mask", torch.ones_like(b["input_ids"]))
            tt = b.get("token_type_ids", torch.zeros_like(ids))
            states.append([pruned.bert.embeddings(ids, tt), original.bert.embeddings(ids, tt),
                           _additive_mask(am, pruned.bert.embeddings.norm.weight.dtype), am.bool()])
        steps = [(i, part) for i in range(pruned.config.num_layers) for part in ("attention", "ffn")]
        for i, part in tqdm(steps, desc="rescale", unit="sublayer", disable=not progress):
            sub, ref = getattr(pruned.bert.layers[i], part), getattr(original.bert.layers[i], part)
            width = hs if part == "attention" else 1
            k = sub.output.in_features // width
            row = {"layer": i, "part": part, "units": k, "applied": False}
            G = torch.zeros(k, k, dtype=torch.float64)
            g = torch.zeros(k, dtype=torch.float64)
            rr = torch.zeros((), dtype=torch.float64)
            for st in states:
                xp, xo, mask, valid = st
                seen: dict = {}
                handles = [_capture(ref.norm, seen, "target"), _capture(sub.output, seen, "units")]
                try:
                    st[1] = _run(ref, xo, mask if part == "attention" else None)
                    if k > 0:
                        _run(sub, xp, mask if part == "attention" else None)
                finally:
                    for h in handles:
                        h.remove()
                if k > 0:
                    Gb, gb, rb = _normal_equations(sub, width, seen["units"], seen["target"], xp, valid)
                    G, g, rr = G + Gb, g + gb, rr + rb
            if k > 0 and rr > 0:
                ones = torch.ones(k, dtype=torch.float64)
                d = damping * G.diagonal().mean().clamp(min=1e-12)
                try:
                    m = torch.linalg.solve(G + d * torch.eye(k, dtype=torch.float64), g + d * ones)
                except RuntimeError:  # singular even with damping: keep the scales at 1
                    m = ones
                err = lambda v: float((v @ G @ v - 2 * v @ g + rr) / rr)  # noqa: E731 - relative error
                row["error_before"], row["error_after"] = err(ones), err(m)
                if torch.isfinite(m).all() and row["error_after"] < row["error_before"] - 1e-6:  # not mere rounding
                    scale = m.to(sub.output.weight).repeat_interleave(width)  # (k * width,), model dtype/device
                    sub.output.weight.mul_(scale)  # scales column j of the output projection
                    row["applied"] = True
                    row["scale_min"], row["scale_max"] = float(m.min()), float(m.max())
            for st in states:  # advance the pruned model's stream with the (possibly) rescaled sublayer
                st[0] = _run(sub, st[0], st[2] if part == "attention" else None)
            report.append(row)
    return report
