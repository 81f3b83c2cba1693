"""Task metrics, pure Python (no torch): classification, entity-level NER, SQuAD v1.1 exact match and F1.

Every score is a fraction in [0, 1]; ``report.format_report`` prints percent where people expect it (SQuAD).
``report`` scores the answers ``predict`` returns, so a checkpoint, an export gate, bench and the runtime that
produce the same answers get the same numbers.
"""

from __future__ import annotations

import collections
import re
import string

from .decode import entity_spans, word_tags


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f}


def _averages(per_class: dict, tp: int, fp: int, fn: int) -> dict:
    n = len(per_class) or 1
    macro = {k: sum(c[k] for c in per_class.values()) / n for k in ("precision", "recall", "f1")}
    return {"macro": macro, "micro": _prf(tp, fp, fn)}


# ----------------------------------------------------------------------------------------------- classification
def classification_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and micro averages, confusion matrix (rows: true)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    L = len(labels)
    confusion = [[0] * L for _ in range(L)]
    for t, p in zip(y_true, y_pred):
        confusion[t][p] += 1
    per_class, TP, FP, FN = {}, 0, 0, 0
    for i, name in enumerate(labels):
        tp = confusion[i][i]
        fp = sum(confusion[j][i] for j in range(L)) - tp
        fn = sum(confusion[i]) - tp
        per_class[name] = {**_prf(tp, fp, fn), "support": sum(confusion[i])}
        TP, FP, FN = TP + tp, FP + fp, FN + fn
    correct = sum(t == p for t, p in zip(y_true, y_pred))
    return {"task": "classify", "accuracy": correct / len(y_true) if y_true else 0.0, "count": len(y_true),
            "labels": list(labels), "per_class": per_class, **_averages(per_class, TP, FP, FN),
            "confusion_matrix": confusion}


# ---------------------------------------------------------------------------------------------------- relation
NO_RELATION = "no_relation"


def relation_report(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    """The classification report with micro and macro averages (and ``f1``, the micro F1) over the relations
    proper: a ``no_relation`` label, when present, counts as the absence of a relation, as in TACRED scoring."""
    r = classification_report(y_true, y_pred, labels)
    kept = {k: v for k, v in r["per_class"].items() if k != NO_RELATION}
    L = len(labels)
    idx = [i for i, name in enumerate(labels) if name != NO_RELATION]
    tp = sum(r["confusion_matrix"][i][i] for i in idx)
    fp = sum(r["confusion_matrix"][j][i] for i in idx for j in range(L) if j != i)
    fn = sum(r["confusion_matrix"][i][j] for i in idx for j in range(L) if j != i)
    return {**r, "task": "relation", **_averages(kept, tp, fp, fn), "f1": _prf(tp, fp, fn)["f1"],
            "excluded": [NO_RELATION] if NO_RELATION in labels else []}


# ------------------------------------------------------------------------------------------------- multi-label
def multilabel_report(gold: list[list[str]], pred: list[list[str]], labels: list[str]) -> dict:
    """Per-label precision/recall/F1/support and their micro and macro averages; ``f1`` is the micro F1."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold label sets but {len(pred)} predictions")
    per_label, TP, FP, FN = {}, 0, 0, 0
    for name in labels:
        tp = sum(name in g and name in p for g, p in zip(gold, pred))
        fp = sum(name not in g and name in p for g, p in zip(gold, pred))
        fn = sum(name in g and name not in p for g, p in zip(gold, pred))
        per_label[name] = {**_prf(tp, fp, fn), "support": tp + fn}
        TP, FP, FN = TP + tp, FP + fp, FN + fn
    exact = sum(set(g) == set(p) for g, p in zip(gold, pred))
    return {"task": "multilabel", "count": len(gold), "labels": list(labels), "per_class": per_label,
            **_averages(per_label, TP, FP, FN), "f1": _prf(TP, FP, FN)["f1"],
            "exact_match": exact / len(gold) if gold else 0.0}


THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 ... 0.95


def tune_thresholds(scores: list[dict], gold: list[list[str]], labels: list[str]) -> list[float]:
    """Per label, the probability threshold in ``THRESHOLD_GRID`` of best F1 on held-out data (ties: the one
    nearest 0.5; 0.5 for a label the data never shows). ``scores``: each example's {label: probability}."""
    out = []
    for name in labels:
        truth = [name in g for g in gold]
        if not any(truth):
            out.append(0.5)
            continue
        best = max(THRESHOLD_GRID, key=lambda t: (_label_f1(truth, [s[name] >= t for s in scores]), -abs(t - 0.5)))
        out.append(best)
    return out


def _label_f1(truth: list[bool], pred: list[bool]) -> float:
    tp = sum(t and p for t, p in zip(truth, pred))
    return _prf(tp, sum(p and not t for t, p in zip(truth, pred)), sum(t and not p for t, p in zip(truth, pred)))["f1"]


# --------------------------------------------------------------------------------------------------------- NER
def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entity spans ``(type, first, last)`` (inclusive word indices) from BIO / IOB2 / BIES tags (``entity_spans``)."""
    return set(entity_spans(tags))


def ner_report(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1: a predicted entity counts only with exactly the gold span and type."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    counts = collections.defaultdict(lambda: [0, 0, 0])  # type -> tp, fp, fn
    for g, p in zip(gold, pred):
        if len(g) != len(p):
            raise ValueError(f"a sentence has {len(g)} gold tags but {len(p)} predicted")
        G, P = entities(g), entities(p)
        for e in G & P:
            counts[e[0]][0] += 1
        for e in P - G:
            counts[e[0]][1] += 1
        for e in G - P:
            counts[e[0]][2] += 1
    per_type = {}
    for t in sorted(counts):
        tp, fp, fn = counts[t]
        per_type[t] = {**_prf(tp, fp, fn), "support": tp + fn}
    TP, FP, FN = (sum(c[i] for c in counts.values()) for i in range(3))
    words = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return {"task": "ner", "count": len(gold), "per_type": per_type, **_averages(per_type, TP, FP, FN),
            "f1": _prf(TP, FP, FN)["f1"], "token_accuracy": correct / words if words else 0.0}


# -------------------------------------------------------------------------------------------------------- SQuAD
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, drop punctuation, drop articles a/an/the, squeeze whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_report(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict:
    """EM and F1 (fractions), each the max over a question's gold answers, averaged over questions."""
    missing = [q for q in answers if q not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    em = [max(exact_match(predictions[q], a) for a in golds) for q, golds in answers.items()]
    f1 = [max(token_f1(predictions[q], a) for a in golds) for q, golds in answers.items()]
    n = len(answers) or 1
    return {"task": "qa", "count": len(answers), "exact_match": sum(em) / n, "f1": sum(f1) / n}


def main_metric(report: dict) -> tuple[str, float]:
    """The number early stopping and best-checkpoint selection maximise, per task."""
    if report["task"] == "classify":
        return "accuracy", report["accuracy"]
    # relation: micro F1 without no_relation; multilabel: micro F1; ner: entity F1; qa: SQuAD F1
    return "f1", report["f1"]


def report(task: str, outputs: list[dict], gold: list, labels: list[str], encs: list | None = None) -> dict:
    """The task's report for answers ``outputs`` (as ``predict`` returns them) against ``gold``: classify label
    names (relation: relation names); multilabel the list of labels that apply; ner BIO tags of each input's words
    (``encs[i].spans``, the words ``predict`` decided); qa the list of acceptable answers per question."""
    if len(outputs) != len(gold):
        raise ValueError(f"{len(gold)} gold answers but {len(outputs)} predictions")
    if task == "classify":
        index = {name: i for i, name in enumerate(labels)}
        return classification_report([index[g] for g in gold], [index[o["label"]] for o in outputs], labels)
    if task == "multilabel":
        return multilabel_report(gold, [o["labels"] for o in outputs], labels)
    if task == "relation":
        index = {name: i for i, name in enumerate(labels)}
        return relation_report([index[g] for g in gold], [index[o["relation"]] for o in outputs], labels)
    if task == "ner":
        return ner_report(gold, [word_tags(e.spans, o["entities"]) for o, e in zip(outputs, encs)])
    ids = [str(i) for i in range(len(gold))]
    return squad_report({q: o["answer"] for q, o in zip(ids, outputs)}, dict(zip(ids, gold)))
