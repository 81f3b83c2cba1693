"""Evaluate a task model on labelled data: predictions, the task's report, and a text rendering of it.

``evaluate_dir(model_dir, data)`` loads a fine-tuned checkpoint (plain or PEFT) with its tokenizer; ``evaluate``
works on a model in memory (fine-tuning's eval step uses it). Inputs are encoded, windowed and decoded by
``bertrt.tasks`` exactly as the runtime does it, so a checkpoint and its fp32 artifact report the same numbers.
Reports are plain dicts (JSON-ready) from ``bertrt.tasks.metrics``; ``bertrt.tasks.report`` renders them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..data import tasks as T
from ..tasks import metrics as M
from ..errors import DataError, InputError
from ..tasks.encode import TextEncoder
from ..checkpoint import finetune_record
from ..tasks.predict import decode_options, predict


def torch_forward(model):
    """``feeds -> outputs`` (numpy in, numpy fp32 out) for ``bertrt.tasks.predict``: a PyTorch model in eval mode
    on its own device, under no_grad."""
    device = next(model.parameters()).device
    model.eval()

    @torch.no_grad()
    def forward(feeds: dict) -> dict:
        inputs = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        return {k: v.float().cpu().numpy() for k, v in model(**inputs).items()}

    return forward


def predict_examples(model, tokenizer, examples: list, task: str, labels: list[str], max_length: int = 128,
                     doc_stride: int | None = None, batch_size: int = 64, progress: bool = False, long: str = "truncate",
                     options: dict | None = None, prompt: str | None = None):
    """(answers as the runtime returns them, encoded inputs, gold) for ``examples``: encoded, windowed, batched
    and decoded by ``bertrt.tasks``, exactly as an artifact of this model would be, only the forward in PyTorch.
    ``prompt``: the cloze pattern a prompt model (``bertrt.model.Cloze``) reads its texts through."""
    from tqdm.auto import tqdm

    pairs, gold = T.inputs_and_gold(task, examples)
    try:
        encs = TextEncoder(tokenizer, task, max_length, doc_stride, long, prompt).encode(pairs)
    except InputError as e:
        raise DataError(str(e)) from None
    forward = torch_forward(model)
    answers = []
    step = 256  # inputs per call: bounds memory, drives the progress bar
    for s in tqdm(range(0, len(encs), step), desc="predict", unit="chunk", disable=not progress, leave=False):
        answers += predict(task, encs[s:s + step], forward, labels, _pad_id(tokenizer, model), max_length,
                           batch_size * max_length, batch_size, options)
    return answers, encs, gold


def _pad_id(tokenizer, model) -> int:
    pad = tokenizer.token_to_id("[PAD]")
    return model.config.pad_token_id if pad is None else pad


def evaluate(model, tokenizer, examples: list, task: str, labels: list[str], max_length: int = 128,
             doc_stride: int | None = None, batch_size: int = 64, progress: bool = False,
             long: str = "truncate", options: dict | None = None, prompt: str | None = None) -> dict:
    """The task's report for ``model`` on labelled ``examples`` (``bertrt.tasks.metrics.report``); ``options``:
    decoding settings (``bertrt.tasks.predict.decode_options``, e.g. multilabel thresholds)."""
    answers, encs, gold = predict_examples(model, tokenizer, examples, task, labels, max_length, doc_stride,
                                           batch_size, progress, long, options, prompt)
    return M.report(task, answers, gold, labels, encs)


def load_task_model(path: str | os.PathLike, base: str | os.PathLike | None = None):
    """A fine-tuned checkpoint directory -> (model, tokenizer); PEFT directories are rebuilt on their base."""
    from ..checkpoint import load_checkpoint, load_cloze
    from ..errors import CheckpointError
    from ..tokenizer import load_tokenizer
    from .peft import is_peft_dir, load_peft

    path = Path(path)
    prompt = finetune_record(path).get("prompt")
    if prompt is not None:  # a few-shot prompt model: its MLM read through the verbalizer it was trained with
        return load_cloze(path, prompt["verbalizer"]), load_tokenizer(path)
    model = load_peft(path, base).model if is_peft_dir(path) else load_checkpoint(path)
    if model.config.task not in T.TASK_FORMATS:
        raise CheckpointError(f"{path} is a {model.config.task!r} model; evaluate needs a fine-tuned classify, ner or "
                              "qa checkpoint (bertrt finetune makes one)")
    return model, load_tokenizer(path)


def evaluate_dir(model_dir, data, max_length: int | None = None, doc_stride: int | None = None, batch_size: int = 64,
                 base=None, progress: bool = True, long: str = "truncate") -> dict:
    model, tok = load_task_model(model_dir, base)
    cfg = model.config
    examples = T.read_task(data, cfg.task)
    T.check_labels(cfg.task, examples, cfg.labels, data)
    trained = finetune_record(model_dir)
    max_length = min(max_length or trained.get("max_length") or 512, cfg.max_position_embeddings)
    doc_stride = doc_stride if doc_stride is not None else trained.get("doc_stride")
    report = evaluate(model, tok, examples, cfg.task, cfg.labels, max_length, doc_stride, batch_size, progress, long,
                      decode_options(trained), (trained.get("prompt") or {}).get("pattern"))
    return {"model": str(model_dir), "data": str(data), "max_length": max_length, **report}
