"""Experiment tracking with Weights & Biases: the scalars ``MetricsLogger`` logs, sent to a W&B run as well.

``MetricsLogger`` (``bertrt.train.callbacks``) decides which scalars are logged and when, and writes each record
to ``metrics.jsonl`` and to every writer it holds: TensorBoard's and, with ``TrainConfig(wandb=PROJECT)``
(``--wandb PROJECT`` on ``pretrain`` and ``finetune``), this one. A W&B run holds the same scalars under the same
names (``train/loss``, ``eval/accuracy``, ...) at the same steps, and the loop's config as its config.

The ``wandb`` package is an extra (``pip install 'bertrt[track]'``); it reads its usual environment:
``WANDB_MODE=offline`` logs to ``RUN/wandb/offline-run-*`` without a network (``wandb sync`` uploads it later),
``WANDB_API_KEY``/``wandb login`` for online runs. A resumed run (``--resume``) starts a new W&B run from the step
it resumes at, so no step is logged twice within one W&B run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BertrtError


def check_wandb() -> None:
    """Refuse early (before any training) when ``--wandb`` is asked for and the package is missing."""
    if importlib.util.find_spec("wandb") is None:
        raise BertrtError("--wandb needs the wandb package: pip install 'bertrt[track]' (or pip install wandb)")


class WandbWriter:
    """One W&B run; ``write(step, {tag: value})`` logs a record's scalars at its step, ``close()`` finishes it."""

    def __init__(self, project: str, out_dir: Path, config: dict, resumed_from: int | None = None):
        check_wandb()
        import wandb

        # console="off": W&B would otherwise wrap stdout/stderr (the progress bar, pytest's capture)
        where = Path(out_dir).resolve()  # named after the run folder and its parent (finetune's is OUT/run)
        self.run = wandb.init(project=project, dir=str(out_dir), name=f"{where.parent.name}/{where.name}",
                              config={**config, "resumed_from": resumed_from},
                              settings=wandb.Settings(console="off", silent=True))

    def write(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()
