"""Correctness before speed: the reference's answers, and the gate every variant must pass to be timed.

The reference is a checkpoint run by bertrt's PyTorch model in fp32, encoded, batched and decoded by
``bertrt.tasks`` exactly as the artifact is. Every task is gated by its own metric (``bertrt.tasks.metrics``):
accuracy (classify), micro F1 (multilabel), entity F1 (ner), SQuAD F1 (qa); embeddings by cosine to the reference.
A variant's gate depends on what it is:

- fp32, unpruned: every decision must agree with the reference (agreement 100%; embed: every cosine >= 0.9999);
- quantized or fp16: the export's decision statistic (``bertrt.tasks.agreement``): flips beyond the precision's
  measured noise at most ``1 - min_agreement`` (the artifact's own parity setting, 1% by default) by a one-sided 95%
  bound; refused only when even the lower bound exceeds it (ner and qa answers keep no margins: every flip counts);
- pruned: a smaller model, so no agreement floor; its metric must hold instead;

and for all: the metric at most ``max_drop`` points below the reference's (the artifact's setting, 0.5 by default).
Scores and agreement are fractions; messages and bench.md show percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tasks.agreement import answer_scores, describe, flip_statistics, margin_and_move

METRICS = {"classify": "accuracy", "multilabel": "micro F1", "relation": "relation F1", "ner": "entity F1",
           "qa": "SQuAD F1", "embed": "cosine"}


@dataclass
class Workload:
    name: str
    task: str
    texts: list  # the inputs as users send them: strings, {"text", "text_pair"}, {"question", "context"}, ...
    gold: list | None  # what the task's metric scores against (None: embed)


def read_workload(path: str | Path, task: str = "classify", limit: int | None = None) -> Workload:
    """Labelled data of ``task`` (the formats fine-tuning reads; embed: classify data or one text per line),
    named after the file."""
    from ..data import tasks as T

    path = Path(path)
    if task == "embed" and path.suffix.lower() == ".txt":
        lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if not lines:
            raise DataError(f"{path} holds no text")
        return Workload(path.stem, task, lines[:limit] if limit else lines, None)
    examples = T.read_task(path, "classify" if task == "embed" else task, require_labels=task != "embed")
    examples = examples[:limit] if limit else examples
    pairs, gold = T.inputs_and_gold("classify" if task == "embed" else task, examples)
    if task == "qa":
        items = [{"question": q, "context": c} for q, c in pairs]
    elif task == "relation":
        items = [{"text": t, "head": list(spans[0]), "tail": list(spans[1])} for t, spans in pairs]
    else:
        items = [a if b is None else {"text": a, "text_pair": b} for a, b in pairs]
    return Workload(path.stem, task, items, None if task == "embed" else gold)


def reference_answers(checkpoint: str | Path, w: Workload, manifest: dict, batch_size: int = 32):
    """(answers, encoded inputs) of bertrt's PyTorch fp32 model on ``w``, encoded and decoded as the artifact of
    ``manifest`` encodes and decodes (its max length, window stride, pooling, thresholds; ``long`` as the bench
    runs the artifact). An ensemble's reference is its members' source checkpoints, combined as its graph combines
    them (``bertrt.tasks.decode.ensemble_outputs``)."""
    from ..runtime.encode import parse_input
    from ..runtime.runtime import encoder_for
    from ..tasks.decode import ensemble_outputs
    from ..tasks.predict import decode_options, predict
    from ..tokenizer import load_tokenizer
    from ..train.evaluate import torch_forward

    task, max_length = manifest["task"], int(manifest["max_length"])
    members = (manifest.get("ensemble") or {}).get("members")
    if members:
        models = [_reference_model(m["source"]["checkpoint"], {**manifest, **m}) for m in members]
        forwards = [torch_forward(m) for m in models]
        forward = lambda feeds: ensemble_outputs(task, [f(feeds) for f in forwards])  # noqa: E731
        labels = list(models[0].config.labels)
    else:
        model = _reference_model(checkpoint, manifest)
        forward, labels = torch_forward(model), list(model.config.labels)
    encoder = encoder_for(manifest, load_tokenizer(checkpoint), manifest.get("long") or "truncate")
    encs = encoder.encode([parse_input(x, task) for x in w.texts])
    answers = predict(task, encs, forward, labels, encoder.pad_id, max_length,
                      batch_size * max_length, batch_size, decode_options(manifest))
    return answers, encs, labels


def _reference_model(checkpoint, manifest: dict):
    """The PyTorch model an artifact of ``manifest`` was exported from: its task's model, the masked-LM read through
    the verbalizer for a prompt artifact, with an embed artifact's pooling."""
    from ..checkpoint import load_checkpoint, load_cloze

    prompt = manifest.get("prompt")
    model = load_cloze(checkpoint, prompt["verbalizer"]) if prompt else load_checkpoint(checkpoint,
                                                                                        task=manifest["task"])
    if manifest["task"] == "embed":  # the artifact's pooling, as export applied it
        model.config.pooling = manifest.get("pooling") or model.config.pooling
        model.config.normalize = bool(manifest.get("normalize"))
    return model


@dataclass
class Gate:
    min_agreement: float | None  # fraction in (0, 1]; None: no agreement floor (pruned models)
    max_drop: float  # metric points below the reference
    min_cosine: float = 0.9999  # embed: the cosine to the reference a vector must reach to count as agreeing
    options: dict | None = None  # the artifact's decoding settings (multilabel thresholds), for decision margins

    @classmethod
    def for_manifest(cls, manifest: dict, min_agreement: float | None = None,
                     max_drop: float | None = None) -> "Gate":
        stored = (manifest.get("parity") or {}).get("config") or {}
        drop = max_drop if max_drop is not None else float(stored.get("max_drop", 0.5))
        exact = manifest.get("precision") == "fp32" and not manifest.get("pruning")
        cosine = float(stored.get("min_cosine_fp32" if exact else "min_cosine_quantized", 0.9999 if exact else 0.99))
        options = {"thresholds": manifest.get("thresholds")}
        if manifest.get("pruning"):
            return cls(None, drop, cosine, options)
        if manifest.get("precision") == "fp32":
            return cls(1.0, drop, cosine, options)
        return cls(min_agreement if min_agreement is not None else float(stored.get("min_agreement", 0.99)), drop,
                   cosine, options)


def score(w: Workload, answers: list[dict], encs=None, labels: list[str] | None = None) -> float:
    """The workload's task metric of ``answers`` (a fraction)."""
    from ..tasks import metrics as M

    if w.task in ("classify", "multilabel", "relation"):
        key = {"classify": "label", "multilabel": "labels", "relation": "relation"}[w.task]
        labels = sorted({x for g in w.gold for x in ([g] if w.task != "multilabel" else g)} |
                        {x for a in answers for x in ([a[key]] if w.task != "multilabel" else a[key])})
    return M.main_metric(M.report(w.task, answers, w.gold, labels or [], encs))[1]


def _cosines(answers: list[dict], reference: list[dict]) -> np.ndarray:
    a = np.array([x["embedding"] for x in answers], dtype=np.float64)
    r = np.array([x["embedding"] for x in reference], dtype=np.float64)
    return np.sum(a * r, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1) + 1e-12)


def _flip_statistics(answers: list[dict], reference: list[dict], task: str, agree: list[bool], gate: Gate) -> dict:
    """The export's decision statistic on the bench's answers: margins from the scores the answers keep."""
    ref_scores = [answer_scores(task, r, gate.options) for r in reference]
    margins = moves = None
    if all(s is not None for s in ref_scores):
        pairs = [margin_and_move(x, y) for rs, a in zip(ref_scores, answers)
                 for x, y in zip(rs, answer_scores(task, a, gate.options))]
        margins, moves = [m for m, _ in pairs], [d for _, d in pairs]
    return flip_statistics([not x for x in agree], margins, moves, allowed=1.0 - gate.min_agreement)


def check(answers: list[dict], reference: list[dict], w: Workload, gate: Gate | None, encs=None) -> dict:
    """Agreement with the reference, the task metric of both and the drop (points); with a gate, whether it passes
    and why. ``encs``: the encoded inputs (ner reads its words from them)."""
    from ..tasks.decode import decisions

    if w.task == "embed":
        cos = _cosines(answers, reference)
        floor = gate.min_cosine if gate is not None else 0.9999
        agreement, value, ref_value, drop = float(np.mean(cos >= floor)), float(cos.mean()), 1.0, None
    else:
        units = [(x == y) for i, (a, r) in enumerate(zip(answers, reference))
                 for x, y in zip(decisions(w.task, a, encs[i] if encs else None),
                                 decisions(w.task, r, encs[i] if encs else None))]
        agreement = sum(units) / max(len(units), 1)
        value, ref_value = score(w, answers, encs), score(w, reference, encs)
        drop = round(100 * (ref_value - value), 3)
    result = {"metric": METRICS[w.task], "score": round(value, 6), "reference_score": round(ref_value, 6),
              "agreement": round(agreement, 6), "drop": drop, "examples": len(w.texts)}
    if gate is None:
        return result
    problems, stats = [], None
    if w.task != "embed" and gate.min_agreement is not None and gate.min_agreement < 1.0:
        stats = _flip_statistics(answers, reference, w.task, units, gate)
        if stats["verdict"] == "fail":
            problems.append(f"decisions: {describe(stats)}")
    elif gate.min_agreement is not None and agreement < gate.min_agreement - 1e-9:
        what = f"texts within cosine {gate.min_cosine:g} of the reference" if w.task == "embed" else "agreement"
        problems.append(f"{what} {100 * agreement:.2f}% < {100 * gate.min_agreement:g}%")
    if drop is not None and drop > gate.max_drop + 1e-9:
        problems.append(f"{METRICS[w.task]} {100 * value:.2f}% is {drop:.2f} pt below the reference's "
                        f"{100 * ref_value:.2f}% (gate {gate.max_drop:g} pt)")
    if w.task == "embed" and gate.min_agreement is None and value < gate.min_cosine:
        problems.append(f"mean cosine {value:.4f} < {gate.min_cosine:g}")
    result["gate"] = {"min_agreement": gate.min_agreement, "max_drop": gate.max_drop, "passed": not problems,
                      "problems": problems, **({"decision": stats} if stats else {})}
    return result
