"""The one training loop: pretraining and fine-tuning both call ``train``.

API
---
::

    from bertrt.train.loop import TrainConfig, train, EpochBatches

    config = TrainConfig(lr=5e-4, max_steps=1000, warmup=0.06, grad_accum=2, precision="bf16",
                         eval_every=200, save_every=500)
    result = train(model, train_data, loss_fn, config, out_dir, eval_fn=None, resume=False, callbacks=[])

``model``
    a ``torch.nn.Module`` already on its device. Under ``torch.distributed`` (see ``bertrt.train.distributed``) the
    loop wraps it in DDP itself; pass the bare module.
``train_data``
    the micro-batches of one epoch: a sequence (``len()`` and ``[i]``) reused every epoch, or a callable
    ``epoch -> sequence`` (a new order or new masks each epoch; ``EpochBatches`` builds one from items + collate).
    Indexing must be deterministic: ``--resume`` jumps straight to (epoch, index), it never replays earlier batches.
    A batch is a dict of tensors (moved to the model's device by the loop) or anything ``loss_fn`` understands.
    Under DDP rank ``r`` of ``W`` takes indices ``r, r+W, r+2W, ...``; every rank gets the same number.
``loss_fn(model, batch) -> (loss_sum, count)``
    the *sum* of per-item losses (a scalar tensor with grad) and the number of items it covers (examples, tokens,
    masked tokens). The loop divides the gradient by the total count over the whole accumulated batch and all
    ranks, so ``grad_accum`` micro-batches (and DDP) give exactly the gradient of one big batch. Several terms with
    their own normalisers (MLM per masked token + NSP per sequence): return ``{"mlm": (sum, n), "nsp": (sum, n)}``
    and pass ``count_fn(batch) -> {"mlm": n, "nsp": n}`` - the counts must come from the batch alone because the
    loop needs them before the backward pass. The loss reported is ``sum(term_sum / term_count)``.
``eval_fn(model) -> {name: float}``
    optional; run on rank 0 in eval mode (no grad, same autocast) every ``eval_every`` steps and at the end.
``callbacks``
    ``bertrt.train.callbacks.Callback`` objects: what the run does beyond forward/backward/step (early stopping,
    penalties such as EWC, AdaLoRA's rank budget, logging) plugs in through their hooks - see that module for
    the hooks and their order. A ``should_stop`` that answers True ends the run after the step (then it saves).
``tokenizer`` / ``save_fn(model, directory)``
    what a checkpoint holds besides ``train_state/``: by default a bertrt ``Bert`` is written as a Hugging Face
    style checkpoint (config.json, model.safetensors, tokenizer files); pass ``save_fn`` for other models.

Output, under ``out_dir``: ``checkpoint/`` (the latest checkpoint, replaced atomically every ``save_every`` steps
and at the end, with ``train_state/``: weights, optimizer, step, epoch, data position, elapsed time - see
``bertrt.train.state``), ``logs/`` (TensorBoard scalars, when ``tensorboard`` is installed), ``metrics.jsonl``
(the same scalars, one JSON object per line) and with ``wandb=PROJECT`` a W&B run (``wandb/``; see
``bertrt.train.tracking``). Only rank 0 writes.

Returns a ``TrainResult``: the final step, the per-step history (loss, terms, lr, grad norm, tokens/s) of this
call, the evaluations, elapsed seconds, and the checkpoint path.

Behaviour: AdamW (fused where the device supports it) with no weight decay on biases and LayerNorm weights (every
parameter with fewer than 2 dimensions); linear warm-up then linear decay to 0 over ``max_steps`` (or over the
``budget_s`` wall-clock when only a budget is given); gradient clipping by global norm; bf16 autocast; torch RNG
reseeded from (seed, rank, step) at every step, so dropout after a resume is exactly what it would have been. A
run with a step or epoch limit that is killed and resumed gives exactly the same losses as an uninterrupted one
(a wall-clock budget makes the schedule depend on time, so such runs resume correctly but not bit-exactly).
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_dir
from ..errors import BertrtError, CheckpointError, OutputExistsError
from . import distributed as D
from .callbacks import Callback, Loop, MetricsLogger, ProgressBar
from .state import load_train_state, save_train_state

PRECISIONS = ("fp32", "bf16")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks of up to ``limit`` bytes for reuse instead of unmapping them.

    By default glibc serves every block over ~32 MiB with a fresh mmap and unmaps it on free, so each training step
    page-faults its activations in again (a quarter of a 2-core pretraining step's time went to the kernel). With
    both thresholds at 1 GiB the heap keeps them: +10% tokens/s in fp32 and +29% in bf16 on the ``mini`` shape. The
    price is that the process's memory stays at its peak, which a training run reaches anyway. Process-wide, so
    only the training loop calls it (on CPU; not at import); ``BERTRT_KEEP_FREED_MEMORY=0`` turns it off. Returns
    whether it took effect (False off glibc).
    """
    if os.environ.get("BERTRT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # newer glibc caps the mmap threshold at 32 MiB on 64-bit and refuses more: take the cap then
        mapped = libc.mallopt(_M_MMAP_THRESHOLD, limit) or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        return bool(mapped) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


@dataclass
class TrainConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.0  # < 1: a fraction of the run; >= 1: a number of optimizer steps
    max_steps: int | None = None  # optimizer steps; the run stops at whichever of max_steps/epochs/budget comes first
    epochs: float | None = None
    budget_s: float | None = None  # wall-clock seconds of training (evaluation and saving included)
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    clip: float | None = 1.0  # max global gradient norm; None disables clipping
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    seed: int = 0
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10  # steps between TensorBoard / metrics.jsonl (/ W&B) records
    wandb: str | None = None  # a W&B project: the same scalars to a W&B run too (bertrt.train.tracking)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise BertrtError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.max_steps is None and self.epochs is None and self.budget_s is None:
            raise BertrtError("give at least one of max_steps, epochs or a time budget, so the run knows when to stop")
        for name in ("max_steps", "epochs", "budget_s"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise BertrtError(f"{name} must be > 0, got {v}")
        if self.grad_accum < 1:
            raise BertrtError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.lr <= 0 or self.warmup < 0:
            raise BertrtError(f"lr must be > 0 and warmup >= 0 (got lr={self.lr}, warmup={self.warmup})")
        self.betas = tuple(self.betas)
        if self.wandb:
            from .tracking import check_wandb

            check_wandb()


@dataclass
class TrainResult:
    step: int
    epoch: int
    stopped_early: bool = False  # a callback's should_stop ended the run
    history: list[dict] = field(default_factory=list)  # one record per optimizer step run by this call
    evals: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    tokens: int = 0
    checkpoint: Path | None = None
    head_warmup: TrainResult | None = None  # continued pretraining's head-only phase before this run (pretrain.py)


class EpochBatches:
    """``epoch -> batches``: items shuffled by (seed, epoch), cut into ``batch_size`` slices, ``collate``-d lazily.

    With ``lengths`` (one per item), batches group items of similar length, so a batch pads little: after the
    shuffle, each run of ``GROUP_BATCHES * batch_size`` items is sorted by length and cut into batches, and the order
    of all the batches is shuffled again. Every item still appears once per epoch in a seeded order; a batch of short
    texts then costs a fraction of one padded to the longest text of the data.
    """

    GROUP_BATCHES = 50

    def __init__(self, items: Sequence, batch_size: int, collate: Callable[[list], object], shuffle: bool = True,
                 seed: int = 0, lengths: Sequence[int] | None = None):
        if lengths is not None and len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
        self.items, self.batch_size, self.collate, self.shuffle, self.seed = items, batch_size, collate, shuffle, seed
        self.lengths = lengths

    def __call__(self, epoch: int) -> Sequence:
        n, bs = len(self.items), self.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        if self.lengths is None:
            return _Batches(self, [order[i:i + bs] for i in range(0, n, bs)])
        span = self.GROUP_BATCHES * bs
        batches = []
        for i in range(0, n, span):
            group = sorted(order[i:i + span], key=lambda j: -self.lengths[j])  # stable: ties keep shuffled order
            batches += [group[k:k + bs] for k in range(0, len(group), bs)]
        if self.shuffle:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        return _Batches(self, batches)


class _Batches(Sequence):
    def __init__(self, parent: EpochBatches, batches: list[list[int]]):
        self.parent, self.batches = parent, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.parent.collate([self.parent.items[j] for j in self.batches[i]])


def lr_factor(step: int, progress: float, warmup: float, total_steps: int | None) -> float:
    """Linear warm-up then linear decay to 0; ``progress`` in [0, 1] is how far the run is (by steps or time)."""
    if warmup >= 1 or (total_steps and warmup > 0):
        w_steps = warmup if warmup >= 1 else warmup * total_steps
        if step < w_steps:
            return (step + 1) / w_steps
        w = min(w_steps / total_steps, 1.0) if total_steps else 0.0
    else:
        w = warmup
        if progress < w:
            return max(progress / w, 1e-3)
    return max(0.0, (1.0 - progress) / (1.0 - w)) if w < 1 else 0.0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings only: biases and LayerNorm weights (ndim < 2) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    kwargs = dict(lr=config.lr, betas=config.betas, eps=config.eps)
    try:  # the fused kernel is one pass over all parameters (CPU and CUDA); fall back to foreach where missing
        return torch.optim.AdamW(param_groups(model, config.weight_decay), fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(param_groups(model, config.weight_decay), foreach=device.type != "cpu" or None,
                                 **kwargs)


def count_tokens(batch) -> int:
    """Tokens in a batch for tokens/s: the attention mask's ones, else the size of ``input_ids``, else 0."""
    if isinstance(batch, dict):
        if torch.is_tensor(batch.get("attention_mask")):
            return int(batch["attention_mask"].sum())
        if torch.is_tensor(batch.get("input_ids")):
            return batch["input_ids"].numel()
    return 0


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


def _terms(out) -> dict:
    if isinstance(out, dict):
        return out
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return {"loss": tuple(out)}
    raise BertrtError("loss_fn must return (loss_sum, count) or {term: (loss_sum, count)}")


def _default_save(model, directory: Path, tokenizer) -> None:
    from ..checkpoint import write_checkpoint_files
    from ..model import Bert

    if isinstance(model, Bert):
        write_checkpoint_files(model, directory, tokenizer)


def check_run_folder(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to start over an existing run without ``force``, or to resume one that has no saved state."""
    ckpt_dir = Path(out_dir) / "checkpoint"
    if not resume and ckpt_dir.exists() and not force:
        raise OutputExistsError(f"{ckpt_dir} already exists; pass --resume to continue that run or --force to "
                                "start over")
    if resume and not (ckpt_dir / "train_state").is_dir():
        raise CheckpointError(f"nothing to resume: {ckpt_dir}/train_state does not exist; run without --resume")


def train(model: torch.nn.Module, train_data, loss_fn: Callable, config: TrainConfig, out_dir,
          eval_fn: Callable | None = None, resume: bool = False, count_fn: Callable | None = None,
          tokenizer=None, save_fn: Callable | None = None, force: bool = False,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train ``model`` on ``train_data`` with ``loss_fn``; see the module docstring for the contract."""
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    rank, world = D.rank(), D.world_size()
    is_main = rank == 0
    check_run_folder(out_dir, resume, force)
    device = next(model.parameters()).device
    save_fn = save_fn or (lambda m, d: _default_save(m, d, tokenizer))
    epoch_data = train_data if callable(train_data) else (lambda epoch: train_data)

    if device.type == "cpu":
        keep_freed_memory()
    model.train()
    optimizer = make_optimizer(model, config)
    step, epoch, position, elapsed, tokens_total = 0, 0, 0, 0.0, 0
    if resume:
        state = load_train_state(ckpt_dir / "train_state", model, optimizer)
        if state["world_size"] != world or state["grad_accum"] != config.grad_accum:
            raise CheckpointError(f"the checkpoint was trained with {state['world_size']} processes x grad_accum "
                                  f"{state['grad_accum']}; resume with the same (now {world} x {config.grad_accum})")
        step, epoch, position = state["step"], state["epoch"], state["position"]
        elapsed, tokens_total = state["elapsed_s"], state["tokens"]
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    batches = epoch_data(epoch)
    per_rank = len(batches) // world
    if per_rank == 0:
        raise BertrtError(f"the training data has {len(batches)} batches, fewer than the {world} processes")
    steps_per_epoch = math.ceil(per_rank / config.grad_accum)
    total_steps = config.max_steps
    if config.epochs is not None:
        by_epochs = math.ceil(config.epochs * steps_per_epoch)
        total_steps = min(total_steps, by_epochs) if total_steps else by_epochs

    def progress_at(s: int, t: float) -> float:
        p = s / total_steps if total_steps else 0.0
        if config.budget_s:
            p = max(p, t / config.budget_s)
        return min(p, 1.0)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    loop = Loop(model=model, optimizer=optimizer, config=config, out_dir=out_dir, is_main=is_main,
                total_steps=total_steps, step=step, epoch=epoch, elapsed_s=elapsed,
                resumed_from=step if resume else None)
    callbacks = [MetricsLogger(config.log_every, config.wandb), *([ProgressBar()] if config.progress else []),
                 *callbacks]
    result = TrainResult(step=step, epoch=epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    last_eval_step = -1

    def run_eval():
        nonlocal last_eval_step
        if eval_fn is None or last_eval_step == step:
            return
        last_eval_step = step
        if is_main:
            model.eval()
            with torch.no_grad(), autocast:
                metrics = {k: float(v) for k, v in eval_fn(model).items()}
            model.train()
            result.evals.append({"step": step, **metrics})
            for cb in callbacks:
                cb.on_eval(loop, metrics)
        D.barrier()

    def save():
        if is_main:
            info = {"step": step, "epoch": epoch, "position": position, "elapsed_s": elapsed,
                    "tokens": tokens_total, "world_size": world, "grad_accum": config.grad_accum,
                    "seed": config.seed, "config": asdict(config),
                    "rng": "torch RNG is reseeded from (seed, rank, step) at every step"}
            with atomic_dir(ckpt_dir, force=True) as tmp:
                save_fn(model, tmp)
                save_train_state(tmp / "train_state", model, optimizer, info)
        result.checkpoint = ckpt_dir
        D.barrier()

    def done(t: float) -> bool:
        return (total_steps is not None and step >= total_steps) or (config.budget_s is not None
                                                                     and t >= config.budget_s)

    def stop_asked() -> bool:  # every callback is asked (none short-circuits another); all ranks agree
        votes = [bool(cb.should_stop(loop)) for cb in callbacks]
        stop = float(any(votes))
        if world > 1:
            stop = float(D.all_reduce_sum(torch.tensor([stop], dtype=torch.float64, device=device))[0])
        return stop > 0

    t_start = time.perf_counter() - elapsed
    try:
        for cb in callbacks:
            cb.on_train_start(loop)
        while not done(elapsed):
            if position >= per_rank:  # next epoch
                epoch, position = epoch + 1, 0
                batches = epoch_data(epoch)
                per_rank = len(batches) // world
                if per_rank == 0:
                    raise BertrtError(f"epoch {epoch} has {len(batches)} batches, fewer than the {world} processes")
            t0 = time.perf_counter()
            torch.manual_seed((config.seed * 1_000_003 + step) * 4099 + rank)
            group = [batches[(position + i) * world + rank]
                     for i in range(min(config.grad_accum, per_rank - position))]
            position += len(group)
            step_tokens = sum(count_tokens(b) for b in group)
            scale = None
            if count_fn is not None:  # several terms: normalisers known up front, summed over the group and ranks
                names = None
                totals = None
                for b in group:
                    c = count_fn(b)
                    names = names or list(c)
                    v = torch.tensor([float(c[n]) for n in names], dtype=torch.float64)
                    totals = v if totals is None else totals + v
                totals = D.all_reduce_sum(totals.to(device)).cpu().tolist()
                scale = {n: world / max(t, 1.0) for n, t in zip(names, totals)}
            term_sums: dict[str, float] = {}
            term_counts: dict[str, float] = {}
            for i, b in enumerate(group):
                b = _to_device(b, device)
                sync = i == len(group) - 1
                ctx = ddp.no_sync() if (world > 1 and not sync) else _nullcontext()
                with ctx:
                    with autocast:
                        terms = _terms(loss_fn(ddp, b))
                    if scale is None and len(terms) > 1:
                        raise BertrtError("loss_fn returned several terms; pass count_fn so each can be normalised "
                                          "by its own count over the accumulated batch")
                    if scale is None:
                        total = sum(s for s, _ in terms.values())
                    else:
                        total = sum(terms[n][0].float() * scale[n] for n in terms)
                    total.backward()
                for n, (s, c) in terms.items():
                    term_sums[n] = term_sums.get(n, 0.0) + float(s.detach())
                    term_counts[n] = term_counts.get(n, 0.0) + float(c)
            names = list(term_sums)
            stats = torch.tensor([term_sums[n] for n in names] + [term_counts[n] for n in names] + [step_tokens],
                                 dtype=torch.float64, device=device)
            stats = D.all_reduce_sum(stats).cpu().tolist()
            k = len(names)
            sums, counts, step_tokens = stats[:k], stats[k:2 * k], int(stats[2 * k])
            if scale is None:  # one term: the gradient holds sum-of-losses (DDP-averaged); make it a mean
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, world / max(counts[0], 1.0))
            extra = {}
            for cb in callbacks:
                extra.update(cb.on_gradients(loop) or {})
            if config.clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip))
            else:
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            factor = lr_factor(step, progress_at(step, elapsed), config.warmup, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = config.lr * factor
            optimizer.step()
            step += 1
            loop.step, loop.epoch = step, epoch
            for cb in callbacks:
                cb.on_optimizer_step(loop)
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            elapsed = time.perf_counter() - t_start
            if config.budget_s is not None and world > 1:  # every rank stops at the same step
                elapsed = float(D.all_reduce_sum(torch.tensor([elapsed], dtype=torch.float64, device=device))[0]
                                ) / world
            tokens_total += step_tokens
            term_means = {n: s / max(c, 1.0) for n, s, c in zip(names, sums, counts)}
            record = {"step": step, "loss": sum(term_means.values()), "lr": config.lr * factor,
                      "tokens_per_s": step_tokens / dt if dt > 0 else 0.0, "epoch": epoch}
            if len(term_means) > 1:
                record.update({f"loss_{n}": v for n, v in term_means.items()})
            record["grad_norm"] = grad_norm
            record.update(extra)
            loop.elapsed_s = elapsed
            result.history.append(record)
            for cb in callbacks:
                cb.on_step_end(loop, record)
            if config.eval_every and step % config.eval_every == 0:
                run_eval()
            if stop_asked():
                result.stopped_early = True
                break
            if config.save_every and step % config.save_every == 0 and not done(elapsed):
                save()
        run_eval()
        save()
    finally:
        for cb in callbacks:
            cb.on_train_end(loop)
    result.step, result.epoch, result.elapsed_s, result.tokens = step, epoch, elapsed, tokens_total
    return result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
