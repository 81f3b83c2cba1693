"""Structured pruning, its own stage of the pipeline: checkpoint -> smaller checkpoint.

``prune_checkpoint(checkpoint, output, data, PruneConfig(keep_flops=0.6), RecoverConfig(epochs=2))`` is the entry
point (``stage.py``); the CLI, the demo and the bench scripts all call it. The parts, one module each:

- ``data.py``: labelled examples of the checkpoint's task, read, checked and batched;
- ``importance.py``: Fisher importance of every attention head and FFN neuron;
- ``structured.py``: ``PruneConfig``, the FLOPs-budget mask search and the physical removal (``prune``);
- ``rescale.py``: per-layer least-squares rescaling of the kept units;
- ``recover.py``: ``RecoverConfig`` and recovery by distillation from the unpruned model.
"""

from .recover import RecoverConfig, recover
from .stage import format_summary, prune_checkpoint, save_pruned
from .structured import PruneConfig, prune, remove_units, search_masks, unit_flops

__all__ = ["PruneConfig", "RecoverConfig", "format_summary", "prune", "prune_checkpoint", "recover", "remove_units",
           "save_pruned", "search_masks", "unit_flops"]
