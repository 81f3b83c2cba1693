"""The parity gates: tensor parity, decision parity, task parity, on real text with right padding.

Reference outputs come from the PyTorch fp32 model on the same padded batches. Per-token outputs are compared on
real tokens only (padding positions are undefined). Tolerance belongs to the precision: fp32 is compared
elementwise (max abs error), INT8, bf16 and fp16 by signal-to-noise ratio, embeddings also by cosine.
"""

from __future__ import annotations

import os

import numpy as np

from bertrt.artifact import TASK_OUTPUTS
from bertrt.errors import ExportError
from bertrt.tasks import metrics as M
from bertrt.tasks.agreement import decision_scores, describe, flip_statistics, margin_and_move
from bertrt.tasks.decode import decisions, decode, ner_tags
from bertrt.tasks.predict import decode_batches, outputs_by_input

from .config import ParityConfig
from .evaldata import Batch

METRIC_NAMES = {"classify": "accuracy", "multilabel": "micro F1", "relation": "relation F1", "ner": "entity F1",
                "qa": "SQuAD F1"}


def torch_outputs(model, batches: list[Batch], progress=None) -> list[dict[str, np.ndarray]]:
    """The PyTorch fp32 model's outputs on every batch (the reference)."""
    import torch

    outs = []
    with torch.no_grad():
        for b in _progress(batches, progress, "PyTorch reference"):
            f = {k: torch.from_numpy(v) for k, v in b.feeds.items()}
            res = model(f["input_ids"], f["attention_mask"], f["token_type_ids"])
            outs.append({k: res[k].float().numpy() for k in TASK_OUTPUTS[model.config.task]})
    return outs


def make_session(path: str | os.PathLike, device: str = "cpu"):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError("parity on cuda asked, but this onnxruntime has no CUDAExecutionProvider (install "
                              "onnxruntime-gpu), or run the gates on cpu")
        providers = ["CUDAExecutionProvider"]
    from bertrt.runtime.session import CPU_DISABLED_OPTIMIZERS

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # the graph the runtime will run: on CPU, with the same session optimizers turned off
    disabled = list(CPU_DISABLED_OPTIMIZERS) if device == "cpu" else []
    sess = ort.InferenceSession(str(path), opts, providers=providers, disabled_optimizers=disabled)
    if sess.get_providers()[0] != providers[0]:
        raise ExportError(f"onnxruntime did not activate {providers[0]} (got {sess.get_providers()})")
    return sess


def onnx_outputs(path, batches: list[Batch], task: str, device: str = "cpu", progress=None) -> list[dict]:
    sess = make_session(path, device)
    names = TASK_OUTPUTS[task]
    outs = []
    for b in _progress(batches, progress, "ONNX variant"):
        res = sess.run(names, b.feeds)
        outs.append({n: np.asarray(r, dtype=np.float32) for n, r in zip(names, res)})
    return outs


def _progress(items, progress, desc):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, unit="batch")


# ------------------------------------------------------------------------------------------------ measurements
def _valid(task: str, name: str, batch: Batch, a: np.ndarray) -> np.ndarray:
    """The elements of output ``a`` that carry meaning: per-token outputs on real tokens only, flattened."""
    if task in ("ner", "qa"):
        m = batch.feeds["attention_mask"].astype(bool)
        return a[m]
    return a


def tensor_stats(task: str, ref: list[dict], out: list[dict], batches: list[Batch]) -> dict:
    stats = {}
    for name in TASK_OUTPUTS[task]:
        r = np.concatenate([_valid(task, name, b, o[name]).ravel() for b, o in zip(batches, ref)])
        v = np.concatenate([_valid(task, name, b, o[name]).ravel() for b, o in zip(batches, out)])
        err = np.abs(v - r)
        noise = float(np.sum((v - r) ** 2))
        snr = float("inf") if noise == 0 else 10 * np.log10(float(np.sum(r ** 2)) / noise)
        stats[name] = {"max_abs": float(err.max()), "max_rel": float(err.max() / max(np.abs(r).max(), 1e-12)),
                       "snr_db": round(snr, 2) if np.isfinite(snr) else 999.0}
    if task == "embed":
        r = np.concatenate([o["embedding"] for o in ref])
        v = np.concatenate([o["embedding"] for o in out])
        cos = np.sum(r * v, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(v, axis=1) + 1e-12)
        stats["embedding"]["cosine_min"] = float(cos.min())
        stats["embedding"]["cosine_mean"] = float(cos.mean())
    return stats


def _labels(data, outs: list[dict]) -> list[str]:
    """The model's label names, or names by index for a bare model (tests build batches without labels)."""
    width = outs[0]["logits"].shape[-1] if "logits" in outs[0] else 0
    return data.labels or [f"LABEL_{i}" for i in range(width)]


def answers(task: str, outs: list[dict], batches: list[Batch]) -> tuple[list[int], list[dict]]:
    """(input indices, answers) for the inputs whose every window is in ``batches``: decoded by ``bertrt.tasks``
    exactly as the runtime and checkpoint evaluation decode them."""
    data = batches[0].data
    got = decode_batches(task, data.encs, [(b.rows, b.feeds) for b in batches], outs, _labels(data, outs),
                         data.options)
    kept = [i for i, a in enumerate(got) if a is not None]
    return kept, [got[i] for i in kept]


def decision_units(task: str, ref: list[dict], out: list[dict], batches: list[Batch],
                   tie: float = 1e-4) -> tuple[list[bool], list[float] | None, list[float] | None]:
    """Per decision unit: (whether the variant decided otherwise, the reference's margin, the variant's movement of
    it); see ``bertrt.tasks.agreement``. Units: labels, whether each label applies, words' tags, answer spans.

    embed: each text's nearest neighbour among the others. The variant agrees when the neighbour it picks is, by the
    reference's own similarities, the best one or within ``tie`` of it: neighbours closer than the cosine error the
    precision is allowed (1 - its cosine floor) are a tie, not a different decision (margins None: settled here)."""
    if task == "embed":
        def sims(outs):
            e = np.concatenate([o["embedding"] for o in outs])
            e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
            sim = e @ e.T
            np.fill_diagonal(sim, -np.inf)
            return sim
        s_ref, s_out = sims(ref), sims(out)
        rows = np.arange(len(s_ref))
        picked = s_ref[rows, s_out.argmax(1)]
        return [bool(x) for x in picked < s_ref.max(1) - tie], None, None
    data = batches[0].data
    labels, parts = _labels(data, ref), [(b.rows, b.feeds) for b in batches]
    by_ref, by_out = outputs_by_input(task, data.encs, parts, ref), outputs_by_input(task, data.encs, parts, out)
    flips, margins, moves = [], [], []
    for i, (r, v) in enumerate(zip(by_ref, by_out)):
        if r is None:
            continue
        enc = data.encs[i]
        if task == "ner":  # each word's own tag (an entity's boundary words would count a changed tag twice)
            d_ref, d_out = ner_tags(r, enc, labels)[0], ner_tags(v, enc, labels)[0]
        else:
            d_ref = decisions(task, decode(task, r, enc, labels, data.options), enc)
            d_out = decisions(task, decode(task, v, enc, labels, data.options), enc)
        flips += [x != y for x, y in zip(d_ref, d_out)]
        for a, b in zip(decision_scores(task, r, enc, data.options), decision_scores(task, v, enc, data.options)):
            m, moved = margin_and_move(a, b)
            margins.append(m)
            moves.append(moved)
    return flips, margins, moves


def agreement(task: str, ref: list[dict], out: list[dict], batches: list[Batch], tie: float = 1e-4) -> float:
    """Fraction of decisions the variant shares with the reference (``decision_units``)."""
    flips = decision_units(task, ref, out, batches, tie)[0]
    return 1.0 - sum(flips) / max(len(flips), 1)


def task_metric(task: str, outs: list[dict], batches: list[Batch]) -> float | None:
    """The task's main metric (a fraction) against the gold answers, or None without them."""
    data = batches[0].data
    if task == "embed" or data.gold is None:
        return None
    kept, got = answers(task, outs, batches)
    report = M.report(task, got, [data.gold[i] for i in kept], _labels(data, outs), [data.encs[i] for i in kept])
    return M.main_metric(report)[1]


# ------------------------------------------------------------------------------------------------ the gates
def check(task: str, precision: str, ref: list[dict], out: list[dict], batches: list[Batch], cfg: ParityConfig,
          ref_metric: float | None = None) -> dict:
    """Measure ``out`` against ``ref`` and apply the gates of ``precision``; the report says what passed and why."""
    tensors = tensor_stats(task, ref, out, batches)
    exact = precision == "fp32"
    flips, margins, moves = decision_units(task, ref, out, batches,
                                           tie=1.0 - (cfg.min_cosine_fp32 if exact else cfg.min_cosine_quantized))
    agree = 1.0 - sum(flips) / max(len(flips), 1)
    gates = {}
    if exact:
        worst = max(s["max_abs"] for s in tensors.values())
        gates["tensor"] = {"passed": bool(worst <= cfg.fp32_atol), "value": worst, "rule": f"max abs <= {cfg.fp32_atol:g}"}
    else:
        # bf16 keeps 8 significant bits, as INT8 does: INT8's floor
        floor = cfg.fp16_min_snr_db if precision == "fp16" else cfg.int8_min_snr_db
        worst = min(s["snr_db"] for s in tensors.values())
        gates["tensor"] = {"passed": bool(worst >= floor), "value": worst, "rule": f"SNR >= {floor:g} dB"}
    if task == "embed":
        floor = cfg.min_cosine_fp32 if exact else cfg.min_cosine_quantized
        cmin = tensors["embedding"]["cosine_min"]
        gates["cosine"] = {"passed": bool(cmin >= floor), "value": cmin, "rule": f"min cosine >= {floor:g}"}
    if exact:  # fp32 is the same computation: every decision must agree
        gates["decision"] = {"passed": bool(agree >= 1.0), "value": agree, "rule": "agreement >= 100.00%"}
    else:  # only flips beyond the precision's noise count, judged by a bound the sample size allows
        stats = flip_statistics(flips, margins, moves, allowed=1.0 - cfg.min_agreement)
        gates["decision"] = {"passed": stats["verdict"] != "fail", "value": stats["upper"],
                             "rule": f"confident-flip rate <= {1 - cfg.min_agreement:.2%} (95% upper bound)",
                             "verdict": stats["verdict"], "detail": describe(stats), "statistics": stats}
    metric = task_metric(task, out, batches)
    if ref_metric is None:
        ref_metric = task_metric(task, ref, batches)
    if metric is None:
        gates["task"] = {"passed": True, "value": None,
                         "rule": "not measured: no labelled --eval data"}
    else:
        drop = 100 * (ref_metric - metric)  # points, as --max-drop is given
        gates["task"] = {"passed": bool(drop <= cfg.max_drop), "value": round(drop, 4), "reference": ref_metric,
                         "variant": metric, "metric": METRIC_NAMES[task],
                         "rule": f"{METRIC_NAMES[task]} drop <= {cfg.max_drop:g} points"}
    return {"precision": precision, "device": cfg.device, "examples": sum(len(b.feeds["input_ids"]) for b in batches),
            "tensors": tensors, "agreement": agree, "gates": gates, "decided_by": decided_by(gates, exact),
            "passed": bool(all(g["passed"] for g in gates.values()))}


def decided_by(gates: dict, exact: bool) -> str:
    """Which gate settled the verdict, as the export summary says it: the task metric on labelled data when there
    is one; else the decision statistic when it could decide; else the tensor gate, with the way to a real verdict."""
    if any(not g["passed"] for g in gates.values()):
        return "refused by " + ", ".join(k for k, g in gates.items() if not g["passed"])
    if gates["task"]["value"] is not None:
        return f"the task metric ({gates['task']['metric']}) on the labelled --eval data"
    if exact:
        return "tensor parity with PyTorch fp32 and full decision agreement"
    if gates["decision"].get("verdict") == "undecided":
        return ("the tensor gate (too few decisions to decide on flips; --eval with labelled data gates on the "
                "task metric)")
    return "the decision statistic and the tensor gate"


def format_gates(report: dict, failed_only: bool = False, rules: str | None = None, sep: str = ", ") -> str:
    """A gate report's gates as one line, each ``name value``; ``rules``: "needs" or "rule" adds each gate's rule in
    parentheses ("needs" for failures); ``failed_only``: the failed gates alone. Every gate printout uses this."""
    parts = []
    for name, g in report["gates"].items():
        if failed_only and g["passed"]:
            continue
        v = g["value"]
        shown = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        if g.get("verdict") == "undecided":
            shown += " undecided"
        rule = "" if rules is None else f" ({'needs ' if rules == 'needs' else ''}{g['rule']})"
        parts.append(f"{name} {shown}{rule}")
    return sep.join(parts)


def failures(report: dict) -> str:
    """The failed gates of a report as one readable clause, with the numbers."""
    return format_gates(report, failed_only=True, rules="needs", sep="; ")
