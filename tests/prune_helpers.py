"""Tiny models and labelled batches for the pruning tests (2 layers, hidden 32, vocab 120)."""

from __future__ import annotations

import torch

from bertrt.model import Bert, BertConfig
from bertrt.tasks.encode import IGNORE_INDEX

LABELS = ["business", "sport", "tech"]


def tiny_model(task="classify", seed=0, heads=(4, 4), ffn=(48, 48), spread=0.3) -> Bert:
    """A random model whose weights are spread wider than BERT's init, so heads and neurons matter unequally."""
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_heads=list(heads), ffn_sizes=list(ffn), head_size=8,
                     max_position_embeddings=64, task=task, labels=LABELS if task in ("classify", "ner") else [])
    torch.manual_seed(seed)
    model = Bert(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, spread)
    return model


def batches(n_batches=4, batch_size=8, T=12, seed=1, task="classify") -> list[dict]:
    """Random ids with right padding of mixed lengths, and random labels of ``task``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, 120, (batch_size, T), generator=g)
        lengths = torch.randint(T // 2, T + 1, (batch_size,), generator=g)
        lengths[0] = T
        am = (torch.arange(T)[None, :] < lengths[:, None]).long()
        b = {"input_ids": ids * am, "attention_mask": am, "token_type_ids": torch.zeros_like(ids)}
        if task == "classify":
            b["labels"] = torch.randint(0, len(LABELS), (batch_size,), generator=g)
        elif task == "ner":
            b["labels"] = torch.where(am.bool(), torch.randint(0, len(LABELS), (batch_size, T), generator=g), IGNORE_INDEX)
        elif task == "qa":
            b["start_positions"] = torch.randint(0, T // 2, (batch_size,), generator=g)
            b["end_positions"] = b["start_positions"] + 1
        out.append(b)
    return out
