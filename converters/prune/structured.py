"""Structured pruning: remove whole attention heads and FFN neurons, so that every matrix gets smaller.

``prune(model, batches, PruneConfig(keep_flops=0.6))`` follows Kwon et al. 2022 ("A Fast Post-Training Pruning
Framework for Transformers"), without retraining:

1. importance: the Fisher information of a mask on every head and neuron (``importance.py``);
2. mask search under the FLOPs budget: all heads cost the same and all neurons cost the same, so for every possible
   number of kept heads the best choice is the most important heads plus as many of the most important neurons as
   the remaining budget pays for; the head count that keeps the most total importance wins;
3. physical removal: Q/K/V lose the rows of removed heads and the attention output projection their columns; the
   FFN's first matrix loses the rows of removed neurons and its second matrix their columns. Hidden size and
   embeddings never change, and a layer may keep zero heads or zero neurons (its bias, residual and LayerNorm stay);
4. optionally, per-layer least-squares rescaling of the kept units (``rescale.py``).

Unlike unstructured sparsity, this makes ONNX Runtime faster: the matrices it multiplies are smaller.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass

import torch

from bertrt.errors import PruneError
from bertrt.model import Bert, BertConfig

from .importance import check_batches, fisher_importance
from .rescale import rescale


@dataclass
class PruneConfig:
    """What to prune to. Validates itself; ``to_dict()`` is what the manifest and the checkpoint record.

    keep_flops: the fraction of the encoder's FLOPs per token (``BertConfig.flops_per_token``) to keep, in (0, 1].
    seq_len: the sequence length those FLOPs are counted at; attention's share grows with it, so use the length the
        model will serve at.
    rescale: least-squares rescaling of the kept units after removal (cheap; usually recovers accuracy).
    rescale_damping: pulls the scales towards 1, relative to the mean diagonal of the normal equations.
    rescale_examples: at most this many examples for rescaling (memory: 2 x examples x length x hidden floats).
    min_examples: fewer labelled examples than this give importance too noisy to trust.
    """

    keep_flops: float
    seq_len: int = 128
    rescale: bool = True
    rescale_damping: float = 1e-2
    rescale_examples: int = 1024
    min_examples: int = 64

    def __post_init__(self):
        k = self.keep_flops
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or not 0 < k <= 1:
            raise PruneError(f"keep_flops must be a fraction in (0, 1] of the encoder's FLOPs, got {k!r}; "
                             "e.g. 0.6 keeps 60%")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise PruneError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if not self.rescale_damping >= 0:
            raise PruneError(f"rescale_damping must be >= 0, got {self.rescale_damping!r}")
        if not isinstance(self.rescale_examples, int) or self.rescale_examples < 1:
            raise PruneError(f"rescale_examples must be a positive integer, got {self.rescale_examples!r}")
        if not isinstance(self.min_examples, int) or self.min_examples < 1:
            raise PruneError(f"min_examples must be a positive integer, got {self.min_examples!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneConfig":
        return cls(**d)


def unit_flops(cfg: BertConfig, seq_len: int) -> tuple[int, int]:
    """FLOPs per token of one attention head and of one FFN neuron, consistent with ``flops_per_token``."""
    H, hs = cfg.hidden_size, cfg.head_size
    head = 2 * H * 3 * hs + 2 * 2 * seq_len * hs + 2 * hs * H  # Q/K/V rows, QK^T and PV, output columns
    neuron = 2 * 2 * H  # one row of the FFN's first matrix, one column of its second
    return head, neuron


def search_masks(cfg: BertConfig, head_scores, neuron_scores, keep_flops: float, seq_len: int):
    """Choose the units to keep: per layer, sorted index lists ``(keep_heads, keep_neurons)``.

    Maximises the summed importance of kept units subject to their FLOPs fitting ``keep_flops`` of the model's.
    """
    f_head, f_neuron = unit_flops(cfg, seq_len)
    budget = math.floor(keep_flops * cfg.flops_per_token(seq_len) + 1e-6)

    def ranked(scores):  # (layer, index) of every unit, most important first; ties keep model order
        units = [(float(s), layer, j) for layer, per in enumerate(scores) for j, s in enumerate(per.tolist())]
        order = sorted(range(len(units)), key=lambda n: -units[n][0])
        return [units[n] for n in order]

    heads, neurons = ranked(head_scores), ranked(neuron_scores)
    head_sum = [0.0]
    for s, _, _ in heads:
        head_sum.append(head_sum[-1] + s)
    neuron_sum = [0.0]
    for s, _, _ in neurons:
        neuron_sum.append(neuron_sum[-1] + s)
    best = None
    for n in range(len(heads) + 1):
        rest = budget - n * f_head
        if rest < 0:
            break
        k = min(len(neurons), rest // f_neuron)
        score = head_sum[n] + neuron_sum[k]
        if best is None or score > best[0]:
            best = (score, n, k)
    _, n, k = best
    keep_heads = [sorted(j for _, layer, j in heads[:n] if layer == i) for i in range(cfg.num_layers)]
    keep_neurons = [sorted(j for _, layer, j in neurons[:k] if layer == i) for i in range(cfg.num_layers)]
    return keep_heads, keep_neurons


def remove_units(model: Bert, keep_heads: list[list[int]], keep_neurons: list[list[int]]) -> Bert:
    """A new model with only the given heads and neurons of each layer; ``model`` is left unchanged."""
    cfg = model.config
    if len(keep_heads) != cfg.num_layers or len(keep_neurons) != cfg.num_layers:
        raise ValueError(f"need one keep list per layer ({cfg.num_layers})")
    hs = cfg.head_size
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, (heads, neurons) in enumerate(zip(keep_heads, keep_neurons)):
        if any(not 0 <= h < cfg.num_heads[i] for h in heads) or any(not 0 <= n < cfg.ffn_sizes[i] for n in neurons):
            raise ValueError(f"layer {i}: a kept index is out of range")
        rows = torch.tensor([h * hs + c for h in heads for c in range(hs)], dtype=torch.long)  # head h's features
        cols = torch.tensor(neurons, dtype=torch.long)
        a, f = f"bert.layers.{i}.attention.", f"bert.layers.{i}.ffn."
        for p in ("query", "key", "value"):
            state[a + p + ".weight"] = state[a + p + ".weight"][rows]  # (nh' * hs, H)
            state[a + p + ".bias"] = state[a + p + ".bias"][rows]
        state[a + "output.weight"] = state[a + "output.weight"][:, rows]  # (H, nh' * hs)
        state[f + "intermediate.weight"] = state[f + "intermediate.weight"][cols]  # (ffn', H)
        state[f + "intermediate.bias"] = state[f + "intermediate.bias"][cols]
        state[f + "output.weight"] = state[f + "output.weight"][:, cols]  # (H, ffn')
    new_cfg = BertConfig.from_dict({**cfg.to_dict(), "num_heads": [len(h) for h in keep_heads],
                                    "ffn_sizes": [len(n) for n in keep_neurons]})
    with warnings.catch_warnings():  # a layer with zero units has zero-element weights; initialising them is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        pruned = Bert(new_cfg)
    pruned.load_state_dict(state)
    first = next(model.parameters())
    return pruned.to(device=first.device, dtype=first.dtype).eval()


def prune(model: Bert, data: list[dict], config: PruneConfig, progress: bool = True) -> Bert:
    """Prune ``model`` to ``config.keep_flops`` of its encoder FLOPs; return a new, smaller model.

    ``data`` is a list of batches of labelled examples of the model's task: dicts of tensors with ``input_ids``,
    ``attention_mask``, ``token_type_ids`` and the task's labels (``labels`` for classify (B,) and ner (B, T, -100
    where ignored); ``start_positions``/``end_positions`` for qa). ``model`` is not changed. The result carries
    ``.pruning``, a JSON-ready summary: the config, per-layer sizes before and after, FLOPs, the rescaling report.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, not {type(config).__name__}")
    cfg = model.config
    n = check_batches(cfg.task, data)
    if n < config.min_examples:
        raise PruneError(f"{n} labelled examples are too few to estimate head and neuron importance (need at least "
                         f"{config.min_examples}; a few hundred to a few thousand work well): give more data")
    head_scores, neuron_scores = fisher_importance(model, data, progress)
    keep_heads, keep_neurons = search_masks(cfg, head_scores, neuron_scores, config.keep_flops, config.seq_len)
    pruned = remove_units(model, keep_heads, keep_neurons)
    rescaled = rescale(pruned, model, data, config.rescale_damping, config.rescale_examples, progress) if config.rescale else []
    before, after = cfg.flops_per_token(config.seq_len), pruned.config.flops_per_token(config.seq_len)
    pruned.pruning = {
        "method": "fisher-mask-search" + ("+rescale" if config.rescale else ""), "config": config.to_dict(),
        "examples": n, "seq_len": config.seq_len,
        "original": {"num_heads": list(cfg.num_heads), "ffn_sizes": list(cfg.ffn_sizes), "flops_per_token": before},
        "pruned": {"num_heads": pruned.config.num_heads, "ffn_sizes": pruned.config.ffn_sizes,
                   "flops_per_token": after},
        "kept_flops": after / before if before else 1.0,
        "kept_heads": keep_heads, "kept_neurons": keep_neurons, "rescale": rescaled,
    }
    return pruned
