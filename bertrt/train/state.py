"""``train_state/``: what a resumed run needs besides the model files, in safetensors and JSON only.

Files: ``model.safetensors`` (the module's own state dict, exact names, so any model - PEFT-wrapped too - resumes
exactly), ``optimizer.safetensors`` (every tensor of ``optimizer.state_dict()["state"]``, keyed ``"<index>.<name>"``)
and ``state.json`` (step, epoch, data position, elapsed time, optimizer hyper-parameters, the loop config, and the
sha256 and size of every file). Nothing is pickled. Loading checks every file against ``state.json`` first, so a
truncated, corrupt or partial checkpoint is refused with a message, never half-loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..digest import sha256_file
from ..errors import CheckpointError

STATE_FORMAT = 1
STATE_JSON = "state.json"


def save_train_state(directory: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     info: dict) -> None:
    """Write ``model.safetensors``, ``optimizer.safetensors`` and ``state.json`` (with checksums) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    files = {}
    for name in ("model.safetensors", "optimizer.safetensors"):
        p = directory / name
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    state = {"format": STATE_FORMAT, **info, "optimizer": {"param_groups": sd["param_groups"], "scalars": scalars},
             "files": files}
    (directory / STATE_JSON).write_text(json.dumps(state, indent=2) + "\n")


def read_state_json(directory: str | os.PathLike) -> dict:
    """Read and verify ``state.json`` and every file it lists; raise ``CheckpointError`` on any mismatch."""
    directory = Path(directory)
    fix = f"delete {directory.parent} (or pick an older copy) and start again without --resume"
    path = directory / STATE_JSON
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {STATE_JSON}: the checkpoint is incomplete; {fix}")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); {fix}") from None
    if state.get("format") != STATE_FORMAT or not isinstance(state.get("files"), dict):
        raise CheckpointError(f"{path} has format {state.get('format')!r}; this bertrt reads format {STATE_FORMAT}")
    for name, meta in state["files"].items():
        p = directory / name
        if not p.is_file():
            raise CheckpointError(f"{p} is missing: the checkpoint is incomplete; {fix}")
        if p.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{p} has {p.stat().st_size} bytes, expected {meta['bytes']}: the file is "
                                  f"truncated or was replaced; {fix}")
        if sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"{p} fails its sha256 check: the file is corrupt; {fix}")
    return state


def load_train_state(directory: str | os.PathLike, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> dict:
    """Verify, then load weights and optimizer state in place; return ``state.json``'s content."""
    from safetensors.torch import load_file

    directory = Path(directory)
    state = read_state_json(directory)
    device = next(model.parameters()).device
    weights = load_file(str(directory / "model.safetensors"), device=str(device))
    own = model.state_dict()
    problems = sorted(set(own) ^ set(weights)) + [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if problems:
        raise CheckpointError(f"{directory}/model.safetensors does not fit this model ({len(problems)} differing "
                              f"weights, e.g. {problems[:3]}); resume with the same model settings")
    model.load_state_dict(weights)
    tensors = load_file(str(directory / "optimizer.safetensors"))
    groups = state["optimizer"]["param_groups"]
    n_params = sum(len(g["params"]) for g in optimizer.state_dict()["param_groups"])
    if sum(len(g["params"]) for g in groups) != n_params:
        raise CheckpointError(f"{directory}: the optimizer state covers a different set of parameters; resume with "
                              "the same model and trainable parameters")
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    return state
