"""Correctness before speed: the reference's predictions, and the gate every variant must pass to be timed.

The reference is a checkpoint run by bertrt's PyTorch model in fp32. A variant's gate depends on what it is:

- fp32, unpruned: every decision must agree with the reference (agreement 100%);
- quantized or fp16: agreement at least ``min_agreement`` (the artifact's own parity setting, 99% by default);
- pruned: a smaller model, so no agreement floor; its accuracy must hold instead;

and for all: accuracy at most ``max_drop`` points below the reference's (the artifact's setting, 0.5 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass
class Workload:
    name: str
    texts: list[str]
    gold: list[str]


def read_workload(path: str | Path, limit: int | None = None) -> Workload:
    """Labelled single-text classify data (JSONL/CSV/TSV with text and label), named after the file."""
    from ..data.tasks import read_task

    examples = read_task(path, "classify")
    if examples[0].text_pair is not None:
        raise DataError(f"{path}: bench times single texts; sentence-pair data is not supported yet")
    examples = examples[:limit] if limit else examples
    return Workload(Path(path).stem, [e.text for e in examples], [e.label for e in examples])


def reference_predictions(checkpoint: str | Path, texts: list[str], max_length: int,
                          batch_size: int = 32) -> tuple[list[str], list[str]]:
    """(predicted label per text, the checkpoint's label names) from bertrt's PyTorch model in fp32, encoded,
    batched and decoded by ``bertrt.tasks`` as the runtime does it."""
    from ..checkpoint import load_checkpoint
    from ..tasks.encode import TextEncoder
    from ..tasks.predict import predict
    from ..tokenizer import load_tokenizer
    from ..train.evaluate import torch_forward

    model = load_checkpoint(checkpoint, task="classify")
    encoder = TextEncoder(load_tokenizer(checkpoint), "classify", max_length)
    labels = list(model.config.labels)
    answers = predict("classify", encoder.encode([(t, None) for t in texts]), torch_forward(model), labels,
                      encoder.pad_id, max_length, batch_size * max_length, batch_size)
    return [a["label"] for a in answers], labels


@dataclass
class Gate:
    min_agreement: float | None  # fraction in (0, 1]; None: no agreement floor (pruned models)
    max_drop: float  # accuracy points below the reference

    @classmethod
    def for_manifest(cls, manifest: dict, min_agreement: float | None = None,
                     max_drop: float | None = None) -> "Gate":
        stored = (manifest.get("parity") or {}).get("config") or {}
        drop = max_drop if max_drop is not None else float(stored.get("max_drop", 0.5))
        if manifest.get("pruning"):
            return cls(None, drop)
        if manifest.get("precision") == "fp32":
            return cls(1.0, drop)
        return cls(min_agreement if min_agreement is not None else float(stored.get("min_agreement", 0.99)), drop)


def accuracy(preds: list[str], gold: list[str]) -> float:
    """Accuracy in percent (bench rows are read by people), from ``bertrt.tasks.metrics``."""
    from ..tasks.metrics import classification_report

    labels = sorted(set(preds) | set(gold))
    index = {name: i for i, name in enumerate(labels)}
    return 100.0 * classification_report([index[g] for g in gold], [index[p] for p in preds], labels)["accuracy"]


def check(preds: list[str], reference: list[str], gold: list[str], gate: Gate | None) -> dict:
    """Agreement with the reference (%), accuracy (%), drop (points) and, with a gate, whether it passes and why."""
    agreement = 100.0 * sum(p == r for p, r in zip(preds, reference)) / len(reference)
    acc, ref_acc = accuracy(preds, gold), accuracy(reference, gold)
    result = {"agreement": round(agreement, 3), "accuracy": round(acc, 3), "drop": round(ref_acc - acc, 3),
              "reference_accuracy": round(ref_acc, 3), "examples": len(gold)}
    if gate is None:
        return result
    problems = []
    if gate.min_agreement is not None and agreement < 100.0 * gate.min_agreement - 1e-9:
        problems.append(f"agreement {agreement:.2f}% < {100 * gate.min_agreement:g}%")
    if ref_acc - acc > gate.max_drop + 1e-9:
        problems.append(f"accuracy {acc:.2f}% is {ref_acc - acc:.2f} pt below the reference's {ref_acc:.2f}% "
                        f"(gate {gate.max_drop:g} pt)")
    result["gate"] = {"min_agreement": gate.min_agreement, "max_drop": gate.max_drop, "passed": not problems,
                      "problems": problems}
    return result
