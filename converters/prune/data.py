"""Labelled examples for pruning importance: read with ``bertrt.data.tasks``, checked against the checkpoint, batched.

The data must be of the checkpoint's own task (classify: JSONL/CSV/TSV with text, optional text_pair, label;
ner: CoNLL or JSONL tokens/tags; qa: SQuAD v1.1), with labels the checkpoint knows.
"""

from __future__ import annotations

import random
from pathlib import Path

from bertrt.errors import BertrtError, PruneError

PRUNABLE_TASKS = ("classify", "ner", "qa")


def load_prune_data(path, cfg, tokenizer, max_length: int = 128, batch_size: int = 16,
                    max_examples: int | None = 2048, seed: int = 0) -> list[dict]:
    """Read ``path`` as data of ``cfg.task`` and return padded batches of tensors for ``prune``.

    At most ``max_examples`` examples are used (a seeded random subset): importance settles after a few thousand.
    Examples are grouped by length so batches carry little padding.
    """
    from bertrt.data.tasks import collate

    if batch_size < 1:
        raise PruneError(f"batch_size must be >= 1, got {batch_size}")
    features = read_features(path, cfg, tokenizer, max_length, max_examples, seed)
    features.sort(key=lambda f: len(f["input_ids"]))
    return [collate(features[i:i + batch_size], cfg.pad_token_id) for i in range(0, len(features), batch_size)]


def read_features(path, cfg, tokenizer, max_length: int = 128, max_examples: int | None = None,
                  seed: int = 0) -> list[dict]:
    """Read, check and encode ``path`` as data of ``cfg.task`` (a seeded random subset of ``max_examples``)."""
    from bertrt.data.tasks import TASK_FORMATS, encode_classify, encode_ner, encode_qa, read_task

    task = cfg.task
    if task not in PRUNABLE_TASKS:
        raise PruneError(f"the checkpoint is a {task!r} model, which has no task loss to rank heads and neurons by; "
                         f"prune a checkpoint fine-tuned for {', '.join(PRUNABLE_TASKS)} (bertrt finetune)")
    if max_length < 8:
        raise PruneError(f"max_length {max_length} is too short; use the length the model will serve at (e.g. 128)")
    try:
        examples = read_task(path, task, require_labels=True)
    except BertrtError as e:
        raise PruneError(f"{e} (the checkpoint is a {task!r} model, so --data must be {task} data: "
                         f"{TASK_FORMATS[task]})") from None
    if task in ("classify", "ner"):
        seen = {e.label for e in examples} if task == "classify" else {t for e in examples for t in e.tags}
        unknown = sorted(seen - set(cfg.labels))
        if unknown:
            raise PruneError(f"{Path(path)}: label(s) {', '.join(map(repr, unknown[:10]))} are not among the "
                             f"checkpoint's labels ({', '.join(cfg.labels)}); give data of the task this checkpoint "
                             "was fine-tuned on")
    if max_examples is not None and len(examples) > max_examples:
        examples = random.Random(seed).sample(examples, max_examples)
    if task == "classify":
        features = encode_classify(examples, tokenizer, cfg.labels, max_length)
    elif task == "ner":
        features = encode_ner(examples, tokenizer, cfg.labels, max_length)
    else:
        features = encode_qa(examples, tokenizer, max_length, doc_stride=min(128, max_length // 4))
    return features
