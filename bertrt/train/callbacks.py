"""Callbacks: how anything beyond "forward, backward, step" plugs into the one training loop.

A callback subclasses ``Callback`` and overrides the hooks it needs; ``train(..., callbacks=[...])`` calls them in
list order. Each hook receives the ``Loop`` (the run's live state: step, epoch, model, optimizer, config, out_dir,
is_main). The order within one optimizer step::

    on_train_start(loop)                      once, after a resume has loaded its state
    ... forward + backward of every micro-batch; gradients averaged over the accumulated batch and ranks ...
    on_gradients(loop) -> {name: float}|None  gradients are the batch mean: add a penalty's gradient here; returned
                                              scalars join the step's record (e.g. the penalty's value)
    ... clipping, optimizer.step(); loop.step += 1 ...
    on_optimizer_step(loop)                   gradients still present (AdaLoRA's rank budget reads them)
    on_step_end(loop, record)                 the step's record (loss, lr, grad_norm, tokens/s, ...)
    on_eval(loop, metrics)                    after each evaluation (rank 0 only)
    should_stop(loop) -> bool                 any True ends the run after this step (then the final save)
    on_train_end(loop)                        always, also when the run fails (close files here)

The loop itself always adds ``MetricsLogger`` (metrics.jsonl, TensorBoard and, when asked, W&B) and, with
``progress``, a ``ProgressBar``. ``EarlyStopping`` keeps the best weights by an evaluation metric and stops on patience;
``bertrt.train.continual`` adds the EWC / L2-SP anchors the same way.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Loop:
    """What callbacks see of a running ``train``: read it; change the model's gradients only in ``on_gradients``."""

    model: object  # the bare module (never the DDP wrapper)
    optimizer: object
    config: object  # the TrainConfig
    out_dir: Path
    is_main: bool
    total_steps: int | None
    step: int = 0  # optimizer steps done
    epoch: int = 0
    elapsed_s: float = 0.0
    resumed_from: int | None = None  # the step a resumed run started at; None for a new run


class Callback:
    """Override the hooks you need; every default does nothing."""

    def on_train_start(self, loop: Loop) -> None:
        pass

    def on_gradients(self, loop: Loop) -> dict | None:
        return None

    def on_optimizer_step(self, loop: Loop) -> None:
        pass

    def on_step_end(self, loop: Loop, record: dict) -> None:
        pass

    def on_eval(self, loop: Loop, metrics: dict) -> None:
        pass

    def should_stop(self, loop: Loop) -> bool:
        return False

    def on_train_end(self, loop: Loop) -> None:
        pass


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line from a killed run: dropped


class MetricsLogger(Callback):
    """``metrics.jsonl`` (one JSON object per record) and the same scalars to TensorBoard (when importable) and to
    W&B (``wandb``: a project; see ``bertrt.train.tracking``), on rank 0.

    This is the one place that decides what is logged: every ``log_every`` steps (and step 1) the step's record,
    after every evaluation its metrics; numbers go to the writers as ``{kind}/{name}`` (``train/loss``,
    ``eval/accuracy``). A new run removes earlier records; a resumed run drops the records logged after its
    checkpoint's step (by the run that crashed), so no step appears twice."""

    def __init__(self, log_every: int = 10, wandb: str | None = None):
        self.log_every, self.wandb, self.file, self.writers = log_every, wandb, None, []

    def on_train_start(self, loop: Loop) -> None:
        if not loop.is_main:
            return
        out_dir = loop.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if loop.resumed_from is None:
            path.unlink(missing_ok=True)
            shutil.rmtree(out_dir / "logs", ignore_errors=True)
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= loop.resumed_from]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")
        try:
            self.writers.append(_TensorBoard(out_dir / "logs", loop.resumed_from))
        except ImportError:
            print("tensorboard is not installed: scalars go to metrics.jsonl only (pip install tensorboard)")
        if self.wandb:
            from dataclasses import asdict

            from .tracking import WandbWriter

            self.writers.append(WandbWriter(self.wandb, out_dir, asdict(loop.config), loop.resumed_from))

    def log(self, step: int, kind: str, scalars: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, "kind": kind, **scalars}) + "\n")
        self.file.flush()
        numbers = {f"{kind}/{k}": v for k, v in scalars.items() if isinstance(v, (int, float))}
        for w in self.writers:
            w.write(step, numbers)

    def on_step_end(self, loop: Loop, record: dict) -> None:
        if loop.step % self.log_every == 0 or loop.step == 1:
            self.log(loop.step, "train", {k: v for k, v in record.items() if k != "step"})

    def on_eval(self, loop: Loop, metrics: dict) -> None:
        self.log(loop.step, "eval", metrics)

    def on_train_end(self, loop: Loop) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        writers, self.writers = self.writers, []
        for w in writers:
            w.close()


class _TensorBoard:
    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, step: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.tb.close()


class ProgressBar(Callback):
    """A tqdm bar on rank 0: loss, tokens/s, the time left of a budget; evaluations printed above it."""

    def __init__(self):
        self.bar = None

    def on_train_start(self, loop: Loop) -> None:
        if not loop.is_main:
            return
        from tqdm.auto import tqdm

        budget = loop.config.budget_s
        self.bar = tqdm(total=loop.total_steps, initial=loop.step, unit="step", dynamic_ncols=True,
                        desc="train" + (f" (budget {budget:.0f}s)" if budget else ""))

    def on_step_end(self, loop: Loop, record: dict) -> None:
        if self.bar is None:
            return
        budget = loop.config.budget_s
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                             **({"left": f"{max(0, budget - loop.elapsed_s):.0f}s"} if budget else {}))

    def on_eval(self, loop: Loop, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.write(f"step {loop.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def on_train_end(self, loop: Loop) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EarlyStopping(Callback):
    """Keep the best weights by ``metric`` (higher is better; default: the first one the evaluation returns) and
    stop after ``patience`` evaluations without improvement (None: never stop, still keep the best).

    ``params(model) -> {name: tensor}`` picks what is kept (default: the trainable parameters); after the run,
    ``restore(model)`` copies the best back. ``history`` lists every evaluation with its step."""

    def __init__(self, patience: int | None = None, metric: str | None = None, params=None):
        self.patience, self.metric = patience, metric
        self.params = params or (lambda m: {n: p for n, p in m.named_parameters() if p.requires_grad})
        self.best_score, self.best_step, self.best_state, self.since = -math.inf, None, None, 0
        self.history: list[dict] = []
        self.stopped = False

    def on_eval(self, loop: Loop, metrics: dict) -> None:
        name = self.metric or next(iter(metrics))
        score = metrics[name]
        self.history.append({"step": loop.step, name: score})
        if score > self.best_score:
            self.best_score, self.best_step, self.since = score, loop.step, 0
            self.best_state = {n: p.detach().clone() for n, p in self.params(loop.model).items()}
        else:
            self.since += 1

    def should_stop(self, loop: Loop) -> bool:
        self.stopped = self.stopped or (self.patience is not None and self.since >= self.patience)
        return self.stopped

    def restore(self, model) -> bool:
        """Copy the best weights back into ``model``; False when no evaluation ran."""
        if self.best_state is None:
            return False
        import torch

        with torch.no_grad():
            params = self.params(model)
            for n, v in self.best_state.items():
                params[n].copy_(v)
        return True
