"""Evaluate a deployment artifact (``bertrt.json`` + ``model.onnx``) on labelled task data, through ``Runtime``.

Torch-free: the artifact's own tokenizer, ONNX Runtime and postprocessing give the predictions, and the metrics are
the same functions a checkpoint's evaluation uses, so the two reports compare directly. What the runtime does
differently shows here too: texts are cut at the artifact's max length; NER sentences are joined with single
spaces and the runtime's character-offset entities are mapped back to word tags; QA contexts are not split into
windows (an answer beyond the max length is missed).
"""

from __future__ import annotations

from pathlib import Path

from ..data import tasks as T
from . import metrics as M


def evaluate_artifact(path, data, device: str = "auto", progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from ..runtime import Runtime

    rt = Runtime(path, device=device)
    task, labels = rt.task, rt.labels
    if task not in T.TASK_FORMATS:
        from ..errors import ArtifactError

        raise ArtifactError(f"{path} is a {task!r} artifact; evaluate needs a classify, ner or qa artifact")
    examples = T.read_task(data, task)
    T.check_labels(task, examples, labels, data)
    if task == "classify":
        inputs = [{"text": e.text, "text_pair": e.text_pair} if e.text_pair is not None else e.text for e in examples]
    elif task == "ner":
        inputs = [" ".join(e.tokens) for e in examples]
    else:
        inputs = [{"question": e.question, "context": e.context} for e in examples]
    results = []
    chunk = 256
    for s in tqdm(range(0, len(inputs), chunk), desc="predict", disable=not progress, leave=False):
        results += rt.predict(inputs[s:s + chunk])
    truncated = sum(bool(r.get("truncated")) for r in results)
    if task == "classify":
        index = {l: i for i, l in enumerate(labels)}
        report = M.classification_report([index[e.label] for e in examples], [index[r["label"]] for r in results],
                                         labels)
    elif task == "ner":
        report = M.ner_report([e.tags for e in examples], [word_tags(e.tokens, r["entities"]) for e, r in
                                                           zip(examples, results)])
    else:
        report = M.squad_report({e.id: r["answer"] for e, r in zip(examples, results)},
                                {e.id: [a[0] for a in e.answers] for e in examples})
    return {"model": str(path), "data": str(data), "max_length": rt.max_length, "artifact": True,
            "truncated_inputs": truncated, **report}


def word_tags(words: list[str], entities: list[dict]) -> list[str]:
    """BIO tags of ``words`` (joined by single spaces) from entities with character offsets into that text."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    tags = ["O"] * len(words)
    for e in entities:
        inside = [i for i, (s, t) in enumerate(spans) if s < e["end"] and t > e["start"]]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + e["type"]
    return tags


def is_artifact(path) -> bool:
    from ..artifact import MANIFEST

    return (Path(path) / MANIFEST).is_file()
