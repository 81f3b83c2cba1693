"""PyTorch -> ONNX, emitting the subgraphs ONNX Runtime's BERT optimizer fuses.

The model itself is exported (its attention, mask and heads), with one change made for export only: position ids
are a slice of a constant ``[1, max_positions]`` table cut to the input's length, as Hugging Face's BertEmbeddings
does, instead of ``torch.arange``. That is the pattern ``EmbedLayerNormalization`` fusion matches (a ``Range`` is
not matched), and the values are identical. The TorchScript exporter is used because the dynamo exporter's graph
of the same model fuses neither attention nor embeddings (ARCHITECTURE.md, measured); fused-node-count tests guard
the day that changes.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn as nn

from bertrt.artifact import INPUT_NAMES, TASK_OUTPUTS
from bertrt.errors import ExportError
from bertrt.model import Bert

from .config import ExportConfig


class SlicedPositionEmbeddings(nn.Module):
    """BERT embeddings sharing the model's weights; positions come from a constant table sliced to length T."""

    def __init__(self, emb: nn.Module, max_positions: int):
        super().__init__()
        self.word_embeddings = emb.word_embeddings
        self.position_embeddings = emb.position_embeddings
        self.token_type_embeddings = emb.token_type_embeddings
        self.norm = emb.norm
        self.dropout = emb.dropout
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)  # (1, P)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        positions = self.position_ids[:, :T]  # (1, T): Slice of a constant, which EmbedLayerNormalization matches
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)  # (B, T, H)
        return self.dropout(self.norm(x))


class ExportModule(nn.Module):
    """Positional inputs (input_ids, attention_mask, token_type_ids) -> the task's outputs as a tuple, in order."""

    def __init__(self, model: Bert):
        super().__init__()
        model = copy.deepcopy(model).eval()  # never mutate the caller's model
        emb = model.bert.embeddings
        model.bert.embeddings = SlicedPositionEmbeddings(emb, emb.position_embeddings.num_embeddings)
        self.model = model
        self.outputs = TASK_OUTPUTS[model.config.task]

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids, attention_mask, token_type_ids)
        return tuple(out[name] for name in self.outputs)


def resolve_task(checkpoint_task: str, requested: str | None) -> str:
    """The artifact task for a checkpoint of ``checkpoint_task``: classify/ner/qa export as they are; the bare
    encoder (and any encoder, when asked) exports ``embed``; a head the checkpoint lacks is an error naming the fix."""
    if requested is None:
        if checkpoint_task in TASK_OUTPUTS:
            return checkpoint_task
        if checkpoint_task == "base":
            return "embed"
        raise ExportError(f"a {checkpoint_task!r} checkpoint has no deployable head; fine-tune it for classify, ner "
                          "or qa first, or export its encoder with --task embed")
    if requested not in TASK_OUTPUTS:
        raise ExportError(f"unknown task {requested!r}; choose one of {', '.join(TASK_OUTPUTS)}")
    if requested != "embed" and requested != checkpoint_task:
        usable = checkpoint_task if checkpoint_task in TASK_OUTPUTS else "embed"
        raise ExportError(f"the checkpoint has no {requested} head (it is a {checkpoint_task!r} model); fine-tune it "
                          f"for {requested} first, or export it with --task {usable}")
    return requested


def prepare_model(model: Bert, cfg: ExportConfig) -> Bert:
    """A copy of ``model`` in eval mode with the embed pooling / normalisation options of ``cfg`` applied."""
    model = copy.deepcopy(model).eval()
    if model.config.task == "embed":
        if cfg.pooling is not None:
            model.config.pooling = cfg.pooling
        if cfg.normalize is not None:
            model.config.normalize = cfg.normalize
    return model


def dynamic_axes(task: str) -> dict:
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    per_token = task in ("ner", "qa")
    for name in TASK_OUTPUTS[task]:
        axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    return axes


def export_onnx(model: Bert, path: str | os.PathLike, cfg: ExportConfig) -> dict:
    """Export ``model`` (already prepared, in its artifact task) to ``path``; return what the manifest records."""
    task = model.config.task
    module = ExportModule(model)
    T = min(16, model.config.max_position_embeddings)
    ids = torch.full((2, T), 5, dtype=torch.long).clamp(max=model.config.vocab_size - 1)
    mask = torch.ones_like(ids)
    mask[1, T // 2:] = 0  # a padded row, so no shape gets specialised to "all ones"
    types = torch.zeros_like(ids)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(module, (ids, mask, types), str(path), dynamo=False, opset_version=cfg.opset,
                              input_names=INPUT_NAMES, output_names=TASK_OUTPUTS[task],
                              dynamic_axes=dynamic_axes(task), do_constant_folding=True)
        except Exception as e:  # the exporter raises many types; the message is what helps
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from None
    return {"exporter": "torchscript", "opset": cfg.opset, "inputs": list(INPUT_NAMES),
            "outputs": list(TASK_OUTPUTS[task]), "torch": torch.__version__}
