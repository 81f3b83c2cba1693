"""Distributed setup for ``torchrun``: one process per device, DDP over ``gloo`` (CPU) or ``nccl`` (CUDA).

``init_distributed()`` is a no-op in a plain single process, so the same command runs both ways.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment; return (rank, world size, device).

    ``device``: "auto" (CUDA when available, else CPU), "cpu" or "cuda". Under torchrun each rank takes the GPU of its
    ``LOCAL_RANK``; the backend is ``nccl`` on CUDA and ``gloo`` on CPU.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        from ..errors import BertrtError

        raise BertrtError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank(), world_size(), dev


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
