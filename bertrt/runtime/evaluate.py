"""Evaluate a deployment artifact (``bertrt.json`` + ``model.onnx``) on labelled task data, through ``Runtime``.

Torch-free: the artifact's own tokenizer, ONNX Runtime and ``bertrt.tasks`` give the answers, and the metrics are
the ones a checkpoint's evaluation computes from the same kind of answers, so the two reports compare directly
(an fp32 artifact reports exactly what its checkpoint does). NER sentences are given to the runtime as their words
joined by single spaces, as a user would send the text.
"""

from __future__ import annotations

from pathlib import Path

from ..data import tasks as T
from ..tasks import metrics as M


def evaluate_artifact(path, data, device: str = "auto", progress: bool = True, long: str = "truncate",
                      backend: str = "auto") -> dict:
    from tqdm.auto import tqdm

    from .runtime import Runtime

    rt = Runtime(path, device=device, long=long, backend=backend)
    task, labels = rt.task, rt.labels
    if task not in T.TASK_FORMATS:
        from ..errors import ArtifactError

        raise ArtifactError(f"{path} is a {task!r} artifact; evaluate needs a classify, ner or qa artifact")
    examples = T.read_task(data, task)
    T.check_labels(task, examples, labels, data)
    pairs, gold = T.inputs_and_gold(task, examples)
    encs = rt.encoder.encode(pairs)
    results = []
    chunk = 256
    for s in tqdm(range(0, len(encs), chunk), desc="predict", disable=not progress, leave=False):
        results += rt.run_batch(encs[s:s + chunk])
    truncated = sum(bool(r.get("truncated")) for r in results)
    return {"model": str(path), "data": str(data), "max_length": rt.max_length, "artifact": True,
            "truncated_inputs": truncated, **M.report(task, results, gold, labels, encs)}


def is_artifact(path) -> bool:
    from ..artifact import MANIFEST

    return (Path(path) / MANIFEST).is_file()
