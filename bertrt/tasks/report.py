"""Render a metrics report (``bertrt.tasks.metrics``) for people: fractions, except SQuAD EM/F1 in percent."""

from __future__ import annotations


def format_report(r: dict) -> str:
    """A report for people: per-class / per-type table with averages, confusion matrix, or EM/F1."""
    head = [f"model {r['model']}  data {r['data']}"] if "model" in r else []
    if r["task"] == "qa":
        return "\n".join(head + [f"questions    {r['count']}", f"exact match  {100 * r['exact_match']:.2f}",
                                 f"F1           {100 * r['f1']:.2f}"])
    rows = r["per_class"] if r["task"] in ("classify", "multilabel", "relation") else r["per_type"]
    width = max([len(k) for k in rows] + [12])
    lines = head + [f"{'':<{width}}  precision  recall      f1  support"]
    for name, v in rows.items():
        lines.append(f"{name:<{width}}  {v['precision']:9.4f}  {v['recall']:6.4f}  {v['f1']:6.4f}  {v['support']:7d}")
    support = sum(v["support"] for v in rows.values())
    for avg in ("macro", "micro"):
        v = r[avg]
        lines.append(f"{avg + ' avg':<{width}}  {v['precision']:9.4f}  {v['recall']:6.4f}  {v['f1']:6.4f}  "
                     f"{support:7d}")
    if r["task"] == "ner":
        lines += [f"entity F1 {r['f1']:.4f} (exact span and type); token accuracy {r['token_accuracy']:.4f}; "
                  f"{r['count']} sentences"]
        return "\n".join(lines)
    if r["task"] == "multilabel":
        lines += [f"micro F1 {r['micro']['f1']:.4f}, macro F1 {r['macro']['f1']:.4f}; exact label sets "
                  f"{r['exact_match']:.4f}; {r['count']} examples"]
        return "\n".join(lines)
    if r["task"] == "relation":
        lines += [f"relation F1 {r['f1']:.4f} (micro, without {', '.join(r['excluded']) or 'no label'}); macro "
                  f"{r['macro']['f1']:.4f}; accuracy {r['accuracy']:.4f} ({r['count']} examples)"]
        return "\n".join(lines)
    lines += ["", f"accuracy {r['accuracy']:.4f} ({r['count']} examples)", "",
              "confusion matrix (rows: true, columns: predicted)"]
    names = r["labels"]
    w = max([len(n) for n in names] + [5])
    lines.append(" " * width + "  " + " ".join(f"{n[:w]:>{w}}" for n in names))
    for name, row in zip(names, r["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{c:>{w}d}" for c in row))
    return "\n".join(lines)
