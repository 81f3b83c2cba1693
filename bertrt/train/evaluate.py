"""Evaluate a task model on labelled data: predictions, the task's report, and a text rendering of it.

``evaluate_dir(model_dir, data)`` loads a fine-tuned checkpoint (plain or PEFT) with its tokenizer; ``evaluate``
works on a model in memory (fine-tuning's eval step uses it). Reports are plain dicts (JSON-ready) from
``bertrt.train.metrics``; ``format_report`` renders one for people.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..data import tasks as T
from . import metrics as M
from .metrics_report import format_report  # noqa: F401  (re-exported: reports and their rendering)


@torch.no_grad()
def _forward(model, features: list[dict], batch_size: int, pad_id: int, progress: bool, desc: str):
    """Yield (features of the batch, model outputs on CPU) in order; inputs grouped by length to cut padding."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    model.eval()
    with tqdm(total=len(features), desc=desc, unit="ex", disable=not progress, leave=False) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = T.collate([features[i] for i in idx], pad_id)
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
            out = {k: v.float().cpu() for k, v in model(**inputs).items()}
            yield idx, out
            bar.update(len(idx))


def predict_classify(model, features, batch_size=64, pad_id=0, progress=False) -> list[int]:
    preds = [0] * len(features)
    for idx, out in _forward(model, features, batch_size, pad_id, progress, "predict"):
        for i, p in zip(idx, out["logits"].argmax(-1).tolist()):
            preds[i] = p
    return preds


def predict_ner(model, features, examples, labels, batch_size=64, pad_id=0, progress=False) -> list[list[str]]:
    """Word-level tags: each word takes the prediction at its first sub-token; truncated words get 'O'."""
    tags = [["O"] * len(e.tokens) for e in examples]
    for idx, out in _forward(model, features, batch_size, pad_id, progress, "predict"):
        best = out["logits"].argmax(-1).tolist()
        for row, i in enumerate(idx):
            previous = None
            for pos, w in enumerate(features[i]["word_ids"]):
                if w is not None and w != previous:
                    tags[i][w] = labels[best[row][pos]]
                previous = w
    return tags


def predict_qa(model, features, examples, batch_size=64, pad_id=0, n_best=20, max_answer_tokens=30,
               progress=False) -> dict[str, str]:
    """Best span per question over all its windows: max start+end logit, start <= end, both in the context."""
    best = {}  # example index -> (score, char start, char end)
    for idx, out in _forward(model, features, batch_size, pad_id, progress, "predict"):
        for row, i in enumerate(idx):
            f = features[i]
            offsets, n = f["offsets"], len(f["input_ids"])
            start, end = out["start_logits"][row, :n], out["end_logits"][row, :n]
            starts = start.topk(min(n_best, n)).indices.tolist()
            ends = end.topk(min(n_best, n)).indices.tolist()
            for s in starts:
                for e in ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                        continue
                    score = float(start[s] + end[e])
                    ex = f["example_index"]
                    if ex not in best or score > best[ex][0]:
                        best[ex] = (score, offsets[s][0], offsets[e][1])
    return {e.id: (e.context[best[i][1]:best[i][2]] if i in best else "") for i, e in enumerate(examples)}


def evaluate(model, tokenizer, examples: list, task: str, labels: list[str], max_length: int = 128,
             doc_stride: int | None = None, batch_size: int = 64, progress: bool = False,
             features: list | None = None) -> dict:
    """The task's report for ``model`` on labelled ``examples`` (features may be passed in, pre-encoded)."""
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    if task == "classify":
        features = features or T.encode_classify(examples, tokenizer, labels, max_length)
        preds = predict_classify(model, features, batch_size, pad_id, progress)
        index = {l: i for i, l in enumerate(labels)}
        return M.classification_report([index[e.label] for e in examples], preds, labels)
    if task == "ner":
        features = features or T.encode_ner(examples, tokenizer, labels, max_length)
        tags = predict_ner(model, features, examples, labels, batch_size, pad_id, progress)
        return M.ner_report([e.tags for e in examples], tags)
    features = features or T.encode_qa(examples, tokenizer, max_length, doc_stride)
    answers = predict_qa(model, features, examples, batch_size, pad_id, progress=progress)
    return M.squad_report(answers, {e.id: [a[0] for a in e.answers] for e in examples})


def load_task_model(path: str | os.PathLike, base: str | os.PathLike | None = None):
    """A fine-tuned checkpoint directory -> (model, tokenizer); PEFT directories are rebuilt on their base."""
    from ..checkpoint import load_checkpoint
    from ..errors import CheckpointError
    from ..tokenizer import load_tokenizer
    from .peft import is_peft_dir, load_peft

    path = Path(path)
    model = load_peft(path, base).model if is_peft_dir(path) else load_checkpoint(path)
    if model.config.task not in T.TASK_FORMATS:
        raise CheckpointError(f"{path} is a {model.config.task!r} model; evaluate needs a fine-tuned classify, ner or "
                              "qa checkpoint (bertrt finetune makes one)")
    return model, load_tokenizer(path)


def evaluate_dir(model_dir, data, max_length: int | None = None, doc_stride: int | None = None, batch_size: int = 64,
                 base=None, progress: bool = True) -> dict:
    model, tok = load_task_model(model_dir, base)
    cfg = model.config
    examples = T.read_task(data, cfg.task)
    T.check_labels(cfg.task, examples, cfg.labels, data)
    max_length = min(max_length or _trained_length(model_dir) or 512, cfg.max_position_embeddings)
    report = evaluate(model, tok, examples, cfg.task, cfg.labels, max_length, doc_stride, batch_size, progress)
    return {"model": str(model_dir), "data": str(data), "max_length": max_length, **report}


def _trained_length(model_dir) -> int | None:
    info = Path(model_dir) / "finetune.json"
    if info.is_file():
        return json.loads(info.read_text()).get("config", {}).get("max_length")
    return None
