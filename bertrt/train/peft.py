"""Parameter-efficient fine-tuning of bertrt's ``Bert``: LoRA, AdaLoRA, bottleneck adapters, prefix tuning.

- **LoRA** and **AdaLoRA** come from the ``peft`` library: its tuners wrap the ``nn.Linear`` modules named in
  ``targets`` (``query``, ``key``, ``value``, ``output``, ``intermediate``) in place. AdaLoRA re-allocates its rank
  budget after every optimizer step (``Peft.after_step``) and adds its orthogonality penalty
  (``Peft.regularizer``). Both fold into plain weights (``Peft.merge``).
- **Adapters** (Houlsby et al. 2019) are native: a bottleneck ``H -> size -> H`` with a residual, applied to the
  output projection of every attention block and every FFN (before their residual + LayerNorm) through forward
  hooks, so the base weights keep their names. The up-projection starts at zero: training starts from the base model.
  The LayerNorms are trained too, as in the paper.
- **Prefix tuning** (Li & Liang 2021; P-tuning v2's deep prompts) is native: every attention layer gets ``length``
  learned key and value vectors per head, concatenated in front of the sequence's own before SDPA; the mask is
  extended so every token attends to them. They start as the keys/values of random vocabulary embeddings.

Adapters and prefixes add computation that BERT's weights cannot hold, so they do not merge. The task head
(classifier, plus the pooler it reads, or the QA span head) is always trained and saved with the adapter.

Saved form: ``config.json`` (the task model's config), ``adapter.safetensors`` (every trainable tensor: adapter and
head), ``peft.json`` (method, options, the base checkpoint's path and sha256, parameter counts) and the tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..digest import sha256_file
from ..errors import PeftError
from ..model import Bert, SelfAttention, attention

METHODS = ("lora", "adalora", "adapter", "prefix")
TARGETS = ("query", "key", "value", "output", "intermediate")
PEFT_JSON, ADAPTER_WEIGHTS = "peft.json", "adapter.safetensors"
FORMAT = 1
ORTH_REG_WEIGHT = 0.1  # AdaLoRA paper's weight of the orthogonality penalty


@dataclass
class PeftConfig:
    method: str
    r: int = 8  # LoRA rank; AdaLoRA's average target rank
    alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.1  # LoRA dropout
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    init_r: int = 12  # AdaLoRA: starting rank per matrix, pruned towards r
    total_steps: int | None = None  # AdaLoRA: the schedule's length (the fine-tuning run's optimizer steps)
    adapter_size: int = 64  # bottleneck width
    prefix_length: int = 16  # prefix vectors per layer

    def __post_init__(self):
        if self.method not in METHODS:
            raise PeftError(f"unknown PEFT method {self.method!r}; choose one of {', '.join(METHODS)}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise PeftError(f"LoRA targets {bad or self.targets} are not Bert linear layers; choose from "
                            f"{', '.join(TARGETS)}")
        for name in ("r", "init_r", "adapter_size", "prefix_length"):
            if getattr(self, name) < 1:
                raise PeftError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.method == "adalora" and self.init_r < self.r:
            raise PeftError(f"AdaLoRA starts at init_r={self.init_r} and prunes to r={self.r}: init_r must be >= r")

    def to_dict(self) -> dict:
        return asdict(self)


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, size: int):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):  # (B, T, H) -> (B, T, H)
        return h + self.up(F.gelu(self.down(h)))


def _adapter_hook(module, inputs, output):
    return module.bottleneck(output)


class PrefixSelfAttention(SelfAttention):
    """SelfAttention with learned prefix keys/values (``prefix_key``/``prefix_value``: (nh, P, hs))."""

    def forward(self, x, mask):  # x: (B, T, H); mask: (B, 1, 1, T) additive
        B, T, _ = x.shape
        nh, hs = self.num_heads, self.head_size
        P = self.prefix_key.shape[1]
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = torch.cat([self.prefix_key.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # (B, nh, P+T, hs)
        v = torch.cat([self.prefix_value.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)  # (B, nh, P+T, hs)
        mask = F.pad(mask, (P, 0))  # (B, 1, 1, P+T): the prefix is always attended
        p = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, mask, p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, nh*hs)
        return self.norm(x + self.dropout(self.output(y)))


def head_prefixes(model: Bert) -> tuple[str, ...]:
    """Parameter-name prefixes of the task head, always trained: the pooler belongs to the classifier's head."""
    task = model.config.task
    heads = {"classify": ("classifier.", "bert.pooler."), "multilabel": ("classifier.", "bert.pooler."), "ner": ("classifier.",), "qa": ("qa_outputs.",)}
    if task not in heads:
        raise PeftError(f"PEFT fine-tunes a task model (classify, ner or qa), not task {task!r}")
    return heads[task]


class Peft:
    """A ``Bert`` with one PEFT method applied in place; ``model`` is what trains and predicts."""

    def __init__(self, model: Bert, config: PeftConfig):
        self.model, self.config, self.tuner = model, config, None
        heads = head_prefixes(model)
        fresh = tuple(getattr(model, "fresh_weights", []))
        for p in model.parameters():
            p.requires_grad_(False)
        getattr(self, f"_apply_{config.method}")()
        for name, p in model.named_parameters():
            if name.startswith(heads) or name in fresh:
                p.requires_grad_(True)

    # ------------------------------------------------------------------------------------------- the methods
    def _apply_lora(self, adaptive: bool = False):
        import peft

        c = self.config
        common = dict(target_modules=list(c.targets), lora_alpha=c.alpha, lora_dropout=c.dropout)
        if adaptive:  # AdaLoRA's rank budget starts at init_r per matrix and ends at target_r on average
            if not c.total_steps:
                raise PeftError("AdaLoRA needs the run's total optimizer steps (total_steps) for its rank schedule")
            tinit, tfinal = max(1, c.total_steps // 10), max(1, c.total_steps // 5)
            if tinit + tfinal >= c.total_steps:
                raise PeftError(f"AdaLoRA needs more than {tinit + tfinal} optimizer steps for its warm-up and final "
                                f"phases (this run has {c.total_steps}); train longer or use --peft lora")
            lib_cfg = peft.AdaLoraConfig(target_r=c.r, init_r=c.init_r, total_step=c.total_steps,
                                         tinit=tinit, tfinal=tfinal, deltaT=max(1, c.total_steps // 50), **common)
            self.tuner = peft.AdaLoraModel(self.model, lib_cfg, "default")
        else:
            self.tuner = peft.LoraModel(self.model, peft.LoraConfig(r=c.r, **common), "default")

    def _apply_adalora(self):
        self._apply_lora(adaptive=True)

    def _apply_adapter(self):
        H, size = self.model.config.hidden_size, self.config.adapter_size
        for layer in self.model.bert.layers:
            for block in (layer.attention, layer.ffn):
                block.output.add_module("bottleneck", Bottleneck(H, size))
                block.output.register_forward_hook(_adapter_hook)
                block.norm.requires_grad_(True)

    def _apply_prefix(self):
        emb = self.model.bert.embeddings
        g = torch.Generator().manual_seed(0)
        rows = torch.randint(0, emb.word_embeddings.num_embeddings, (self.config.prefix_length,), generator=g)
        with torch.no_grad():
            e = emb.norm(emb.word_embeddings.weight[rows] + emb.position_embeddings.weight[:1])  # (P, H)
        for attn in (layer.attention for layer in self.model.bert.layers):
            if attn.num_heads == 0:
                continue  # a fully pruned block has no attention to prefix
            nh, hs, P = attn.num_heads, attn.head_size, self.config.prefix_length
            with torch.no_grad():
                k, v = attn.key(e).view(P, nh, hs), attn.value(e).view(P, nh, hs)
            attn.__class__ = PrefixSelfAttention
            attn.prefix_key = nn.Parameter(k.transpose(0, 1).contiguous())  # (nh, P, hs)
            attn.prefix_value = nn.Parameter(v.transpose(0, 1).contiguous())  # (nh, P, hs)

    # ----------------------------------------------------------------------------------------- training hooks
    def after_step(self, step: int) -> None:
        """Call after every optimizer step, before gradients are cleared (AdaLoRA's budget; a no-op otherwise)."""
        if self.config.method == "adalora":
            self.tuner.update_and_allocate(step)

    def regularizer(self):
        """AdaLoRA's orthogonality penalty on P and Q (mean Frobenius distance of PP^T, Q^TQ to I); else None."""
        if self.config.method != "adalora":
            return None
        terms = []
        for n, p in self.model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                cov = p @ p.T if "lora_A" in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=p.device, dtype=p.dtype)))
        return ORTH_REG_WEIGHT * torch.stack(terms).mean() if terms else None

    # ---------------------------------------------------------------------------------------------- counting
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the model with the adapter applied."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # -------------------------------------------------------------------------------------------- save / load
    def write_files(self, directory: Path, base: str | os.PathLike, tokenizer=None) -> None:
        """Adapter + head weights, ``peft.json`` and the task config into an existing directory."""
        from safetensors.torch import save_file

        from ..checkpoint import hf_config
        from ..tokenizer import save_tokenizer

        directory = Path(directory)
        fp = save_tokenizer(tokenizer, directory, self.model.config.max_position_embeddings) if tokenizer else None
        save_file({k: v.contiguous().cpu() for k, v in self.trainable_state().items()},
                  str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        trainable, total = self.parameter_counts()
        base = Path(base).resolve()
        info = {"format": FORMAT, "method": self.config.method, "config": self.config.to_dict(),
                "base": {"path": str(base), "sha256": base_fingerprint(base)},
                "trainable_parameters": trainable, "total_parameters": total}
        (directory / PEFT_JSON).write_text(json.dumps(info, indent=2) + "\n")
        (directory / "config.json").write_text(json.dumps(hf_config(self.model.config, fp), indent=2) + "\n")

    def merge(self) -> Bert:
        """Fold LoRA / AdaLoRA into the base weights and return a plain ``Bert`` (this Peft is used up)."""
        if self.config.method not in ("lora", "adalora"):
            raise PeftError(f"{self.config.method} adds computation that plain BERT weights cannot hold, so it "
                            "cannot be merged; use --peft lora or adalora when you need a plain checkpoint")
        model = self.tuner.merge_and_unload()
        model.__dict__.pop("peft_config", None)  # the library leaves its config on the model
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def save_peft(peft: Peft, path: str | os.PathLike, base: str | os.PathLike, tokenizer=None,
              force: bool = False) -> Path:
    """Save atomically (adapter + head weights, peft.json, config, tokenizer); refuses to overwrite unless ``force``."""
    from ..atomic import atomic_dir

    with atomic_dir(path, force) as tmp:
        peft.write_files(tmp, base, tokenizer)
    return Path(path)


def apply_peft(model: Bert, config: PeftConfig) -> Peft:
    """Apply ``config.method`` to ``model`` in place: base frozen, adapter and task head trainable."""
    return Peft(model, config)


def base_fingerprint(base: Path) -> str:
    """sha256 of a checkpoint's weight files (so a reload can tell the base it was trained on from another)."""
    names = sorted(p.name for p in base.iterdir() if p.suffix == ".safetensors" or p.name == "pytorch_model.bin")
    if not names:
        raise PeftError(f"{base} has no weight files to fingerprint")
    return sha256_file(*(base / name for name in names))


def is_peft_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / PEFT_JSON).is_file()


def load_peft(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Peft:
    """Rebuild a saved PEFT model: load its base checkpoint, apply the method, load adapter and head weights.

    ``base`` overrides the recorded base path (e.g. after moving it); its weights must be the same (sha256).
    """
    from safetensors.torch import load_file

    from ..checkpoint import load_checkpoint, read_config

    path = Path(path)
    try:
        info = json.loads((path / PEFT_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PeftError(f"cannot read {path / PEFT_JSON}: {e}") from None
    if info.get("format") != FORMAT:
        raise PeftError(f"{path}: PEFT format {info.get('format')} is not readable by this version (reads {FORMAT})")
    base = Path(base or info["base"]["path"])
    if not base.is_dir():
        raise PeftError(f"the base checkpoint of {path} is not at {base}; pass its new location (--base)")
    if base_fingerprint(base) != info["base"]["sha256"]:
        raise PeftError(f"{base} is not the checkpoint {path} was trained on (its weights' sha256 differs); pass "
                        "the original base")
    cfg, _ = read_config(path)
    model = load_checkpoint(base, task=cfg.task, labels=cfg.labels or None, init_missing_head=True)
    peft = Peft(model, PeftConfig(**info["config"]))
    saved = load_file(str(path / ADAPTER_WEIGHTS))
    expected = peft.trainable_state()
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise PeftError(f"{path / ADAPTER_WEIGHTS} does not fit its peft.json: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, v in saved.items():
            if params[k].shape != v.shape:
                raise PeftError(f"{path}: {k} has shape {tuple(v.shape)}, the method builds {tuple(params[k].shape)}")
            params[k].copy_(v)
    model.eval()
    return peft
