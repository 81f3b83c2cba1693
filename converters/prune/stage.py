"""Pruning as a stage of the pipeline: a checkpoint in, a smaller checkpoint out, with a record of what was done.

``prune_checkpoint`` is the one entry point that ``bertrt prune``, ``bertrt demo`` and the bench scripts call:
read labelled data of the checkpoint's task, rank heads and neurons, remove the least important under the FLOPs
budget (``structured.prune``), optionally recover by distillation (``recover.recover``), and write the pruned
checkpoint with ``pruning.json`` beside its weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bertrt.checkpoint import PRUNING_RECORD

from .recover import RecoverConfig
from .structured import PruneConfig


def prune_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, data: str | os.PathLike,
                     config: PruneConfig, recovery: RecoverConfig | None = None, *,
                     recover_data: str | os.PathLike | None = None, max_examples: int | None = 2048,
                     batch_size: int = 16, seed: int = 0, force: bool = False, progress: bool = True) -> dict:
    """Prune the checkpoint at ``checkpoint`` into a new checkpoint at ``output``; return its record.

    ``data``: labelled examples of the checkpoint's own task (read with ``bertrt.data.tasks``), truncated at
    ``config.seq_len``; importance uses a ``seed``-ed subset of at most ``max_examples`` of them, in batches of
    ``batch_size``. With ``recovery``, the pruned model is then fine-tuned with distillation from the unpruned one
    on ``recover_data`` (default: ``data``, all of it). ``output`` must not exist unless ``force``; that is checked
    before any slow work, and the checkpoint is written atomically.

    The record (also written to ``output``/pruning.json) holds the config, the data used, per-layer sizes and FLOPs
    before and after, the kept indices, the rescaling report and, with recovery, its settings, step count and final
    loss.
    """
    from bertrt.atomic import check_writable
    from bertrt.checkpoint import load_checkpoint
    from bertrt.tokenizer import load_tokenizer

    from .data import load_prune_data, read_features
    from .recover import recover
    from .structured import prune

    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, not {type(config).__name__}")
    if recovery is not None and not isinstance(recovery, RecoverConfig):
        raise TypeError(f"recovery must be a RecoverConfig or None, not {type(recovery).__name__}")
    check_writable(output, force)  # fail before the slow part
    model, tokenizer = load_checkpoint(checkpoint), load_tokenizer(checkpoint)
    batches = load_prune_data(data, model.config, tokenizer, config.seq_len, batch_size, max_examples, seed)
    pruned = prune(model, batches, config, progress)
    record = pruned.pruning
    record["data"] = {"path": str(Path(data).absolute()), "max_examples": max_examples, "batch_size": batch_size,
                      "seed": seed}
    if recovery is not None:
        source = Path(recover_data if recover_data is not None else data)
        features = read_features(source, model.config, tokenizer, config.seq_len)
        history = recover(pruned, model, features, recovery, model.config.pad_token_id, progress)
        record["recovery"] = {**recovery.to_dict(), "data": str(source.absolute()), "examples": len(features),
                              "steps": len(history), "final_loss": history[-1]["loss"] if history else None}
    save_pruned(pruned, output, tokenizer, force)
    return record


def save_pruned(model, path: str | os.PathLike, tokenizer=None, force: bool = False) -> Path:
    """Save a pruned checkpoint atomically: the usual files (per-layer sizes live in config.json) plus
    ``pruning.json``, the record ``prune`` attached (what was kept, FLOPs before and after, the rescaling report)."""
    from bertrt.atomic import atomic_dir
    from bertrt.checkpoint import write_checkpoint_files

    with atomic_dir(path, force) as tmp:
        write_checkpoint_files(model, tmp, tokenizer)
        if getattr(model, "pruning", None):
            (tmp / PRUNING_RECORD).write_text(json.dumps(model.pruning, indent=1) + "\n")
    return Path(path)


def format_summary(record: dict) -> str:
    """Per-layer heads and FFN sizes before -> after, the FLOPs kept and the recovery, as a few lines of text."""
    o, p = record["original"], record["pruned"]
    lines = ["layer  heads       ffn"]
    for i, (h0, h1, f0, f1) in enumerate(zip(o["num_heads"], p["num_heads"], o["ffn_sizes"], p["ffn_sizes"])):
        lines.append(f"{i:>5}  {h0:>2} -> {h1:<3} {f0:>5} -> {f1}")
    lines.append(f"FLOPs/token at length {record['seq_len']}: {o['flops_per_token'] / 1e6:.2f} M -> "
                 f"{p['flops_per_token'] / 1e6:.2f} M ({100 * record['kept_flops']:.1f}% kept)")
    r = record.get("recovery")
    if r:
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        lines.append(f"recovery: {r['epochs']:g} epoch(s) of distillation on {r['examples']} examples, "
                     f"{r['steps']} steps, final loss {loss}")
    return "\n".join(lines)
